"""The benchmark's report (benchmarks/sync_scale.py) on made-up figures: its rounds, ratios
and target checks. The benchmark itself runs against the emulator, never in the tests."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sync_scale.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sync_scale", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _round(full: float, rss: float = 150.0, cpu: float | None = None) -> dict[str, dict]:
    walls = {"raw": 1.0, "floor": 1.2, "full": full, "unchanged": full * 0.6, "delta": full / 25}
    return {
        name: {"wall": wall, "records": 1000, "rss": rss, "cpu": cpu or wall * 0.9,
               "emulator_cpu": 0.5}
        for name, wall in walls.items()
    }  # fmt: skip


def test_the_report_takes_medians_and_checks_every_target_with_the_throttled_run(
    bench, tmp_path, capsys
):
    rounds = [_round(3.0), _round(1.5, rss=260.0, cpu=9.0), _round(1.7)]
    rounds[2]["full"]["emulator_cpu"] = None  # a round measured off Linux
    rows, ratio = bench.combine(rounds), bench.ratios(rounds)
    assert rows["full"]["wall"] == 1.7 and rows["full"]["walls"] == [3.0, 1.5, 1.7]
    assert rows["full"]["cpu"] == pytest.approx(2.7)  # the median: 2.7, 9.0, 1.53
    assert rows["full"]["emulator_cpu"] == 0.5
    assert rows["full"]["rss"] == 260.0  # the highest of any round
    assert ratio["full/floor"] == pytest.approx(1.7 / 1.2)  # the median of the rounds' own
    throttled = {
        "customers": 50, "budget": {"requests": 1, "window_seconds": 2.0}, "wall": 30.0,
        "records": 100, "busiest_tenant_requests": 14, "busiest_tenant_least_seconds": 26.0,
        "ratio": 30.0 / 26.0, "graph_requests": 600, "throttled": 0, "wasted": 0,
    }  # fmt: skip
    args = argparse.Namespace(latency_ms=0, customers=100, users=2000, devices=1000,
                              rss_baseline=None)  # fmt: skip
    checks = {c["target"]: c for c in bench.check_targets(args, rows, ratio, throttled)}
    assert checks["throttled 50-tenant sync <= 1.3 x the busiest tenant's budget time"]["met"]
    assert checks["no request wasted on a retry the budget made certain to fail"]["met"]
    assert checks["full <= 1.5 x floor (no added latency)"]["value"] == 1.417
    assert checks["full <= 1.5 x floor (no added latency)"]["met"]
    assert checks["unchanged <= 0.7 x full (no added latency)"]["met"]
    assert not checks["full peak RSS <= 250 MB at 100 x 2,000 x 1,000"]["met"]
    bench.print_report(rows, ratio, list(checks.values()), throttled)
    printed = capsys.readouterr().out
    assert "throttled: 50 tenants" in printed and "MISSED" in printed
    [full_line] = [line for line in printed.splitlines() if line.startswith("full ")]
    assert full_line.split()[1:4] == ["1.70", "2.70", "0.50"]  # wall, CPU, emulator CPU

    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps({"size": {"users": 1000}, "rows": {"full": {"rss": 200.0}}}))
    args.users, args.rss_baseline = 10000, str(baseline)
    growth = bench.check_targets(args, rows, ratio)[-1]
    assert growth["value"] == 1.3 and not growth["met"]


def test_process_cpu_reads_a_processes_cpu_seconds_or_none(bench):
    import os
    import time

    if not Path(f"/proc/{os.getpid()}/stat").exists():
        pytest.skip("no /proc: the benchmark leaves the emulator's CPU out")
    before = bench.process_cpu(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # spend 0.3 s of CPU
        pass
    after = bench.process_cpu(os.getpid())
    assert before is not None and after is not None
    assert 0.2 <= after - before <= 5.0  # clock ticks of 10 ms: about 0.3 s, not exactly
    assert bench.process_cpu(2**22 + 1) is None  # above Linux's largest PID: none such
