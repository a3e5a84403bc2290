"""The root of the configuration: gateway identity, store, sources, pipelines and sinks."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from gateway.config.limits import LimitsConfig
from gateway.config.types import Duration, StrictModel
from gateway.metrics import HttpConfig
from gateway.pipeline.steps import Step
from gateway.sinks.mqtt import MqttSinkConfig
from gateway.sinks.topics import TopicTemplate
from gateway.sources.mqtt import MqttSourceConfig
from gateway.sources.serial import SerialSourceConfig
from gateway.store.config import StoreConfig
from gateway.web.config import WebConfig

SourceConfig = Annotated[MqttSourceConfig | SerialSourceConfig, Field(discriminator="type")]
SinkConfig = Annotated[MqttSinkConfig, Field(discriminator="type")]

ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class GatewaySection(StrictModel):
    """Who this gateway is (used in topics and client ids) and how it logs."""

    id: str = Field("edge-gateway", pattern=ID_PATTERN)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    status_interval: Duration = Field(60.0, gt=0, description="how often a status line is logged")
    status_topic: TopicTemplate | None = Field(
        "site/{gateway}/status",
        description="retained online/offline status with a last will on every sink; null: off",
    )
    stall_after: Duration = Field(
        120.0, gt=0, description="no progress for this long stops the systemd watchdog pings"
    )


class PipelineConfig(StrictModel):
    """Readings from some sources, through steps, to some sinks."""

    id: str = Field(pattern=ID_PATTERN)
    from_: list[str] = Field(alias="from", min_length=1)
    steps: list[Step] = []
    to: list[str] = []
    forward: list[Literal["readings", "aggregates", "alerts"]] = Field(
        default=["readings", "aggregates", "alerts"],
        description="which kinds of output records go to the sinks in `to`",
    )


class Config(StrictModel):
    """A whole gateway config file."""

    gateway: GatewaySection = GatewaySection()
    store: StoreConfig = StoreConfig()
    sources: list[SourceConfig] = Field(min_length=1)
    pipelines: list[PipelineConfig] = []
    sinks: list[SinkConfig] = []
    limits: LimitsConfig = LimitsConfig()
    http: HttpConfig = HttpConfig()
    web: WebConfig = WebConfig()


def cross_references(config: Config) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems that span sections: duplicate ids, unknown source or sink names."""
    problems: list[tuple[tuple[str | int, ...], str]] = []
    sections: tuple[
        tuple[
            str,
            list[MqttSourceConfig | SerialSourceConfig]
            | list[PipelineConfig]
            | list[MqttSinkConfig],
        ],
        ...,
    ] = (("sources", config.sources), ("pipelines", config.pipelines), ("sinks", config.sinks))
    for section, items in sections:
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.id in seen:
                problems.append(((section, i, "id"), f"duplicate id {item.id!r}"))
            seen.add(item.id)
    sources = sorted({s.id for s in config.sources})
    sinks = sorted({s.id for s in config.sinks})
    for i, p in enumerate(config.pipelines):
        problems += [
            (("pipelines", i, "from", j), f"unknown source {s!r} (known: {sources})")
            for j, s in enumerate(p.from_)
            if s not in sources
        ]
        problems += [
            (("pipelines", i, "to", j), f"unknown sink {s!r} (known: {sinks})")
            for j, s in enumerate(p.to)
            if s not in sinks
        ]
    return problems
