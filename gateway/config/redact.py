"""The effective configuration as plain data, with every secret replaced by ``***``."""

from __future__ import annotations

from typing import Any

import yaml

from gateway.config.model import Config

SECRET_KEYS = frozenset({"password", "key_password"})
REDACTED = "***"


def redacted(config: Config) -> dict[str, Any]:
    """``config`` with defaults filled in, as YAML-ready data; secrets are ``***``."""
    data = config.model_dump(mode="json", by_alias=True)
    return _scrub(data)  # type: ignore[no-any-return]


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (REDACTED if k in SECRET_KEYS and v is not None else _scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def effective_yaml(config: Config) -> str:
    """The redacted effective config as YAML, in the file's section order."""
    return yaml.safe_dump(redacted(config), sort_keys=False, allow_unicode=True)
