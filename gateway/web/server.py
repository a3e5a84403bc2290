"""The HTTP side of the web UI: static page, JSON query API, Server-Sent Events.

Routes (all GET):
  /                      the live page
  /static/{file}         its script and style sheet (shipped in the package)
  /api/series            device, metric, start, end, bucket | points -> avg/min/max per bucket
  /api/latest            [device] -> newest reading per device+metric
  /api/alerts            [since, until, device, limit] -> alert transitions, newest first
  /api/alerts/active     alerts raised and not cleared
  /api/dead_letters      [since, until, source, limit] -> rejected input, newest first
  /api/health            sources, sinks, outbox depth, breaker state, rates
  /api/events            the live stream: ``readings``, ``alerts`` and ``health`` events
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.config.model import Config
from gateway.counters import Counters
from gateway.logs import RateLimitedLog
from gateway.web import queries
from gateway.web.config import WebConfig
from gateway.web.health import Health
from gateway.web.live import LiveFeed, sse_event
from gateway.web.queries import QueryError, ReadOnlyStore, SeriesRequest

log = logging.getLogger("gateway.web")

HEARTBEAT = 15.0
"""Seconds between SSE keep-alive comments when nothing else is sent."""
MAX_STREAMS = 64
"""Open live streams at most; more pages are refused (503) instead of growing without bound."""
COOKIE = "eg_token"
STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

QUERIES: web.AppKey[ReadOnlyStore] = web.AppKey("queries", ReadOnlyStore)
FEED: web.AppKey[LiveFeed] = web.AppKey("feed", LiveFeed)
HEALTH: web.AppKey[Health] = web.AppKey("health", Health)
HISTORY: web.AppKey[float] = web.AppKey("history", float)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _static(name: str) -> bytes:
    return resources.files("gateway.web").joinpath("static", name).read_bytes()


def _auth(token: str | None) -> Middleware:
    """Every route needs the token when one is set: bearer header, cookie, or ``?token=``."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        offered = [
            header.removeprefix("Bearer ") if header.startswith("Bearer ") else "",
            request.cookies.get(COOKIE, ""),
            request.query.get("token", ""),
        ]
        if not any(hmac.compare_digest(o.encode(), token.encode()) for o in offered if o):
            return _json({"error": "a valid token is needed (open /?token=...)"}, 401)
        response = await handler(request)
        if request.query.get("token") and not response.prepared:
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    return middleware


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bad parameters are 400 with a message; a store that cannot be read is 503."""
    try:
        return await handler(request)
    except QueryError as exc:
        return _json({"error": str(exc)}, 400)
    except sqlite3.Error as exc:
        return _json({"error": f"store unavailable: {exc}"}, 503)


def _param(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if not value:
        raise QueryError(f"missing parameter {name!r}")
    return value


def _time(request: web.Request, name: str, now: float) -> float | None:
    text = request.query.get(name)
    return None if not text else queries.parse_time(text, now)


def _int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise QueryError(f"{name!r} must be an integer, got {text!r}") from None


async def index(request: web.Request) -> web.Response:
    return web.Response(body=_static("index.html"), content_type="text/html")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    return web.Response(body=_static(name), content_type=STATIC[name])


async def series(request: web.Request) -> web.Response:
    store = request.app[QUERIES]
    now = store.clock()
    end = _time(request, "end", now) or now
    start = _time(request, "start", now) or end - request.app[HISTORY]
    bucket = request.query.get("bucket")
    req = SeriesRequest(
        device=_param(request, "device"),
        metric=_param(request, "metric"),
        start=start,
        end=end,
        bucket=queries.parse_seconds(bucket) if bucket else None,
        points=_int(request, "points", 200),
    )
    req.bucket_seconds()  # validate here, so a bad request never reaches the query thread
    return _json(await store.run(queries.series, req))


async def latest(request: web.Request) -> web.Response:
    store = request.app[QUERIES]
    return _json(await store.run(queries.latest, request.query.get("device") or None))


def _listing(request: web.Request, now: float) -> dict[str, Any]:
    """The ``since``, ``until`` and ``limit`` parameters every event listing takes."""
    return {
        "since": _time(request, "since", now),
        "until": _time(request, "until", now),
        "limit": _int(request, "limit", 100),
    }


async def alerts(request: web.Request) -> web.Response:
    store = request.app[QUERIES]
    device = request.query.get("device") or None
    return _json(await store.run(queries.alerts, device=device, **_listing(request, store.clock())))


async def active_alerts(request: web.Request) -> web.Response:
    return _json(await request.app[QUERIES].run(queries.active_alerts))


async def dead_letters(request: web.Request) -> web.Response:
    store = request.app[QUERIES]
    source = request.query.get("source") or None
    listing = _listing(request, store.clock())
    return _json(await store.run(queries.dead_letters, source=source, **listing))


async def health(request: web.Request) -> web.Response:
    outbox = await request.app[QUERIES].run(queries.outbox_depths)
    return _json(request.app[HEALTH].snapshot(outbox))


async def events(request: web.Request) -> web.StreamResponse:
    """The live stream; ends when the page goes away or the gateway stops."""
    feed = request.app[FEED]
    if len(feed.clients) >= MAX_STREAMS:
        return _json({"error": f"too many open pages (at most {MAX_STREAMS})"}, 503)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    client = feed.connect()
    try:
        await response.write(
            b"retry: 2000\n\n" + sse_event("hello", {"history": request.app[HISTORY]})
        )
        while True:
            try:
                event = await asyncio.wait_for(client.queue.get(), HEARTBEAT)
            except TimeoutError:
                event = b": keep-alive\n\n"
            if event is None:
                break
            await response.write(event)
    except ConnectionResetError:
        pass  # the page went away
    finally:
        feed.disconnect(client)
    return response


def build_app(
    config: WebConfig, store: ReadOnlyStore, feed: LiveFeed, health_: Health
) -> web.Application:
    """The aiohttp application: routes, token check, error mapping."""
    app = web.Application(middlewares=[_auth(config.token), _errors])
    app[QUERIES] = store
    app[FEED] = feed
    app[HEALTH] = health_
    app[HISTORY] = config.history
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/series", series)
    app.router.add_get("/api/latest", latest)
    app.router.add_get("/api/alerts", alerts)
    app.router.add_get("/api/alerts/active", active_alerts)
    app.router.add_get("/api/dead_letters", dead_letters)
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/events", events)
    return app


async def serve(
    config: WebConfig,
    store: ReadOnlyStore,
    feed: LiveFeed,
    health_: Health,
    started: Callable[[str], None] | None = None,
) -> None:
    """Serve the UI and publish the live feed until cancelled.

    ``started`` is told the URL once the socket listens (useful with ``port: 0``).
    """
    runner = web.AppRunner(
        build_app(config, store, feed, health_), access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    warn = RateLimitedLog(log, 60.0)
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = runner.addresses[0][1] if runner.addresses else config.port
        url = f"http://{config.host}:{port}/"
        log.info("web UI on %s", url)
        if started is not None:
            started(url)
        interval = 1.0 / config.updates_per_second
        health_every = max(1, round(config.updates_per_second))
        tick = 0
        while True:
            await asyncio.sleep(interval)
            tick += 1
            doc = None
            if feed.clients and tick % health_every == 0:
                try:
                    doc = health_.snapshot(await store.run(queries.outbox_depths))
                except sqlite3.Error as exc:
                    warn.warning("outbox", "web: cannot read the outbox depth: %s", exc)
            feed.publish(doc)
    finally:
        feed.close()
        await runner.cleanup()
        await asyncio.get_running_loop().run_in_executor(None, store.close)


async def run_web(
    config: Config,
    counters: Counters,
    feed: LiveFeed,
    sources: Callable[[], Sequence[str]],
    breakers: Callable[[], Mapping[str, str]],
    memory: Callable[[], Mapping[str, int]] = dict,
) -> None:
    """The gateway's web task: serve ``config.web`` until cancelled; ``sources`` and
    ``breakers`` tell the running sources and sinks (they change on reload), ``memory`` the
    rows waiting in memory outboxes.

    A port that cannot be bound is logged as an error and the gateway runs on without its UI.
    """
    health_ = Health(
        config.gateway.id,
        counters,
        sources,
        breakers,
        time.time,
        memory,
    )
    store = ReadOnlyStore(config.store.path)
    try:
        await serve(config.web, store, feed, health_)
    except OSError as exc:
        log.error(
            "web UI cannot listen on %s:%d: %s; the gateway runs on without it",
            config.web.host,
            config.web.port,
            exc,
        )
