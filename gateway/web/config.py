"""The ``web:`` section: where the built-in UI listens, who may use it, how often it updates."""

from __future__ import annotations

import ipaddress
from typing import Self

from pydantic import Field, model_validator

from gateway.config.types import Duration, StrictModel


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebConfig(StrictModel):
    """The built-in web UI and query API (off unless ``enabled``)."""

    enabled: bool = False
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8080, ge=0, le=65535)
    token: str | None = Field(
        None,
        min_length=16,
        description="required when host is not loopback; browsers pass it once as ?token=",
    )
    updates_per_second: float = Field(
        2.0, gt=0, le=20, description="at most this many live updates per device reach a page"
    )
    history: Duration = Field(300.0, gt=0, description="span of the sparklines on the page")

    @model_validator(mode="after")
    def _token_off_loopback(self) -> Self:
        if self.enabled and not is_loopback(self.host) and not self.token:
            raise ValueError(
                f"web.host {self.host!r} is reachable from other machines: set web.token "
                "(at least 16 characters, e.g. ${EG_WEB_TOKEN})"
            )
        return self
