"""Connection settings shared by MQTT sources and sinks, and the reconnect backoff."""

from __future__ import annotations

from pydantic import Field, model_validator

from gateway.config.types import Duration, StrictModel


class BackoffConfig(StrictModel):
    """Capped exponential backoff with full jitter: sleep uniform(0, min(max, initial*2^n))."""

    initial: Duration = 0.5
    max: Duration = 30.0

    @model_validator(mode="after")
    def _ordered(self) -> BackoffConfig:
        if self.initial <= 0 or self.max < self.initial:
            raise ValueError("need 0 < initial <= max")
        return self


class MqttBroker(StrictModel):
    """Where an MQTT client connects and as whom."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = None
    username: str | None = None
    password: str | None = Field(None, repr=False)
    keepalive: int = Field(30, ge=5, le=3600)
    reconnect: BackoffConfig = BackoffConfig()
