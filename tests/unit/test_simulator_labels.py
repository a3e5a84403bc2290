"""Ground truth of the simulators' injected defects, and the evaluation that uses it."""

from __future__ import annotations

from gateway.tools import sim_eval
from simulators.signals import ReadingSource, parse_fault


def test_labels_give_one_episode_per_fault_and_one_per_spike_hit() -> None:
    faults = [
        parse_fault("stuck:device=dev-1,at=100s,for=50s"),
        parse_fault("dropout:device=dev-2,at=150s"),
        parse_fault("spike:device=dev-2,prob=0.2"),
        parse_fault("drift:device=dev-3,at=10m,rate=1"),  # starts after the run: no label
    ]
    source = ReadingSource(
        ("dev-1", "dev-2", "dev-3"), ("temperature",), start_ts=1000.0, faults=faults
    )
    values: dict[tuple[str, float], float | None] = {}
    for k in range(30):
        for _ in range(3):
            device, _metric = source.peek()
            r = source.take(1000.0 + 10 * k)
            values[(device, 1000.0 + 10 * k)] = None if r is None else r.value
    labels = source.labels(1290.0)
    episodes = [
        (x["device"], x["kind"], x["start"], x["end"]) for x in labels if x["kind"] != "spike"
    ]
    assert episodes == [("dev-1", "stuck", 1100.0, 1150.0), ("dev-2", "dropout", 1150.0, 1290.0)]
    spikes = [x["start"] for x in labels if x["kind"] == "spike"]
    assert spikes
    assert all(float(t) < 1150.0 for t in spikes)  # no samples, no spikes, once dropped out
    assert len({values[("dev-1", t)] for t in range(1100, 1150, 10)}) == 1  # really stuck


def test_sim_eval_reports_recall_per_defect_kind(capsys: object) -> None:
    code = sim_eval.main(
        [
            "--devices",
            "3",
            "--days",
            "1",
            "--fault",
            "stuck:device=dev-01,at=12h,for=2h",
            "--fault",
            "dropout:device=dev-02,at=14h,for=1h",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert rows["stuck"][1:4] == ["1", "1", "1.00"]
    assert rows["dropout"][1:4] == ["1", "1", "1.00"]
    assert rows["none"][4] == "0"  # no false alarm on the clean device
