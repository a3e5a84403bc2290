"""Read a YAML config file into a validated ``Config``.

YAML is composed into nodes first so every key and list item keeps its line number;
``${VAR}`` / ``${VAR:-default}`` are expanded in string scalars; pydantic validates. Every
problem is reported as ``FILE:LINE: key.path: message``, all of them at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.model import Config, cross_references
from gateway.errors import ConfigError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\$")

Loc = tuple[str | int, ...]


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; ``$$`` is a literal ``$``.

    Raises KeyError naming the variable when it is unset and has no default.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise KeyError(name)
            return default
        return value

    return _ENV.sub(replace, text)


class _Builder:
    """Turns a composed YAML node tree into Python data while recording line numbers."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.lines: dict[Loc, int] = {}
        self.problems: list[tuple[Loc, int, str]] = []
        self._constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.lines[loc] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._constructor.construct_object(key_node, deep=True)
                if key == "<<":
                    self.problems.append(
                        (loc, key_node.start_mark.line + 1, "merge keys are not supported")
                    )
                    continue
                if key in out:
                    self.problems.append(
                        ((*loc, key), key_node.start_mark.line + 1, "duplicate key")
                    )
                self.lines[(*loc, key)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, (*loc, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        value = self._constructor.construct_object(node, deep=True)
        if isinstance(value, str) and "$" in value:
            try:
                value = expand_env(value, self.env)
            except KeyError as exc:
                self.problems.append(
                    (
                        loc,
                        node.start_mark.line + 1,
                        f"environment variable {exc.args[0]} is not set",
                    )
                )
        return value


def format_loc(loc: Loc) -> str:
    """``('pipelines', 0, 'steps', 2)`` -> ``pipelines[0].steps[2]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _yaml_loc(loc: tuple[Any, ...], lines: Mapping[Loc, int]) -> tuple[Loc, int]:
    """Map a pydantic error location onto the YAML: drop union tags, find the nearest line.

    pydantic inserts discriminator tags into ``loc`` (``steps, 0, window, window, size``): a
    part that is not in the YAML is a tag, unless it is the last one (a missing key).
    """
    path: Loc = ()
    line = lines.get((), 1)
    for i, part in enumerate(loc):
        if i + 1 < len(loc) and loc[i + 1] == part:
            continue  # a tag named like its field: ("filter", "filter")
        candidate = (*path, part)
        if candidate in lines:
            path, line = candidate, lines[candidate]
        elif i == len(loc) - 1:
            path = candidate
    return path, line


def load_text(text: str, filename: str, env: Mapping[str, str] | None = None) -> Config:
    """Validate config text; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([f"{filename}:{line}: (yaml): {getattr(exc, 'problem', exc)}"]) from exc
    if node is None:
        raise ConfigError([f"{filename}:1: (top level): the file is empty"])
    builder = _Builder(env)
    data = builder.build(node, ())
    problems = [
        f"{filename}:{line}: {format_loc(loc)}: {msg}" for loc, line, msg in builder.problems
    ]
    if not isinstance(data, dict):
        problems.append(f"{filename}:1: (top level): expected a mapping of sections")
        raise ConfigError(problems)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        reported = {loc for loc, _, _ in builder.problems}
        for err in exc.errors(include_url=False):
            path, line = _yaml_loc(tuple(err["loc"]), builder.lines)
            if path in reported:
                continue  # already explained (e.g. an unset variable left the value raw)
            problems.append(f"{filename}:{line}: {format_loc(path)}: {_message(err)}")
        raise ConfigError(problems) from exc
    for loc, msg in cross_references(config):
        path, line = _yaml_loc(loc, builder.lines)
        problems.append(f"{filename}:{line}: {format_loc(path)}: {msg}")
    if problems:
        raise ConfigError(problems)
    return config


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (check the spelling; see the config reference in README)"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        kind, tag, expected = (
            ctx.get("discriminator", "type"),
            ctx.get("tag"),
            ctx.get("expected_tags"),
        )
        return f"unknown {kind} {tag!r} (expected one of {expected})"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate the config file at ``path``."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{p}:1: (file): cannot read: {exc}"]) from exc
    return load_text(text, str(p), env)
