"""Tier 2's process: `python -m raytune_ctr.function mypkg.train:run` calls the user's
training function with the trial's configuration. script.py starts it once, or on
every rank under torchrun; with several ranks the process group is up before the
function runs, and every rank reads the same configuration file, written before
any rank started.
"""

from __future__ import annotations

import os
import sys

from raytune_ctr import reporter, usercode


def main(path: str) -> None:
    config = reporter.config()
    fn = usercode.resolve(path, "train.function")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch
        import torch.distributed as dist

        if config.get("use_gpu"):
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if config.get("use_gpu") else "gloo")
    try:
        reporter.start()
        fn(config)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
