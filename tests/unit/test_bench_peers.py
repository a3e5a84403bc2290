"""The peers' configurations do the forward job, and a peer that cannot run says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.bench.peers import PeerUnavailable, make_peer, node_red_flows, thingsboard_config


def test_node_red_flow_is_wired_in_to_out_through_json_and_a_filter() -> None:
    flows = {node["id"]: node for node in node_red_flows(1883, 1884, 1)}
    chain, node = [], flows["in"]
    while True:
        chain.append(node["type"])
        if not node["wires"]:
            break
        (targets,) = node["wires"]
        node = flows[targets[0]]
    assert chain == ["mqtt in", "json", "switch", "change", "mqtt out"]
    brokers = {flows[n]["broker"]: flows[n]["qos"] for n in ("in", "out")}
    assert {flows[b]["port"] for b in brokers} == {"1883", "1884"}
    assert set(brokers.values()) == {"1"}


def test_thingsboard_reads_the_local_broker_and_sends_upstream_at_the_qos() -> None:
    config = thingsboard_config(1883, 1884, 0)
    main, connector = config["tb_gateway.json"], config["mqtt.json"]
    assert (main["thingsboard"]["port"], main["thingsboard"]["qos"]) == (1884, 0)
    assert main["connectors"][0]["configuration"] == "mqtt.json"
    assert connector["broker"]["port"] == 1883
    assert [m["subscriptionQos"] for m in connector["mapping"]] == [0]


def test_node_red_without_node_is_unavailable_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no node, no npm
    monkeypatch.setenv("EDGE_GATEWAY_BENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PeerUnavailable, match="node is not installed"):
        make_peer("node-red", tmp_path, 1, 2, 0, None, print)  # type: ignore[arg-type]
    with pytest.raises(PeerUnavailable, match="unknown peer"):
        make_peer("kuiper", tmp_path, 1, 2, 0, None, print)  # type: ignore[arg-type]
