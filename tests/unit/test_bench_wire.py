"""The benchmark's MQTT framing: packets it builds are split back into the same fields."""

from __future__ import annotations

import pytest

from gateway.bench import wire


@pytest.mark.parametrize("payload_size", [0, 5, 126, 127, 200, 16_383, 16_384, 70_000])
@pytest.mark.parametrize("qos", [0, 1])
def test_publish_packets_round_trip(payload_size: int, qos: int) -> None:
    payload = bytes(range(256)) * (payload_size // 256) + b"x" * (payload_size % 256)
    packet = wire.publish_packet(b"bench/dev-1/temp", payload, qos, 513 if qos else 0)
    first, body = packet[0], packet[1:]
    # skip the remaining-length bytes, checking they encode the body's length
    length, shift, i = 0, 0, 0
    while True:
        length |= (body[i] & 0x7F) << shift
        i += 1
        if not body[i - 1] & 0x80:
            break
        shift += 7
    assert length == len(body) - i
    topic, got, got_qos, packet_id = wire.split_publish(first, body[i:])
    assert (topic, got, got_qos, packet_id) == (
        b"bench/dev-1/temp",
        payload,
        qos,
        513 if qos else 0,
    )
