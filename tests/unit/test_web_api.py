"""The HTTP API and the live feed, in process, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestClient, TestServer

from gateway.config.loader import load_text
from gateway.counters import Counters
from gateway.errors import ConfigError
from gateway.model import Alert, Reading, Record
from gateway.web.config import WebConfig
from gateway.web.health import Health
from gateway.web.live import CLIENT_QUEUE, LiveFeed
from gateway.web.queries import ReadOnlyStore
from gateway.web.server import MAX_STREAMS, build_app, serve
from tests.unit.test_web_queries import NOW, fill

TOKEN = "s3cret-token-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = NOW + 60

    def __call__(self) -> float:
        return self.now


def make_health(counters: Counters, clock: Callable[[], float]) -> Health:
    return Health("gw-test", counters, lambda: ["fleet"], lambda: {"upstream": "open"}, clock)


@pytest.fixture
async def api_for(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start the app on a real store file with the given WebConfig; yields (client, feed)."""
    await fill(tmp_path / "gateway.db")
    started: list[tuple[TestClient[Any, Any], ReadOnlyStore]] = []

    async def start(config: WebConfig, counters: Counters | None = None) -> tuple[Any, LiveFeed]:
        clock = Clock()
        store = ReadOnlyStore(tmp_path / "gateway.db", clock)
        feed = LiveFeed()
        app = build_app(config, store, feed, make_health(counters or Counters(), clock))
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        started.append((client, store))
        return client, feed

    yield start
    for client, store in started:
        await client.close()
        store.close()


async def test_series_api_downsamples_a_time_range(api_for: Callable[..., Any]) -> None:
    client, _ = await api_for(WebConfig())
    resp = await client.get(
        "/api/series",
        params={
            "device": "p1",
            "metric": "temp",
            "start": str(NOW),
            "end": str(NOW + 60),
            "bucket": "20s",
        },
    )
    assert resp.status == 200
    body = await resp.json()
    assert [(p["t"], p["avg"], p["min"], p["max"], p["count"]) for p in body["points"]] == [
        (NOW, 9.5, 0.0, 19.0, 20),
        (NOW + 20, 29.5, 20.0, 39.0, 20),
        (NOW + 40, 49.5, 40.0, 59.0, 20),
    ]


async def test_series_defaults_to_the_last_history_span(api_for: Callable[..., Any]) -> None:
    client, _ = await api_for(WebConfig(history="20s"))
    body = await (await client.get("/api/series?device=p1&metric=temp&points=1")).json()
    assert (body["start"], body["end"]) == (NOW + 40, NOW + 60)
    assert body["points"] == [{"t": NOW + 40, "avg": 49.5, "min": 40.0, "max": 59.0, "count": 20}]


@pytest.mark.parametrize(
    "query",
    [
        "/api/series?metric=temp",
        "/api/series?device=p1&metric=temp&start=soon",
        "/api/series?device=p1&metric=temp&start=now&end=1m",
        "/api/series?device=p1&metric=temp&bucket=0s",
        "/api/series?device=p1&metric=temp&points=many",
        "/api/alerts?limit=0",
    ],
)
async def test_bad_parameters_are_400_with_a_message(
    api_for: Callable[..., Any], query: str
) -> None:
    client, _ = await api_for(WebConfig())
    resp = await client.get(query)
    assert resp.status == 400
    assert (await resp.json())["error"]


async def test_latest_alerts_and_dead_letters(api_for: Callable[..., Any]) -> None:
    client, _ = await api_for(WebConfig())
    latest = await (await client.get("/api/latest")).json()
    assert [(r["device"], r["value"]) for r in latest] == [("p1", 59.0), ("p2", 7.0)]
    alerts = await (await client.get("/api/alerts?device=p1")).json()
    assert [a["state"] for a in alerts] == ["cleared", "raised"]
    active = await (await client.get("/api/alerts/active")).json()
    assert [a["device"] for a in active] == ["p2"]
    dead = await (await client.get("/api/dead_letters?source=fleet")).json()
    assert [d["raw"] for d in dead] == ["{oops"]


async def test_health_api_shows_sources_and_sinks(api_for: Callable[..., Any]) -> None:
    counters = Counters()
    counters.inc("fleet", "readings", 7)
    client, _ = await api_for(WebConfig(), counters)
    body = await (await client.get("/api/health")).json()
    assert body["gateway"] == "gw-test"
    assert [(s["id"], s["readings"]) for s in body["sources"]] == [("fleet", 7)]
    assert [(s["id"], s["breaker"]) for s in body["sinks"]] == [("upstream", "open")]


