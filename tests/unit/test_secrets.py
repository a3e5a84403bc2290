"""Secrets come from files (systemd credentials), are never printed, and ``check`` shows the
effective config with them redacted."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.config.loader import load_text
from gateway.errors import ConfigError

CONFIG = """
sources:
  - id: fleet
    type: mqtt
    broker: {{host: 127.0.0.1, username: gw, {source_secret}}}
    topics: ["sensors/{{device}}/{{metric}}"]
sinks:
  - id: up
    type: mqtt
    broker: {{host: cloud.example, port: 8883, username: plant-7, {sink_secret}}}
"""


def config_text(source_secret: str, sink_secret: str) -> str:
    return CONFIG.format(source_secret=source_secret, sink_secret=sink_secret)


def test_password_read_from_a_credentials_file(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "secrets_upstream-password").write_text("s3cret-up\n")
    text = config_text(
        "password: local-pw",
        "password_file: '${CREDENTIALS_DIRECTORY}/secrets_upstream-password'",
    )
    config = load_text(text, "gw.yaml", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert config.sinks[0].broker.password == "s3cret-up"  # the trailing newline is dropped
    assert config.sources[0].broker.password == "local-pw"
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("password_file: /nonexistent/pw", "cannot read /nonexistent/pw"),
        ("password: x, password_file: /etc/hostname", "either password or password_file"),
    ],
)
def test_bad_password_settings_are_config_errors(secret: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_text(config_text("password: a", secret), "gw.yaml", env={})
    assert message in "\n".join(err.value.problems)
    assert "gw.yaml:" in err.value.problems[0]


def test_check_prints_the_effective_config_with_secrets_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2-upstream")
    path = tmp_path / "gw.yaml"
    path.write_text(config_text("password: hunter2-local", f"password_file: {secret}"))
    with caplog.at_level(logging.DEBUG):
        assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out + caplog.text
    effective = yaml.safe_load(out.split("secrets redacted):\n", 1)[1])
    assert effective["sinks"][0]["broker"]["password"] == "***"
    assert effective["sinks"][0]["broker"]["password_file"] == str(secret)
    assert effective["sources"][0]["broker"]["password"] == "***"
    assert effective["sinks"][0]["batch"] == 200  # defaults are filled in
    assert effective["http"] == {
        "enabled": True,
        "host": "127.0.0.1",
        "port": 9108,
        "ready_max_outbox": 10000,
    }


def test_check_quiet_prints_nothing_when_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(config_text("password: a", "password: b"))
    assert main(["check", "-q", "-c", str(path)]) == 0
    assert capsys.readouterr().out == ""
