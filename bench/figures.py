"""What every bench script reports, in one shape: a figure, the baseline it was measured against in the same
run, their ratio and the data shape, so that ``make bench`` (bench/run_all.py) can print one summary table.

Why a record and a file rather than parsing the scripts' output: each script keeps its own human-readable
lines, and the runner reads only what ``emit`` appends (one JSON object a line, written with the package's
``to_dict`` idiom) to the file named by ``$BENCH_FIGURES``, so rewording a line never breaks the table.

Sizes: ``parse_sized`` gives a script ``--quick`` (the small sizes ``make bench`` uses, about 20 minutes for
all scripts on 2 cores) and ``--full`` (the script's own defaults, what its docstring's figures were measured on).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from imagenet_spark.config import from_dict, to_dict

log = logging.getLogger("bench.figures")

FIGURES_ENV = "BENCH_FIGURES"
Better = Literal["higher", "lower"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Figure:
    """One measured figure and its same-run baseline (crosses the script -> runner process boundary)."""

    script: str
    figure: str
    value: float
    baseline_name: str
    baseline: float
    unit: str
    shape: str
    better: Better = "higher"

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")


def emit(figure: Figure) -> None:
    """Log the figure and, under ``make bench``, append it to the runner's figures file."""
    log.info("figure  %s: %s %.4g %s vs %s %.4g -> ratio %.3f (%s is better; %s)", figure.script, figure.figure,
             figure.value, figure.unit, figure.baseline_name, figure.baseline, figure.ratio, figure.better,
             figure.shape)
    target = os.environ.get(FIGURES_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps(to_dict(figure)) + "\n")


def read(path: Path) -> list[Figure]:
    """The figures a script appended (none if it wrote none)."""
    if not path.exists():
        return []
    return [from_dict(Figure, json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def parse_sized(parser: argparse.ArgumentParser, quick: Mapping[str, Any],
                argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse with ``--quick`` (these defaults) or ``--full`` (the parser's own); explicit flags win either way."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true",
                       help="the small sizes make bench uses: " + ", ".join(f"{k}={v}" for k, v in quick.items()))
    group.add_argument("--full", action="store_true", help="the script's own defaults (the default)")
    known, _ = parser.parse_known_args(argv)
    if known.quick:
        parser.set_defaults(**quick)
    return parser.parse_args(argv)
