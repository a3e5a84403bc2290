"""Store commit notifications, outbox dead letters, schema upgrade and message ids."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.counters import Counters
from gateway.intake import Intake
from gateway.model import Aggregate, Reading
from gateway.sinks.payloads import MessageIds
from gateway.sources.base import Decoding
from gateway.sources.codecs import build_decoder
from gateway.sources.mqtt import MqttSource, MqttSourceConfig
from gateway.sources.silence import SilenceWatch
from gateway.status import status_line
from gateway.store.config import StoreConfig
from gateway.store.store import Store

NOW = 1_700_000_000.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(StoreConfig(path=tmp_path / "gw.db"), Counters(), lambda: NOW) as s:
        yield s


def reading(i: int, seq: int | None = None) -> Reading:
    return Reading("mqtt", "d1", "temp", float(i), NOW + i, seq)


async def test_a_commit_callback_runs_only_after_its_readings_are_committed(
    store: Store,
) -> None:
    order: list[str] = []
    store.add_readings([reading(1, 1)])
    store.when_committed(lambda: order.append("first"))
    store.add_readings([reading(2, 2)])
    store.when_committed(lambda: order.append("second"))
    assert order == []
    await store.flush()
    assert order == ["first", "second"]
    rows = await store.query("SELECT count(*) AS n FROM readings")
    assert rows == [{"n": 2}]


async def test_a_commit_callback_with_nothing_pending_runs_at_once(store: Store) -> None:
    called: list[int] = []
    store.when_committed(lambda: called.append(1))
    assert called == [1]


async def test_a_failing_commit_holds_its_callbacks_until_a_retry_succeeds(
    store: Store, tmp_path: Path
) -> None:
    with sqlite3.connect(tmp_path / "gw.db") as conn:
        conn.execute("CREATE TRIGGER broken BEFORE INSERT ON readings BEGIN SELECT json('{'); END")
    conn.close()
    called: list[int] = []
    store.add_readings([reading(1, 1)])
    store.when_committed(lambda: called.append(1))
    with pytest.raises(sqlite3.OperationalError):
        await store.flush()
    assert called == []
    with sqlite3.connect(tmp_path / "gw.db") as conn:
        conn.execute("DROP TRIGGER broken")
    conn.close()
    await store.flush()
    assert called == [1]


async def test_outbox_rows_move_to_dead_letters_in_one_step(store: Store) -> None:
    store.add_outbox("up", "m1", "t/1", b"x" * 10, 1)
    store.add_outbox("up", "m2", "t/2", b"ok", 1)
    await store.flush()
    first, second = await store.outbox_take("up", 10)
    await store.outbox_dead_letter([first], "up", "too_large")
    assert [r.msg_id for r in await store.outbox_take("up", 10)] == ["m2"]
    dead = await store.query("SELECT source, reason, detail, raw FROM dead_letters")
    assert dead == [
        {
            "source": "up",
            "reason": "too_large",
            "detail": "m1 on t/1 after 0 attempts",
            "raw": b"x" * 10,
        }
    ]
    assert second.msg_id == "m2"


async def test_a_poisoned_round_moves_every_row_in_order(store: Store) -> None:
    for i in range(1500):  # more than one multi-row statement, and a remainder
        store.add_outbox("up", f"m{i}", f"t/{i}", b"p%d" % i, 1)
    store.add_outbox("up", "kept", "t/k", b"ok", 1)
    await store.flush()
    rows = await store.outbox_take("up", 1500)
    await store.outbox_failed([r.id for r in rows])
    rows = await store.outbox_take("up", 1500)
    assert {r.attempts for r in rows} == {1}
    await store.outbox_dead_letter(rows, "up", "poison")
    assert [r.msg_id for r in await store.outbox_take("up", 10)] == ["kept"]
    dead = await store.query("SELECT detail, raw FROM dead_letters ORDER BY id")
    assert [(d["detail"], d["raw"]) for d in dead] == [
        (f"m{i} on t/{i} after 1 attempts", b"p%d" % i) for i in range(1500)
    ]


async def test_a_version_1_file_is_upgraded_keeping_one_of_each_seqless_repeat(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE readings (source TEXT, device TEXT, metric TEXT, ts FLOAT,"
            " value FLOAT, seq INTEGER)"
        )
        conn.executemany(
            "INSERT INTO readings VALUES ('s', 'd', 'm', ?, ?, NULL)",
            [(1.0, 5.0), (1.0, 5.0), (2.0, 5.0)],
        )
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    async with Store(StoreConfig(path=path), Counters()) as s:
        assert await s.query("SELECT ts FROM readings ORDER BY ts") == [{"ts": 1.0}, {"ts": 2.0}]
        s.add_readings([Reading("s", "d", "m", 5.0, 2.0)])
        await s.flush()
        assert await s.query("SELECT count(*) AS n FROM readings") == [{"n": 2}]


def test_a_readings_message_id_is_the_same_after_a_restart() -> None:
    before, after = MessageIds(), MessageIds()  # two boots
    with_seq = Reading("s", "d", "m", 1.5, NOW, 7)
    no_seq = Reading("s", "d", "m", 1.5, NOW)
    assert before.for_record(with_seq, "p", "up") == after.for_record(with_seq, "p", "up")
    assert before.for_record(no_seq, "p", "up") == after.for_record(no_seq, "p", "up")
    ids = {
        before.for_record(with_seq, "p", "up"),
        before.for_record(no_seq, "p", "up"),
        before.for_record(with_seq, "p2", "up"),
        before.for_record(with_seq, "p", "up2"),
        before.for_record(Reading("s", "d", "m", 1.5, NOW, 8), "p", "up"),
    }
    assert len(ids) == 5


def test_aggregates_get_a_fresh_id_each() -> None:
    ids = MessageIds()
    agg = Aggregate("p", "w", "d", "m", 0.0, 1.0, 1)
    assert ids.for_record(agg, "p", "up") != ids.for_record(agg, "p", "up")


# ------------------------------------------------------------------ bounded outbox and store

ALERT, AGG, READING = 0, 1, 2


def bounded(tmp_path: Path, counters: Counters, **config: object) -> Store:
    return Store(StoreConfig(path=tmp_path / "b.db", **config), counters, lambda: NOW)  # type: ignore[arg-type]


async def test_a_full_outbox_drops_the_oldest_readings_first_and_alerts_last(
    tmp_path: Path,
) -> None:
    counters = Counters()
    drops: list[tuple[str, int]] = []
    async with bounded(tmp_path, counters, outbox={"max_rows": 4}) as store:
        store.on_first_drop = lambda counter, n: drops.append((counter, n))
        for i in range(3):
            store.add_outbox("up", f"alert{i}", "a", b"!", 1, ALERT)
        for i in range(5):
            store.add_outbox("up", f"r{i}", "r", b"1", 1, READING)
        await store.flush()
        store.add_outbox("up", "r5", "r", b"1", 1, READING)
        await store.flush()
        kept = [r.msg_id for r in await store.outbox_take("up", 100)]
    assert kept == ["alert0", "alert1", "alert2", "r5"]  # alerts first, newest reading kept
    assert counters.get("store", "outbox_dropped") == 5
    assert drops == [("outbox_dropped", 4)]  # the first drop raised the alert, once


async def test_reject_new_keeps_what_is_queued(tmp_path: Path) -> None:
    counters = Counters()
    async with bounded(
        tmp_path, counters, outbox={"max_rows": 3, "overflow": "reject_new"}
    ) as store:
        for i in range(3):
            store.add_outbox("up", f"old{i}", "r", b"1", 1, READING)
        await store.flush()
        store.add_outbox("up", "new0", "r", b"1", 1, READING)
        store.add_outbox("up", "alert", "a", b"!", 1, ALERT)
        await store.flush()
        kept = [r.msg_id for r in await store.outbox_take("up", 100)]
    assert kept == ["alert", "old0", "old1"]
    assert counters.get("store", "outbox_dropped") == 2


async def test_the_outbox_byte_limit_counts_payload_bytes(tmp_path: Path) -> None:
    counters = Counters()
    async with bounded(tmp_path, counters, outbox={"max_bytes": 2048}) as store:
        for i in range(4):
            store.add_outbox("up", f"m{i}", "r", b"x" * 1000, 1, READING)
        await store.flush()
        assert [r.msg_id for r in await store.outbox_take("up", 100)] == ["m2", "m3"]
        await store.outbox_ack([r.id for r in await store.outbox_take("up", 1)])
        store.add_outbox("up", "m4", "r", b"x" * 1000, 1, READING)
        await store.flush()  # the ack freed room: nothing more is dropped
        assert [r.msg_id for r in await store.outbox_take("up", 100)] == ["m3", "m4"]
    assert counters.get("store", "outbox_dropped") == 2


async def test_pending_items_are_bounded_while_commits_fail(tmp_path: Path) -> None:
    counters = Counters()
    drops: list[tuple[str, int]] = []
    store = bounded(tmp_path, counters, max_pending=100)
    async with store:
        store.on_first_drop = lambda counter, n: drops.append((counter, n))
        with sqlite3.connect(tmp_path / "b.db") as conn:
            conn.execute(
                "CREATE TRIGGER full BEFORE INSERT ON readings BEGIN SELECT json('{'); END"
            )
        conn.close()
        store.add_outbox("up", "alert", "a", b"!", 1, ALERT)
        for i in range(250):
            store.add_readings([reading(i, i)])
        assert store.pending <= 100
        dropped = counters.get("store", "pending_dropped")
        assert dropped == 251 - store.pending
        assert [counter for counter, _ in drops] == ["pending_dropped"]
        with sqlite3.connect(tmp_path / "b.db") as conn:
            conn.execute("DROP TRIGGER full")
        conn.close()
        await store.flush()
        seqs = [r["seq"] for r in await store.query("SELECT seq FROM readings ORDER BY seq")]
        assert seqs == list(range(250 - len(seqs), 250))  # the newest were kept
        assert [r.msg_id for r in await store.outbox_take("up", 10)] == ["alert"]


def test_the_status_line_reports_drops_by_policy() -> None:
    counts = {("fleet", "readings"): 10, ("store", "outbox_dropped"): 4}
    assert status_line(counts, {"up": 2}) == (
        "fleet: 10 readings; outbox up: 2; dropped by policy: outbox_dropped 4"
    )
    assert "dropped" not in status_line({("fleet", "readings"): 10}, {"up": 0})


async def test_overflow_spares_the_rows_a_sink_is_sending(tmp_path: Path) -> None:
    counters = Counters()
    async with bounded(tmp_path, counters, outbox={"max_rows": 3}) as store:
        for i in range(3):
            store.add_outbox("up", f"r{i}", "r", b"1", 1, READING)
        await store.flush()
        in_flight = await store.outbox_take("up", 2)
        for i in range(3, 5):
            store.add_outbox("up", f"r{i}", "r", b"1", 1, READING)
        await store.flush()
        assert [r.msg_id for r in await store.outbox_take("up", 100)] == ["r0", "r1", "r4"]
        assert [r.msg_id for r in in_flight] == ["r0", "r1"]
    assert counters.get("store", "outbox_dropped") == 2


async def test_a_closed_intake_counts_what_it_turns_away_and_never_confirms(
    store: Store,
) -> None:
    counters = Counters()
    intake = Intake(store, {}, counters, lambda: NOW)
    intake.open = False
    confirmed: list[int] = []
    intake.accept([reading(1, 1), reading(2, 2)])
    intake.when_committed(lambda: confirmed.append(1))
    await store.flush()
    assert counters.get("mqtt", "dropped_at_shutdown") == 2
    assert confirmed == []  # so an MQTT message is not acknowledged, and comes back


def test_a_silent_source_raises_one_alert_and_clears_it_when_it_speaks_again() -> None:
    now = [NOW]
    last_seen: dict[str, float] = {}
    alerts: list[tuple[str, str]] = []
    watch = SilenceWatch(
        {"boiler": 30.0},
        last_seen,
        lambda a: alerts.append((a.device, a.state)),
        lambda: now[0],
    )
    now[0] += 29
    watch.check()
    assert alerts == []
    now[0] += 2
    watch.check()
    watch.check()
    assert alerts == [("boiler", "raised")]  # once per silence
    last_seen["boiler"] = now[0]
    now[0] += 1
    watch.check()
    assert alerts == [("boiler", "raised"), ("boiler", "cleared")]


class RecordingIntake:
    """The intake protocol, keeping what it is given."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.rejected: list[str] = []

    def accept(self, readings: list[Reading]) -> None:
        self.readings += readings

    def reject(self, source: str, reason: str, detail: str, raw: bytes) -> None:
        self.rejected.append(reason)

    def when_committed(self, callback: Callable[[], None]) -> None:
        callback()


def test_mqtt_topics_are_matched_once_and_remembered() -> None:
    config = MqttSourceConfig.model_validate(
        {"type": "mqtt", "id": "fleet", "topics": ["sensors/{device}/{metric}"]}
    )
    source = MqttSource(config, "gw")
    intake = RecordingIntake()
    decoding = Decoding("fleet", build_decoder(config.format), intake)
    for value in (1, 2):
        source.route(decoding, intake, b"sensors/p1/temp", b'{"value": %d, "ts": 1}' % value)
    source.route(decoding, intake, b"other/p1", b'{"value": 3, "ts": 1}')
    source.route(decoding, intake, b"other/p1", b'{"value": 3, "ts": 1}')
    assert [(r.device, r.metric, r.value) for r in intake.readings] == [
        ("p1", "temp", 1.0),
        ("p1", "temp", 2.0),
    ]
    assert intake.rejected == ["unexpected_topic", "unexpected_topic"]
