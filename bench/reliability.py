"""The reliability suite, long tests included, and the figures it reached.

    python bench/reliability.py [PYTEST_ARGS...]

Runs every test in tests/reliability/ (the normal suite's and those marked slow: 20+ kills at
random moments and inside checkpoint writes, 1,000 mutated configs, 2,000 mutated images) and
prints what they counted: kills survived, resumes, configs fuzzed and refused, images fuzzed and
reported bad, hostile inputs refused. Exits with pytest's status. Extra arguments go to pytest
(e.g. `-x`, or `-k crash` for one family).
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# what the issue asks of the long suite: figure -> the least it must reach
TARGETS = {"kills": 20, "configs_fuzzed": 1000, "images_fuzzed": 2000}
LABELS = {
    "kills": "kill -9 (at random, inside a save, before the first checkpoint)",
    "resumes": "resumes, each ending with the uninterrupted run's weights",
    "configs_fuzzed": "mutated configs through dltool config and shapes",
    "config_refusals": "  runs of config or shapes on them refused, each with one line (exit 2)",
    "images_fuzzed": "mutated images through predict and a training run",
    "bad_images": "  of which reported bad (each once)",
    "hostile_inputs": "hostile files and configs refused, no payload run",
}


def run_suite(extra: list[str]) -> tuple[int, dict[str, int], float]:
    """(pytest's exit status, the figures the tests recorded, seconds) for the whole reliability suite."""
    with tempfile.TemporaryDirectory() as folder:
        figures_file = Path(folder) / "figures.jsonl"
        env = {**os.environ, "DLTOOL_RELIABILITY_FIGURES": str(figures_file)}
        command = [sys.executable, "-m", "pytest", "-q", "-m", "slow or not slow", "tests/reliability", *extra]
        start = time.perf_counter()
        status = subprocess.call(command, cwd=ROOT, env=env)
        seconds = time.perf_counter() - start
        totals: dict[str, int] = collections.Counter()
        if figures_file.exists():
            for line in figures_file.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                totals[entry["figure"]] += entry["amount"]
    return status, dict(totals), seconds


def main() -> None:
    status, totals, seconds = run_suite(sys.argv[1:])
    print(f"\nreliability suite: {'passed' if status == 0 else f'FAILED (pytest exit {status})'} in {seconds / 60:.1f} min")
    for figure, label in LABELS.items():
        amount = totals.get(figure, 0)
        target = TARGETS.get(figure)
        verdict = "" if target is None else f"   (target >= {target:,}: {'ok' if amount >= target else 'under target'})"
        print(f"{amount:>8,}  {label}{verdict}")
    sys.exit(status)


if __name__ == "__main__":
    main()
