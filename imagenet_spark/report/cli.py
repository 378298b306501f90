"""``imagenet-spark report``: its flags and runner (wired into :mod:`imagenet_spark.cli`'s commands)."""

from __future__ import annotations

import argparse
import logging

from imagenet_spark.report.page import render_report

log = logging.getLogger(__name__)


def report_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model-dir", dest="model_dir", required=True,
                        help="a training run's --model-dir (metrics.json, config.json, saved_model/)")
    parser.add_argument("--out-dir", dest="out_dir", default=None,
                        help="where to write the PNG files and report.html (default MODEL_DIR/report)")
    parser.add_argument("--data", default=None,
                        help="the dataset for the prediction grid (default: the one in config.json)")
    parser.add_argument("--grid", type=int, default=16, help="validation images in predictions.png (default 16)")
    parser.add_argument("--log-level", default=None)
    return parser


def run_report_cli(args: argparse.Namespace) -> int:
    """Render the report and log where its files are."""
    outputs = render_report(args.model_dir, out_dir=args.out_dir, data=args.data, grid=args.grid)
    log.info("wrote %s", ", ".join(outputs.values()))
    return 0