def test_health_counts_rates_per_second_between_snapshots() -> None:
    counters = Counters()
    clock = Clock()
    health = make_health(counters, clock)
    assert health.snapshot({})["sources"][0]["idle"] is None  # no reading yet
    counters.inc("fleet", "readings", 120)
    counters.inc("fleet", "rejected_malformed_json", 2)
    clock.now += 60
    body = health.snapshot({"upstream": 42})
    assert body["sources"] == [
        {
            "id": "fleet",
            "readings": 120,
            "rate": 2.0,
            "idle": 0.0,
            "rejected": 2,
            "rejected_by_reason": {"malformed_json": 2},
        }
    ]
    assert body["sinks"] == [
        {"id": "upstream", "breaker": "open", "outbox": 42, "acked": 0, "rate": 0.0, "failures": 0}
    ]
    counters.inc("fleet", "readings", 30)
    clock.now += 0.5  # too soon for a new rate: the last one stays
    assert health.snapshot({})["sources"][0]["rate"] == 2.0
    clock.now += 0.5
    assert health.snapshot({})["sources"][0]["rate"] == 30.0
    clock.now += 12  # quiet since the snapshot that first saw its last readings, 12.5 s ago
    assert health.snapshot({})["sources"][0] | {"rate": None} == {
        "id": "fleet",
        "readings": 150,
        "rate": None,
        "idle": 12.5,
        "rejected": 2,
        "rejected_by_reason": {"malformed_json": 2},
    }


async def test_the_page_and_its_files_are_served(api_for: Callable[..., Any]) -> None:
    client, _ = await api_for(WebConfig())
    page = await client.get("/")
    assert page.status == 200
    assert "static/app.js" in await page.text()
    js = await client.get("/static/app.js")
    assert js.status == 200
    assert js.content_type == "text/javascript"
    assert (await client.get("/static/../config.py")).status == 404


