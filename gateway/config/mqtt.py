"""Connection settings shared by MQTT sources and sinks: the reconnect backoff, credentials
(inline or read from a file, e.g. a systemd credential) and TLS / mutual TLS."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from gateway.config.types import Duration, StrictModel

SECRET_MAX_BYTES = 4096


class BackoffConfig(StrictModel):
    """Capped exponential backoff with full jitter: sleep uniform(0, min(max, initial*2^n))."""

    initial: Duration = 0.5
    max: Duration = 30.0

    @model_validator(mode="after")
    def _ordered(self) -> BackoffConfig:
        if self.initial <= 0 or self.max < self.initial:
            raise ValueError("need 0 < initial <= max")
        return self


class TlsConfig(StrictModel):
    """TLS to the broker; with ``cert_file`` and ``key_file`` also a client certificate (mTLS)."""

    ca_file: Path | None = Field(None, description="CA bundle; none: the system's CAs")
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password_file: Path | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"
    check_hostname: bool = True

    @model_validator(mode="after")
    def _pairs(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (mutual TLS)")
        for name in ("ca_file", "cert_file", "key_file", "key_password_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a readable file")
        return self


class MqttBroker(StrictModel):
    """Where an MQTT client connects and as whom."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str | None = None
    username: str | None = None
    password: str | None = Field(None, repr=False)
    password_file: Path | None = Field(
        None, description="read the password from this file (e.g. a systemd credential)"
    )
    keepalive: int = Field(30, ge=5, le=3600)
    reconnect: BackoffConfig = BackoffConfig()
    tls: TlsConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _password_from_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("password_file") is None:
            return data
        if data.get("password") is not None:
            raise ValueError("give either password or password_file, not both")
        path = str(data["password_file"])
        if "${" in path:
            return data  # an unset variable, already reported by the loader
        return {**data, "password": read_secret(Path(path))}


def read_secret(path: Path) -> str:
    """A secret kept in a file: its text without the trailing newline."""
    try:
        with path.open("rb") as f:
            raw = f.read(SECRET_MAX_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > SECRET_MAX_BYTES:
        raise ValueError(f"{path} is larger than {SECRET_MAX_BYTES} bytes")
    try:
        return raw.decode().rstrip("\r\n")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None


def tls_context(broker: MqttBroker) -> ssl.SSLContext | None:
    """The client-side SSL context ``broker.tls`` asks for, or None for plain TCP."""
    tls = broker.tls
    if tls is None:
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
    )
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )
    context.check_hostname = tls.check_hostname
    if tls.cert_file is not None and tls.key_file is not None:
        password = read_secret(tls.key_password_file) if tls.key_password_file else None
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=password)
    return context
