"""The publisher's own PUBLISH frames, packet ids and window, without a socket: frames match
paho's encoding byte for byte, ids never collide with paho's, the window holds rows back."""

from __future__ import annotations

import asyncio

import paho.mqtt.client as mqtt
import pytest

from gateway.sinks.forwarder import Outcome
from gateway.sinks.outbound import Outbound, Round, fixed_header
from gateway.store.store import OutboxRow


def _client(protocol: int = mqtt.MQTTv5) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol)
    client.on_socket_register_write = lambda *_: None  # paho queues without writing
    return client


class Wire:
    """Stands for the driver's write: takes every queued paho packet whole."""

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.sent = bytearray()
        self.outbound: Outbound | None = None

    def write(self) -> None:
        for packet in self.client._out_packet:
            self.sent += packet["packet"]
            packet["to_process"] = 0
        self.client._out_packet.clear()
        if self.outbound is not None:
            self.outbound.written()


def _outbound(client: mqtt.Client, window: int = 100, **kw: object) -> Outbound:
    options: dict[str, object] = {"retain": False, "max_packet": None, **kw}
    wire = Wire(client)
    outbound = Outbound(client, wire.write, receive_maximum=window, **options)  # type: ignore[arg-type]
    wire.outbound = outbound
    client.__dict__["wire"] = wire
    return outbound


def _round(n: int) -> Round:
    return Round(n, asyncio.get_running_loop().create_future())


def _row(i: int, qos: int = 1, payload: bytes = b"{}", topic: str = "site/gw/d/m") -> OutboxRow:
    return OutboxRow(i, f"m{i}", topic, payload, qos, 0)


def _written(client: mqtt.Client) -> bytes:
    """What was written since the last look (our wire, or paho's queue)."""
    wire: Wire | None = client.__dict__.get("wire")
    if wire is None:
        data = b"".join(bytes(p["packet"]) for p in client._out_packet)
        client._out_packet.clear()
        return data
    data, wire.sent = bytes(wire.sent), bytearray()
    return data


@pytest.mark.parametrize("remaining", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
def test_the_fixed_header_encodes_the_remaining_length_as_a_variable_byte_integer(
    remaining: int,
) -> None:
    header = fixed_header(0x32, remaining)
    value, shift = 0, 0
    for byte in header[1:]:
        value |= (byte & 0x7F) << shift
        shift += 7
    assert header[0] == 0x32
    assert value == remaining
    assert all(b & 0x80 for b in header[1:-1])
    assert not header[-1] & 0x80


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
@pytest.mark.parametrize("qos", [0, 1])
@pytest.mark.parametrize("retain", [False, True])
@pytest.mark.parametrize("size", [0, 10, 100, 120, 16_300, 16_400, 2_097_200])
async def test_frames_match_pahos_own_encoding(
    protocol: int, qos: int, retain: bool, size: int
) -> None:
    payload = bytes(range(256)) * (size // 256) + b"p" * (size % 256)
    topic = "site/gw/dévice/m"
    ours = _client(protocol)
    outbound = _outbound(ours, retain=retain)
    outbound._last_id = 4_660
    outbound.send(_round(1), [_row(0, qos, payload, topic)])

    paho = _client(protocol)
    paho._sock = object()  # type: ignore[assignment]  # queued, never sent
    paho._send_publish(4_661, topic.encode(), payload, qos, retain)
    paho._sock = None
    assert _written(ours) == _written(paho)


async def test_our_packet_ids_and_pahos_never_collide() -> None:
    client = _client()
    outbound = _outbound(client, window=10)
    first = _round(10)
    outbound.send(first, [_row(i) for i in range(10)])
    assert sorted(outbound._pending) == list(range(1, 11))
    paho_id = client._mid_generate()  # e.g. a SUBSCRIBE paho sends
    assert paho_id not in outbound._pending
    for mid in range(1, 11):
        outbound.puback(mid, 0)
    outbound.send(_round(5), [_row(i) for i in range(10, 15)])
    assert paho_id not in outbound._pending
    assert first.done.result() == [Outcome.ACKED] * 10


async def test_ids_still_in_flight_are_skipped_after_the_wrap() -> None:
    client = _client()
    outbound = _outbound(client)
    outbound._last_id = 65_533
    outbound.send(_round(4), [_row(i) for i in range(4)])  # 65534, 65535, 1, 2
    assert sorted(outbound._pending) == [1, 2, 65_534, 65_535]
    outbound.puback(65_534, 0)
    outbound.puback(65_535, 0)
    outbound._last_id = 65_535  # as if 65,533 ids went by
    outbound.send(_round(2), [_row(i) for i in range(4, 6)])
    assert sorted(outbound._pending) == [1, 2, 3, 4]


async def test_the_window_holds_qos1_rows_back_in_order_until_pubacks_free_room() -> None:
    client = _client()
    outbound = _outbound(client, window=3)
    round_ = _round(6)
    rows = [_row(0), _row(1), _row(2), _row(3, qos=0), _row(4), _row(5)]
    outbound.send(round_, rows)
    # three QoS 1 rows fill the window; the QoS 0 row needs no slot; row 4 waits
    assert _written(client).count(b"{}") == 4
    assert round_.outcomes[3] is Outcome.ACKED  # QoS 0: acknowledged once written
    assert round_.outcomes[4] is None
    outbound.puback(1, 0)
    outbound.after_read()
    assert _written(client).count(b"{}") == 1  # row 4 took the freed slot; row 5 waits
    assert sorted(outbound._pending) == [2, 3, 4]
    outbound.puback(2, 0x87)  # not authorized
    outbound.after_read()
    assert _written(client).count(b"{}") == 1
    assert sorted(outbound._pending) == [3, 4, 5]
    assert round_.outcomes[:2] == [Outcome.ACKED, Outcome.REFUSED]


async def test_a_lost_connection_fails_rows_in_flight_waiting_and_unwritten() -> None:
    client = _client()
    outbound = _outbound(client, window=2)
    qos1, qos0 = _round(4), _round(2)  # the QoS 0 rows wait behind rows 2 and 3
    outbound.send(qos1, [_row(i) for i in range(4)])
    outbound.send(qos0, [_row(4, qos=0), _row(5, qos=0)])
    outbound.puback(1, 0)
    cut = _round(1)  # a QoS 0 row whose bytes a partial write left in paho's queue
    outbound._unwritten.append(({"to_process": 5}, cut, [0]))
    outbound.fail_all()
    assert cut.done.result() == [Outcome.UNCONFIRMED]
    assert qos1.done.result() == [Outcome.ACKED] + [Outcome.UNCONFIRMED] * 3
    assert qos0.done.result() == [Outcome.UNCONFIRMED] * 2
