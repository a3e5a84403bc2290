"""Config loading: what operators see when a file is right, and when it is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config.loader import expand_env, load, load_text
from gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
gateway:
  id: test
sources:
  - id: fleet
    type: mqtt
    topics: ["sensors/{device}/{metric}"]
pipelines:
  - id: p1
    from: [fleet]
    steps:
      - filter: "value > 0"
    to: [up]
sinks:
  - id: up
    type: mqtt
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(text, "gw.yaml", env or {})
    return info.value.problems


@pytest.mark.parametrize("name", ["gateway.example.yaml", "demo.yaml"])
def test_shipped_configs_are_valid(name: str, tmp_path: Path) -> None:
    # The example reads its passwords from systemd credentials (LoadCredential=).
    for secret in ("secrets_fleet-password", "secrets_upstream-password"):
        (tmp_path / secret).write_text("pw\n")
    config = load(ROOT / "config" / name, env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert config.sources
    assert config.pipelines
    assert config.sinks


def test_minimal_config_loads_with_defaults() -> None:
    config = load_text(MINIMAL, "gw.yaml", {})
    assert config.gateway.id == "test"
    assert config.sinks[0].qos == 1
    assert config.pipelines[0].from_ == ["fleet"]


def test_misspelled_key_names_file_line_and_path() -> None:
    text = MINIMAL.replace("    topics:", "    topcs:")
    found = problems(text)
    assert "gw.yaml:6: sources[0].topcs: unknown key" in "\n".join(found)


def test_bad_expression_names_its_step() -> None:
    text = MINIMAL.replace("value > 0", "__import__('os').system('true')")
    (line,) = problems(text)
    assert line.startswith("gw.yaml:11: pipelines[0].steps[0].filter: ")


def test_unknown_step_lists_the_valid_ones() -> None:
    text = MINIMAL.replace('- filter: "value > 0"', "- windw: {size: 10s}")
    (line,) = problems(text)
    assert line.startswith("gw.yaml:11: pipelines[0].steps[0]: ")
    assert "'windw'" in line
    assert "window" in line


def test_every_problem_is_reported_at_once() -> None:
    text = MINIMAL.replace("    topics:", "    topcs:").replace("to: [up]", "to: [upp]")
    found = problems(text)
    assert len(found) >= 2


def test_unknown_sink_reference_points_at_the_item() -> None:
    text = MINIMAL.replace("to: [up]", "to: [upp]")
    (line,) = problems(text)
    assert line.startswith("gw.yaml:12: pipelines[0].to[0]: unknown sink 'upp'")


def test_yaml_syntax_error_has_a_line() -> None:
    (line,) = problems("sources:\n  - id: [unclosed\n")
    assert line.startswith("gw.yaml:")


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${HOST}", {"HOST": "broker"}, "broker"),
        ("${HOST:-localhost}", {}, "localhost"),
        ("${HOST:-localhost}", {"HOST": ""}, "localhost"),
        ("tcp://${HOST}:${PORT:-1883}", {"HOST": "h"}, "tcp://h:1883"),
        ("cost $$5", {}, "cost $5"),
    ],
)
def test_environment_interpolation(text: str, env: dict[str, str], expected: str) -> None:
    assert expand_env(text, env) == expected


def test_missing_environment_variable_is_a_config_error() -> None:
    text = MINIMAL.replace("id: test", "id: ${GATEWAY_ID}")
    (line,) = problems(text)
    assert line == "gw.yaml:2: gateway.id: environment variable GATEWAY_ID is not set"


def test_interpolated_port_is_validated_as_a_number() -> None:
    text = MINIMAL.replace("    type: mqtt\n", '    type: mqtt\n    broker: {port: "${P}"}\n', 1)
    config = load_text(text, "gw.yaml", {"P": "18830"})
    assert config.sources[0].broker.port == 18830
    assert any("broker.port" in p for p in problems(text, {"P": "eighty"}))


def test_topic_template_rejects_wildcards_and_unknown_placeholders() -> None:
    text = MINIMAL + "    topics: {agg: x}\n"
    assert problems(text)
    text = MINIMAL + '    topics: {aggregate: "site/{devce}/agg"}\n'
    assert "devce" in "\n".join(problems(text))
    text = MINIMAL + '    topics: {aggregate: "site/#"}\n'
    assert "wildcard" in "\n".join(problems(text))


def test_check_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(MINIMAL)
    assert main(["check", "-c", str(good)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok\n")
    assert "fleet" in out
    assert "filter" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace("    topics:", "    topcs:"))
    assert main(["check", "-c", str(bad)]) == 2
    assert f"{bad}:6: sources[0].topcs: unknown key" in capsys.readouterr().err


def test_status_line_summarizes_sources_and_outbox() -> None:
    from gateway.status import status_line

    counts = {
        ("fleet", "readings"): 120,
        ("fleet", "rejected_malformed_json"): 2,
        ("fleet", "rejected_too_large"): 1,
        ("store", "readings_written"): 120,
    }
    line = status_line(counts, {"up": 4})
    assert line == "fleet: 120 readings, 3 rejected (malformed_json 2, too_large 1); outbox up: 4"
