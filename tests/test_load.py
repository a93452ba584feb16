"""The load benchmark in small (benchmarks/load.py --trials 30): a random search
with 2-worker trials and ASHA stops, on a Ray head that outlives it. No trial lost
or failed, no placement group, actor or process of any trial left behind, and
trials of either size served by the same few processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.ray
def test_thirty_trials_lose_nothing_and_leave_nothing(tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, "benchmarks/load.py", "--trials", "30", "--every", "2",
                           "--cpus", "2",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=1200, env=os.environ.copy())
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["lost"] == 0 and result["trials_in_table"] == 30, result["statuses"]
    assert set(result["statuses"]) <= {"COMPLETED", "STOPPED"}, result["statuses"]
    assert result["statuses"].get("STOPPED", 0) >= 1  # ASHA stopped some
    assert result["two_worker_trials"] >= 1
    assert result["leftovers"] == {"placement groups": [], "actors": [], "processes": []}
    # One node: 1- and 2-worker trials take over each other's process (gate.py), so
    # about one per trial running at once, not a fresh one at each change of size.
    assert result["trace"]["trial_processes"] <= 4, result["trace"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve = result["memory_curve"]
    assert len(curve) >= 3 and curve[-1]["trials_done"] == 30
