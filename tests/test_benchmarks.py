"""Each benchmark script runs with --quick and prints JSON with its documented keys.

Marked slow: deselect with ``-m "not slow"``. The tests check structure, never timings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(name: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_env_throughput_quick():
    out = _run("env_throughput")
    assert out["benchmark"] == "env_throughput" and out["cotrain"] is False
    assert [r["num_envs"] for r in out["rows"] if r["device"] == "cpu"] == [1, 64]
    for row in out["rows"]:
        assert {"device", "num_envs", "batched_sps", "sync_sps", "speedup"} <= set(row)
        assert row["batched_sps"] > 0 and row["sync_sps"] > 0
        assert row["speedup"] == pytest.approx(row["batched_sps"] / row["sync_sps"])


def test_backward_quick():
    out = _run("backward")
    assert out["benchmark"] == "backward"
    modes = {(r["mode"], r["forward_iterations"]) for r in out["rows"]}
    assert modes == {(m, k) for m in ("unrolled", "implicit", "phantom") for k in (10, 30)}
    for row in out["rows"]:
        assert {"seconds", "backward_seconds", "memory_bytes", "memory_kind", "time_vs_unrolled", "backward_time_vs_unrolled", "memory_vs_unrolled", "cosine_to_unrolled"} <= set(row)
        if row["mode"] == "implicit":
            # the implicit gradient is the unrolled one, up to the solvers' tolerances
            assert row["cosine_to_unrolled"] > 0.999 and row["adjoint_iterations"] >= 1
        if row["mode"] == "unrolled":
            assert row["memory_vs_unrolled"] == 1.0


def test_warmup_paths_quick():
    out = _run("warmup_paths")
    assert out["epochs"] == 2 and [r["stop_prob"] for r in out["rows"]] == [0.0, 1.0]
    for row in out["rows"]:
        for path in ("plain", "fpi_L1", "fpi_L1_L2", "fpi_all"):
            assert 0 <= row[f"{path}_accuracy"] <= 1
        assert row["plain_compute"] == pytest.approx(1.0)
        assert row["fpi_all_compute"] > row["fpi_L1_compute"] > 1.0
