"""The benchmark must not rot: run every workload of benchmarks/run.py --quick
at small sizes as a subprocess (~10 s) and check the shape of its JSON. No timing assertion
(CONTRACT §6: performance is measured by benchmarks/, never a timed test).
Peers that are not installed are skipped by the benchmark itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from workloads import WORKLOADS  # noqa: E402


def test_quick_benchmark_writes_expected_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, RUN, "--quick", "--sizes", "1000,10000",
         "--repeats", "2", "--out", str(out), "--tmp", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CONTRACT §6 targets" in proc.stdout
    res = json.loads(out.read_text())
    assert set(res) >= {"meta", "workloads", "checks", "profiles"}
    meta = res["meta"]
    assert meta["quick"] is True and meta["sizes"] == [1000, 10000] and meta["repeats"] == 2
    assert {"nproc", "cpu_model", "python"} <= set(meta["machine"])
    assert set(res["workloads"]) == set(WORKLOADS)
    for name, wl in res["workloads"].items():
        assert "error" not in wl, (name, wl.get("error"))
        assert {"title", "rows", "notes", "checks", "seconds"} <= set(wl)
        assert wl["rows"], name
        for row in wl["rows"]:
            assert {"label", "system", "unit", "median", "min", "max", "spread_pct", "runs",
                    "ratio", "ratio_to"} <= set(row)
            # (a wait or a collector pass that did not happen reads 0)
            assert row["median"] is not None and row["median"] >= 0
        assert any(row["median"] > 0 for row in wl["rows"]), name
    systems = {r["system"] for r in res["workloads"]["get"]["rows"]}
    assert "logkv" in systems
    growth = [r for r in res["workloads"]["growth"]["rows"] if r["system"] == "logkv"]
    assert sorted(r["size"] for r in growth) == [1000, 10000]
    for c in res["checks"]:
        assert {"figure", "target", "measured", "met", "detail"} <= set(c)
    # a peer that is not installed is skipped with a note, not an error
    for dist in ("aiodict", "pickledb", "diskcache"):
        if meta["versions"].get(dist) == "not installed":
            assert any(dist.lower() in n.lower() for n in meta["notes"])
