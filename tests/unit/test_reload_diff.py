"""What a reload rebuilds: only the sources, pipelines and sinks whose config changed."""

from __future__ import annotations

from gateway.app import diff
from gateway.config.loader import load_text

BASE = """
gateway: {id: gw}
sources:
  - {id: fleet, type: mqtt, topics: ["s/{device}/{metric}"]}
  - {id: boiler, type: serial, port: /dev/ttyUSB0, format: {type: kv}}
pipelines:
  - {id: stats, from: [fleet], steps: [{window: {size: 10s}}], to: [up]}
  - {id: raw, from: [boiler], to: [up]}
  - {id: local, from: [boiler]}
sinks:
  - {id: up, type: mqtt, broker: {host: cloud, password: a}}
"""


def changes(before: str, after: str) -> tuple[tuple[str, ...], ...]:
    d = diff(load_text(before, "a.yaml", env={}), load_text(after, "b.yaml", env={}))
    return d.sources, d.pipelines, d.sinks, d.needs_restart


def test_nothing_changed() -> None:
    assert changes(BASE, BASE) == ((), (), (), ())


def test_a_step_parameter_rebuilds_that_pipeline_only() -> None:
    after = BASE.replace("size: 10s", "size: 30s")
    assert changes(BASE, after) == ((), ("stats",), (), ())


def test_a_sink_password_reconnects_the_sink_but_keeps_the_pipelines() -> None:
    after = BASE.replace("password: a", "password: b")
    assert changes(BASE, after) == ((), (), ("up",), ())


def test_sink_topics_rebuild_the_pipelines_that_forward_to_it() -> None:
    after = BASE.replace("password: a}", "password: a}, qos: 0")
    assert changes(BASE, after) == ((), ("raw", "stats"), ("up",), ())


def test_added_removed_and_changed_sources() -> None:
    after = BASE.replace('topics: ["s/{device}/{metric}"]', 'topics: ["t/{device}/{metric}"]')
    assert changes(BASE, after)[0] == ("fleet",)
    removed = BASE.replace("  - {id: local, from: [boiler]}\n", "")
    assert changes(BASE, removed)[1] == ("local",)


def test_store_and_identity_need_a_restart() -> None:
    after = BASE.replace("gateway: {id: gw}", "gateway: {id: gw2}\nstore: {path: other.db}")
    assert changes(BASE, after)[3] == ("gateway", "store")
