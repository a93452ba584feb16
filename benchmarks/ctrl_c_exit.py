"""Ctrl-C at the end: `python experiments/sweep.py` as a user runs it, sent SIGINT (to
its whole process group, as a terminal does) the moment its final tables are
written, while the report is built and the pools stop. Records the seconds from
the signal to the exit, the exit code and the last line.

    python benchmarks/ctrl_c_exit.py [--runs 3] [--out FILE]
    python benchmarks/ctrl_c_exit.py --smoke   # one run of the sweep's own --smoke
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from _common import SMOKE, emit, sweep_command

ROOT = Path(__file__).resolve().parent.parent


def once(smoke: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd, env, trace = sweep_command(tmp, *(["--smoke"] if smoke else []))
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        while proc.poll() is None and not (
                trace.is_file() and '"tables_written"' in trace.read_text()):
            time.sleep(0.05)
        if proc.poll() is not None:
            raise SystemExit(f"the sweep ended before its tables:\n{proc.stdout.read()[-3000:]}")
        t0 = time.time()
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=300)
        exit_s = time.time() - t0
    return {"exit_s": round(exit_s, 2), "returncode": proc.returncode,
            "last_line": out.strip().splitlines()[-1] if out.strip() else ""}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--smoke", action="store_true", help=SMOKE)
    args = p.parse_args()
    runs = [once(args.smoke) for _ in range(1 if args.smoke else args.runs)]
    emit({"runs": runs}, args.out)


if __name__ == "__main__":
    main()
