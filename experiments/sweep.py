"""Run one study: `python experiments/sweep.py --config experiments/configs/<study>.yaml`.

Without --config it runs the quickstart on scikit-learn's digits, offline, on a
local Ray started in-process. See `--help` for --smoke, --address, --name.
"""

import sys

from raytune_ctr.cli import sweep_main

if __name__ == "__main__":
    sys.exit(sweep_main(prog="sweep.py"))
