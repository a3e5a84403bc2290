"""Upstream topic templates: validated at load, filled with sanitized values at publish."""

from __future__ import annotations

import re
import string
from typing import Annotated

from pydantic import AfterValidator

PLACEHOLDERS = frozenset({"gateway", "pipeline", "step", "source", "device", "metric", "kind"})

# Anything that could change the topic structure or confuse subscribers: level separator,
# wildcards, NUL and every other control or non-printable character, and whitespace.
_UNSAFE = re.compile(r"[/+#\x00-\x1f\x7f-\x9f\s]")


def sanitize(value: str) -> str:
    """Make ``value`` safe as one topic level: unsafe characters become ``_``; never empty."""
    cleaned = _UNSAFE.sub("_", value)
    if cleaned.startswith("$"):
        cleaned = "_" + cleaned[1:]
    return cleaned[:128] or "_"


def _check_template(template: str) -> str:
    try:
        fields = [
            name for _, name, spec, conv in string.Formatter().parse(template) if name is not None
        ]
    except ValueError as exc:
        raise ValueError(f"bad topic template {template!r}: {exc}") from exc
    unknown = sorted({f for f in fields if f not in PLACEHOLDERS})
    if unknown:
        raise ValueError(
            f"unknown placeholder(s) {unknown} in {template!r}; use {sorted(PLACEHOLDERS)}"
        )
    if "+" in template or "#" in template:
        raise ValueError(f"a publish topic cannot contain wildcards: {template!r}")
    if not template or template.startswith("/"):
        raise ValueError("a topic must not be empty or start with '/'")
    return template


TopicTemplate = Annotated[str, AfterValidator(_check_template)]


def render(template: str, values: dict[str, str]) -> str:
    """Fill ``template`` with sanitized ``values``."""
    return template.format_map({k: sanitize(v) for k, v in values.items()})
