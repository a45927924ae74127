"""`python pause_in_save.py SECONDS ARGS...` runs `python -m dltool ARGS...` with every checkpoint save
holding its complete temp file for SECONDS before the rename, so that a test's kill -9 can land inside
the save. The pause is injected here, in the child process; dltool itself has no such hook."""

from __future__ import annotations

import os
import runpy
import sys
import time


def pause_before_checkpoint_renames(seconds: float) -> None:
    """Make each rename onto a `.pt` file (the last step of `save_checkpoint`) wait `seconds` first."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.fspath(dst).endswith(".pt"):
            time.sleep(seconds)
        return real(src, dst, *args, **kwargs)

    os.replace = replace


if __name__ == "__main__":
    pause_before_checkpoint_renames(float(sys.argv[1]))
    sys.path[0] = os.getcwd()  # where `python -m dltool` finds dltool, not this script's folder
    sys.argv = ["dltool", *sys.argv[2:]]
    runpy.run_module("dltool", run_name="__main__", alter_sys=True)
