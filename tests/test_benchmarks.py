"""Every benchmark runs end to end with --smoke (tiny, on the CPU where there is no
GPU), so a change that breaks one is found here, not on the lent GPU machine. The
figures of a smoke run mean nothing; only that the script ran and printed them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path("/usr/share/datasets/fashion-mnist")
# load.py runs in tests/test_load.py, at 30 trials.
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")
                 if not p.stem.startswith("_") and p.stem != "load")
EXTRA = {"gpu_speed": ["--data-dir", str(FASHION)]}


def _needs(name: str):
    if name == "gpu_speed" and not FASHION.is_dir():
        pytest.skip(f"gpu_speed's stock side reads Fashion-MNIST's IDX files: none in {FASHION} "
                    "(apt-get install dataset-fashion-mnist)")
    if name in ("container_overhead", "preemption"):
        docker = pytest.importorskip("docker")
        try:
            docker.from_env().images.get("raytune-ctr:latest")
        except Exception as err:
            pytest.skip(f"{name} needs a Docker engine and the image: {type(err).__name__}")


@pytest.mark.ray
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.docker)
                                  if n in ("container_overhead", "preemption") else n
                                  for n in SCRIPTS])
def test_benchmark_smoke(name, tmp_path):
    _needs(name)
    out = tmp_path / "out.json"
    args = [sys.executable, f"benchmarks/{name}.py", "--smoke", *EXTRA.get(name, [])]
    text = (ROOT / "benchmarks" / f"{name}.py").read_text()
    if '"--out"' in text:
        args += ["--out", str(out)]
    elif '"--out-dir"' in text:
        args += ["--out-dir", str(tmp_path)]
        out = tmp_path / "p5.json"
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=os.environ | {"PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if '"--out' in text:
        assert json.loads(out.read_text())["date"]
