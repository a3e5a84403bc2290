"""Upstream topics and the MQTT source's topic patterns."""

from __future__ import annotations

import pytest

from gateway.sinks.topics import render, sanitize
from gateway.sources.mqtt import TopicPattern


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("pump-1", "pump-1"),
        ("a/b", "a_b"),
        ("+", "_"),
        ("#", "_"),
        ("dev\x00ice", "dev_ice"),
        ("line\nfeed", "line_feed"),
        ("$SYS", "_SYS"),
        ("", "_"),
        ("tab\there", "tab_here"),
        ("x" * 500, "x" * 128),
    ],
)
def test_sanitize_keeps_one_topic_level(raw: str, safe: str) -> None:
    assert sanitize(raw) == safe


def test_render_cannot_be_injected_through_a_device_id() -> None:
    topic = render(
        "site/{gateway}/{device}/{metric}/agg",
        {"gateway": "gw", "device": "evil/#", "metric": "t+"},
    )
    assert topic == "site/gw/evil__/t_/agg"


def test_topic_pattern_derives_the_subscription_and_extracts_fields() -> None:
    p = TopicPattern.parse("sensors/{device}/{metric}")
    assert p.filter == "sensors/+/+"
    assert p.extract("sensors/dev-1/temperature") == (True, "dev-1", "temperature")
    assert p.extract("sensors/dev-1") == (False, None, None)
    assert p.extract("other/dev-1/temperature") == (False, None, None)


def test_topic_pattern_with_multi_level_wildcard() -> None:
    p = TopicPattern.parse("fleet/{device}/#")
    assert p.filter == "fleet/+/#"
    assert p.extract("fleet/d9/a/b") == (True, "d9", None)


@pytest.mark.parametrize(
    "bad", ["a/{dev}/x", "a/x{device}", "a/#/b", "a/b+/c", "{device}/{device}"]
)
def test_bad_topic_patterns_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        TopicPattern.parse(bad)
