"""TLS, mutual TLS and password auth against a real mosquitto, with certificates made in the
test: good credentials connect; a wrong CA, an expired or foreign client certificate and a
wrong password are refused; in the daemon each refusal (of a sink or a source) is logged
with its reason, the refused sink's breaker opens while readings keep being stored, and a
reload with the right password drains the outbox."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from gateway.config.mqtt import MqttBroker, tls_context
from simulators.mqtt_fleet import run_fleet
from tests.conftest import MOSQUITTO, Broker, _wait_listening, free_port
from tests.integration.certs import Authority, Issued
from tests.integration.harness import GatewayProcess, gateway_config, wait_until

pytestmark = [
    pytest.mark.integration,
    # aiomqtt/paho leave the socket of a refused TLS handshake to the garbage collector.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"


@dataclass
class Pki:
    ca: Authority
    other_ca: Authority
    server: Issued
    client: Issued
    expired_client: Issued
    foreign_client: Issued


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = Authority(tmp_path, "test-ca")
    other = Authority(tmp_path, "other-ca")
    return Pki(
        ca,
        other,
        ca.issue("server", "localhost", server=True),
        ca.issue("client", "gw-test", server=False),
        ca.issue("expired", "gw-test", server=False, expired=True),
        other.issue("foreign", "gw-test", server=False),
    )


@dataclass
class SecureBroker:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


def start_broker(
    workdir: Path, pki: Pki, *, mutual: bool, users: dict[str, str] | None
) -> SecureBroker:
    port = free_port()
    lines = [
        "per_listener_settings false",
        f"listener {port} 127.0.0.1",
        f"cafile {pki.ca.path}",
        f"certfile {pki.server.cert}",
        f"keyfile {pki.server.key}",
        f"require_certificate {'true' if mutual else 'false'}",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "user root" if os.geteuid() == 0 else "",
    ]
    if users:
        passwd = workdir / f"passwd-{port}"
        for i, (user, password) in enumerate(users.items()):
            flags = ["-b", "-c"] if i == 0 else ["-b"]
            subprocess.run([MOSQUITTO_PASSWD, *flags, str(passwd), user, password], check=True)
        passwd.chmod(0o600)
        lines += ["allow_anonymous false", f"password_file {passwd}"]
    else:
        lines += ["allow_anonymous true"]
    conf = workdir / f"mosquitto-tls-{port}.conf"
    conf.write_text("\n".join(lines) + "\n")
    log = workdir / f"mosquitto-tls-{port}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=out, stderr=out)
    _wait_listening(port, proc)
    return SecureBroker(port, proc, log)


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[SecureBroker]]:
    started: list[SecureBroker] = []
    yield started
    for b in started:
        b.proc.terminate()
        try:
            b.proc.wait(5)
        except subprocess.TimeoutExpired:
            b.proc.kill()
            b.proc.wait()


def settings(port: int, tls: dict[str, Any] | None, **auth: str) -> MqttBroker:
    return MqttBroker.model_validate({"host": "127.0.0.1", "port": port, "tls": tls, **auth})


async def try_connect(broker: MqttBroker) -> str | None:
    """None if the broker accepted us, else the error text a user would see in the log."""
    client = aiomqtt.Client(
        broker.host,
        broker.port,
        identifier=f"tls-test-{os.getpid()}",
        username=broker.username,
        password=broker.password,
        tls_context=tls_context(broker),
        timeout=3,
    )
    try:
        async with client:
            await client.publish("t/ok", b"1", qos=1)
    except aiomqtt.MqttError as exc:
        return str(exc)
    return None


def mtls(pki: Pki, client: Issued, ca: Path | None = None) -> dict[str, Any]:
    return {
        "ca_file": str(ca or pki.ca.path),
        "cert_file": str(client.cert),
        "key_file": str(client.key),
    }


async def test_mutual_tls_with_password(
    tmp_path: Path, pki: Pki, brokers: list[SecureBroker]
) -> None:
    b = start_broker(tmp_path, pki, mutual=True, users={"gw": "right-pw"})
    brokers.append(b)
    secret = tmp_path / "pw"
    secret.write_text("right-pw\n")
    good = settings(b.port, mtls(pki, pki.client), username="gw", password_file=str(secret))
    assert await try_connect(good) is None

    # Hostname check: the certificate names 127.0.0.1 and localhost, not this name.
    wrong_name = MqttBroker.model_validate(
        {**good.model_dump(), "host": "127.0.0.2", "password": "right-pw", "password_file": None}
    )
    error = await try_connect(wrong_name)
    assert error is not None

    refusals = {
        "wrong CA": settings(
            b.port, mtls(pki, pki.client, pki.other_ca.path), username="gw", password="right-pw"
        ),
        "expired client certificate": settings(
            b.port, mtls(pki, pki.expired_client), username="gw", password="right-pw"
        ),
        "client certificate of another CA": settings(
            b.port, mtls(pki, pki.foreign_client), username="gw", password="right-pw"
        ),
        "no client certificate": settings(
            b.port, {"ca_file": str(pki.ca.path)}, username="gw", password="right-pw"
        ),
        "wrong password": settings(
            b.port, mtls(pki, pki.client), username="gw", password="wrong-pw"
        ),
    }
    errors = {case: await try_connect(broker) for case, broker in refusals.items()}
    assert all(errors.values()), errors
    assert "CERTIFICATE_VERIFY_FAILED" in str(errors["wrong CA"])
    assert "authoriz" in str(errors["wrong password"]).lower()


async def test_tls_min_version_is_enforced(
    tmp_path: Path, pki: Pki, brokers: list[SecureBroker]
) -> None:
    b = start_broker(tmp_path, pki, mutual=False, users=None)
    brokers.append(b)
    assert await try_connect(settings(b.port, {"ca_file": str(pki.ca.path)})) is None
    tls13 = settings(b.port, {"ca_file": str(pki.ca.path), "min_version": "1.3"})
    context = tls_context(tls13)
    assert context is not None
    assert context.minimum_version.name == "TLSv1_3"
    assert await try_connect(tls13) is None  # mosquitto 2 speaks TLS 1.3


def test_daemon_over_mtls_keeps_storing_while_upstream_refuses_then_reloads(
    tmp_path: Path, pki: Pki, brokers: list[SecureBroker]
) -> None:
    local = start_broker(tmp_path, pki, mutual=True, users={"gw": "local-pw", "fleet": "f-pw"})
    upstream = start_broker(tmp_path, pki, mutual=False, users={"plant-7": "up-pw"})
    brokers += [local, upstream]
    secrets = tmp_path / "credentials"
    secrets.mkdir()
    (secrets / "secrets_local-password").write_text("local-pw\n")
    (secrets / "secrets_upstream-password").write_text("not-the-password\n")
    config = gateway_config(
        tmp_path,
        sources=[
            {
                "id": "fleet",
                "type": "mqtt",
                "broker": {
                    "host": "127.0.0.1",
                    "port": local.port,
                    "username": "gw",
                    "password_file": str(secrets / "secrets_local-password"),
                    "tls": mtls(pki, pki.client),
                },
                "topics": ["sensors/{device}/{metric}"],
            }
        ],
        pipelines=[
            {
                "id": "stats",
                "from": ["fleet"],
                "steps": [{"window": {"size": "1s", "lateness": "200ms"}}],
                "to": ["upstream"],
                "forward": ["aggregates"],
            }
        ],
        upstream_port=upstream.port,
    )
    sink = config["sinks"][0]
    sink["broker"].update(
        username="plant-7",
        password_file=str(secrets / "secrets_upstream-password"),
        tls={"ca_file": str(pki.ca.path)},
    )
    sink["breaker"] = {"failures": 2, "cooldown": "1s"}
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    assert gw.proc is not None
    try:
        gw.wait_log("source fleet: subscribed")
        # The fleet simulator speaks plain MQTT: publish with paho over mTLS here.
        publish_over_mtls(local.port, pki, count=200)
        wait_until(lambda: gw.count("readings") >= 200, 20, "200 readings stored over mTLS")
        gw.wait_log("circuit breaker closed -> open")
        log = gw.log()
        assert "sink upstream: 127.0.0.1" in log
        assert "refused the connection" in log
        assert "authoriz" in log.lower()
        assert "not-the-password" not in log
        assert "local-pw" not in log
        wait_until(lambda: gw.count("outbox") > 0, 20, "aggregates waiting in the outbox")
        # The operator fixes the credential and reloads: the outbox drains.
        (secrets / "secrets_upstream-password").write_text("up-pw\n")
        os.kill(gw.proc.pid, signal.SIGHUP)
        gw.wait_log("reloaded: sinks upstream")  # pipelines untouched: same topics
        wait_until(lambda: gw.count("outbox") == 0, 30, "the outbox to drain")
        assert gw.stop() == 0
    finally:
        if gw.proc.poll() is None:
            gw.stop()


REFUSED_BY_TLS: dict[str, tuple[Callable[[Pki], dict[str, Any]], str]] = {
    # case: the sink's tls settings, and what the log line must name
    "wrong CA": (
        lambda pki: mtls(pki, pki.client, pki.other_ca.path),
        "CERTIFICATE_VERIFY_FAILED",
    ),
    "expired client certificate": (
        lambda pki: mtls(pki, pki.expired_client),
        "ALERT_CERTIFICATE_EXPIRED",
    ),
    "client certificate of another CA": (
        lambda pki: mtls(pki, pki.foreign_client),
        "ALERT_UNKNOWN_CA",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_BY_TLS))
def test_daemon_refused_by_upstream_tls_keeps_storing(
    tmp_path: Path, pki: Pki, brokers: list[SecureBroker], broker: Broker, case: str
) -> None:
    tls, reason = REFUSED_BY_TLS[case]
    secure = start_broker(tmp_path, pki, mutual=True, users=None)  # upstream, and a local one
    brokers.append(secure)
    fleet = {
        "id": "fleet",
        "type": "mqtt",
        "broker": {"host": "127.0.0.1", "port": broker.port},
        "topics": ["sensors/{device}/{metric}"],
    }
    guarded = {**fleet, "id": "guarded", "broker": {"port": secure.port, "tls": tls(pki)}}
    config = gateway_config(
        tmp_path,
        sources=[fleet, guarded],
        pipelines=[{"id": "raw", "from": ["fleet"], "to": ["upstream"], "forward": ["readings"]}],
        upstream_port=secure.port,
    )
    sink = config["sinks"][0]
    sink["broker"]["tls"] = tls(pki)
    sink["breaker"] = {"failures": 2, "cooldown": "1s"}
    sink["drain_timeout"] = "1s"
    gw = GatewayProcess(tmp_path, config)
    gw.start()
    assert gw.proc is not None
    try:
        run_fleet(broker.host, broker.port, devices=2, count=100, rate=1000)
        wait_until(lambda: gw.count("readings") >= 100, 20, "100 readings stored")
        gw.wait_log("sink upstream: circuit breaker closed -> open")
        # A line each, naming the broker and why (the TLS error, not just "no CONNACK"). Under
        # TLS 1.3 the broker rejects the client certificate after the client's handshake is
        # done: when the client's CONNECT reaches the closed socket first, the reset can
        # discard the alert, and that attempt sees a bare EOF; a later attempt names it.
        for who in ("sink upstream: ", "source guarded: broker "):

            def named(who: str = who) -> bool:
                return any(
                    who in line and reason in line and str(secure.port) in line
                    for line in gw.log().splitlines()
                )

            wait_until(named, 20, f"a {who!r} line naming {reason}")
        wait_until(lambda: gw.count("outbox") >= 100, 20, "the readings waiting in the outbox")
        assert gw.stop() == 0
    finally:
        if gw.proc.poll() is None:
            gw.stop()
    assert gw.count("readings") == 100
    assert gw.count("outbox") == 100  # kept for the next start


def publish_over_mtls(port: int, pki: Pki, count: int) -> None:
    import json
    import time

    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-mtls")
    client.username_pw_set("fleet", "f-pw")
    client.tls_set(str(pki.ca.path), str(pki.client.cert), str(pki.client.key))
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        now = time.time()
        for i in range(count):
            payload = {"value": 20.0 + i % 5, "ts": now + i * 0.01, "seq": i}
            client.publish(
                f"sensors/p{i % 4}/temperature", json.dumps(payload), qos=1
            ).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