async def test_a_token_guards_every_route(api_for: Callable[..., Any]) -> None:
    client, _ = await api_for(WebConfig(host="0.0.0.0", token=TOKEN, enabled=True))
    for path in ("/", "/api/latest", "/api/events", "/static/app.js"):
        assert (await client.get(path)).status == 401, path
    assert (
        await client.get("/api/latest", headers={"Authorization": "Bearer wrong"})
    ).status == 401
    ok = await client.get("/api/latest", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status == 200
    # a browser opens /?token=... once; the cookie set then carries it to the API and stream
    page = await client.get(f"/?token={TOKEN}")
    assert page.status == 200
    assert page.cookies["eg_token"].value == TOKEN
    assert (await client.get("/api/alerts")).status == 200


SOURCES = "sources: [{id: fleet, type: mqtt, topics: ['s/{device}/{metric}']}]\n"


def test_the_web_section_is_off_by_default_and_checked_like_any_other() -> None:
    assert load_text(SOURCES, "gw.yaml").web.enabled is False
    web = load_text(SOURCES + "web: {enabled: true, port: 0, history: 10m}\n", "gw.yaml").web
    assert (web.enabled, web.host, web.port, web.history) == (True, "127.0.0.1", 0, 600.0)
    with pytest.raises(ConfigError) as exc:
        load_text(SOURCES + "web: {enabled: true, host: 0.0.0.0, prot: 1}\n", "gw.yaml")
    assert exc.value.problems == [
        "gw.yaml:2: web.prot: unknown key (check the spelling; see the config reference in README)"
    ]
    with pytest.raises(ConfigError, match=r"gw\.yaml:2: web: .*set web\.token"):
        load_text(SOURCES + "web: {enabled: true, host: 0.0.0.0}\n", "gw.yaml")


def test_a_non_loopback_address_needs_a_token() -> None:
    with pytest.raises(ValueError, match=r"web\.token"):
        WebConfig(enabled=True, host="0.0.0.0")
    assert WebConfig(enabled=True, host="::1").token is None
    assert WebConfig(enabled=True, host="0.0.0.0", token=TOKEN).token == TOKEN


async def read_event(stream: Any) -> tuple[str, str]:
    """The next SSE event (name, data) from an aiohttp response body."""
    name = data = ""
    async with asyncio.timeout(10):
        while True:
            line = (await stream.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
            elif line == "" and name:
                return name, data


async def test_the_stream_pushes_coalesced_readings_and_alerts(api_for: Callable[..., Any]) -> None:
    client, feed = await api_for(WebConfig())
    resp = await client.get("/api/events")
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert (await read_event(resp.content))[0] == "hello"
    for i in range(1000):  # a burst from one device: the page gets only the newest value
        feed.tap(Reading("fleet", "p1", "temp", float(i), NOW + i))
    feed.tap(Reading("fleet", "p2", "temp", -1.0, NOW))
    raised = Alert(
        "overheat", "hot", "p1", "temp", "threshold", "raised", "critical", NOW, 99.0, 30.0, "hot"
    )
    seen: list[Record] = []
    tee = feed.observe(seen.append)
    assert feed.publish() == 1  # the readings; the pipeline's observer outlives a publish
    tee(raised)
    assert seen == [raised]
    assert feed.publish() == 1
    name, data = await read_event(resp.content)
    assert name == "readings"
    assert sorted((r["device"], r["value"]) for r in json.loads(data)) == [
        ("p1", 999.0),
        ("p2", -1.0),
    ]
    name, data = await read_event(resp.content)
    assert name == "alerts"
    assert '"state":"raised"' in data
    assert feed.publish() == 0  # nothing new: nothing sent
    resp.close()


async def test_open_streams_are_bounded(api_for: Callable[..., Any]) -> None:
    client, feed = await api_for(WebConfig())
    for _ in range(MAX_STREAMS):
        feed.connect()
    resp = await client.get("/api/events")
    assert resp.status == 503
    assert "too many" in (await resp.json())["error"]


def test_a_page_that_falls_behind_is_dropped_not_waited_for() -> None:
    feed = LiveFeed()
    slow = feed.connect()
    for i in range(CLIENT_QUEUE + 1):
        feed.tap(Reading("fleet", "p1", "temp", float(i), NOW + i))
        feed.publish()
    assert feed.clients == set()
    assert feed.slow_clients == 1
    assert slow.queue.get_nowait() is None  # its stream ends; the browser reconnects


def test_without_pages_publishing_only_forgets() -> None:
    feed = LiveFeed()
    feed.tap(Reading("fleet", "p1", "temp", 1.0, NOW))
    assert feed.publish() == 0
    page = feed.connect()
    assert feed.publish() == 0
    assert page.queue.empty()


async def count_updates(stream: Any, updates: Counter[str]) -> None:
    """Count ``readings`` updates per device until the stream ends."""
    name = ""
    async for raw in stream:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: ") and name == "readings":
            updates.update(r["device"] for r in json.loads(line.removeprefix("data: ")))


async def test_a_page_gets_at_most_updates_per_second_per_device(tmp_path: Path) -> None:
    """10 devices tapped as fast as the loop allows for 2 s; the stream stays at 4/s each."""
    await fill(tmp_path / "gateway.db")
    rate, seconds = 4.0, 2.0
    config = WebConfig(enabled=True, port=0, updates_per_second=rate)
    feed = LiveFeed()
    store = ReadOnlyStore(tmp_path / "gateway.db")
    url: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve(config, store, feed, make_health(Counters(), Clock()), url.set_result)
    )
    updates: Counter[str] = Counter()
    tapped = 0
    async with ClientSession() as session, session.get(await url + "api/events") as resp:
        reader = asyncio.create_task(count_updates(resp.content, updates))
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            for i in range(1000):
                feed.tap(Reading("fleet", f"dev-{i % 10}", "temp", float(i), NOW + i))
            tapped += 1000
            await asyncio.sleep(0)  # let the publisher and the stream run
        server.cancel()  # ends the stream: the reader has seen everything sent
        with contextlib.suppress(asyncio.CancelledError):
            await server
        async with asyncio.timeout(10):
            await reader
    assert set(updates) == {f"dev-{i}" for i in range(10)}
    assert max(updates.values()) <= rate * seconds + 1, updates
    assert tapped > 100 * max(updates.values())  # many more readings than updates


def test_a_sinks_outbox_on_the_page_counts_its_memory_outbox_too() -> None:
    memory = {"upstream": 7}
    health = Health(
        "gw-test", Counters(), lambda: [], lambda: {"upstream": "closed"}, Clock(), lambda: memory
    )
    assert health.snapshot({"upstream": 5})["sinks"][0]["outbox"] == 12
    memory.clear()  # all acknowledged
    assert health.snapshot({})["sinks"][0]["outbox"] == 0
