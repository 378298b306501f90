"""``make bench``: every bench script at its ``--quick`` size, then one table of figure, baseline and ratio.

    .venv/bin/python bench/run_all.py [--stack current|legacy] [--size quick|full] [--only NAME ...]
                                      [--lock /tmp/heavy.lock] [--results DIR] [--summary]

Each script measures its own baseline in the same run and reports through ``bench/figures.py`` into
``DIR/NAME.jsonl`` (kept between invocations), so the run can be split (``--only``: some scripts now, the rest
later, each holding ``--lock`` only while it runs) and ``--summary`` prints the table of everything measured.
The table is Markdown, what the README's benchmark section is rewritten from. ~20 minutes on 2 cores in all.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, get_args

from figures import FIGURES_ENV, Figure, read

BENCH = Path(__file__).resolve().parent
Stack = Literal["current", "legacy"]
Size = Literal["quick", "full"]
log = logging.getLogger("bench.run_all")


@dataclasses.dataclass(frozen=True)
class Script:
    """One bench script: its name in bench/, the stacks it runs on, whether it takes the lock per part, and the
    quick-size flags of a script without ``--quick`` (input_pipeline.py, whose owner sizes it)."""

    name: str
    stacks: tuple[Stack, ...] = get_args(Stack)
    locks_itself: bool = False
    unsized_quick: tuple[str, ...] | None = None


SCRIPTS = (
    Script("partition_throughput"),
    Script("partition_vs_tfrecord"),
    Script("partition_overhead"),
    Script("jpeg_codecs"),
    Script("input_pipeline", unsized_quick=("--batches", "20", "--warmup", "4")),
    Script("augment_cost"),
    Script("train_step"),
    Script("mix_ema"),
    Script("launch"),
    Script("task_cpus"),
    Script("small_data", locks_itself=True),
    Script("horovod_vs_mwms", stacks=("legacy",)),
)


@contextlib.contextmanager
def held(lock: str | None) -> Iterator[None]:
    """flock ``lock`` (shared machines: one heavy job at a time) while the block runs; nothing when None."""
    if not lock:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_script(script: Script, size: Size, lock: str | None, results: Path) -> tuple[int, float]:
    """Run one script with its figures file fresh; returns (exit status, seconds)."""
    out = results / f"{script.name}.jsonl"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(BENCH / f"{script.name}.py")]
    if script.unsized_quick is None:
        cmd.append(f"--{size}")
    elif size == "quick":
        cmd += script.unsized_quick
    if script.locks_itself and lock:
        cmd += ["--lock", lock]
    env = {**os.environ, FIGURES_ENV: str(out), "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1")}
    with held(None if script.locks_itself else lock):
        log.info("=== %s: %s", script.name, " ".join(cmd))
        started = time.monotonic()
        rc = subprocess.run(cmd, env=env, check=False).returncode
        seconds = time.monotonic() - started
    log.info("=== %s: exit %d in %.0f s, %d figure(s)", script.name, rc, seconds, len(read(out)))
    return rc, seconds


def _cell(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def table(scripts: list[Script], results: Path) -> str:
    """The Markdown summary of every figure measured so far for these scripts."""
    rows = ["| script | figure | value | baseline (same run) | ratio | better | data shape |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for script in scripts:
        figures: list[Figure] = read(results / f"{script.name}.jsonl")
        if not figures:
            rows.append(f"| {script.name} | (no figures: not run, or it failed; see its output) | | | | | |")
        for f in figures:
            value, baseline = (f"{_cell(v)} {f.unit}".rstrip() for v in (f.value, f.baseline))
            rows.append(f"| {f.script} | {f.figure} | {value} | {f.baseline_name}: {baseline} | **{f.ratio:.2f}** "
                        f"| {f.better} | {f.shape} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", choices=get_args(Stack), default="current")
    parser.add_argument("--size", choices=get_args(Size), default="quick")
    parser.add_argument("--only", action="append", choices=[s.name for s in SCRIPTS], help="repeatable")
    parser.add_argument("--lock", help="flock this file while each script runs (/tmp/heavy.lock here)")
    parser.add_argument("--results", type=Path, default=Path("/tmp/bench-results"))
    parser.add_argument("--summary", action="store_true", help="print the table of figures already measured")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.results.mkdir(parents=True, exist_ok=True)
    scripts = [s for s in SCRIPTS if args.stack in s.stacks]
    chosen = [s for s in scripts if not args.only or s.name in args.only]
    failed = []
    if not args.summary:
        for script in chosen:
            rc, _ = run_script(script, args.size, args.lock, args.results)
            if rc:
                failed.append(script.name)
    print(f"\nmake bench summary (STACK={args.stack}, --{args.size}; figures from {args.results}):\n")
    print(table(scripts, args.results))
    if failed:
        log.error("failed: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
