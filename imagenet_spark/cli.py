"""``imagenet-spark`` console command (also ``python -m imagenet_spark``). Each subcommand is a thin
wrapper: parse flags → resolve the typed config once → one library call. ``jobs/*.py`` reuse these parsers,
so ``spark-submit jobs/partition.py`` and ``imagenet-spark partition`` take exactly the same flags."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from imagenet_spark import logs
from imagenet_spark.config import Backend, ConfigError, Export, Layout, Metric, PartitionConfig, ShardBy, resolve
from imagenet_spark.errors import ImagenetSparkError
from imagenet_spark.search import Sampler

log = logging.getLogger("imagenet_spark")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML preset (conf/...); later flags override it")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any setting by its dotted key, e.g. --set quality=85 or "
                             "--set recipe.base_lr=0.2 (repeatable)")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")


def _int_or_none(value: str) -> int | str:
    """An integer, or the word "none" kept as the string: the config layer turns it into None for an optional
    setting, while a None here would read as "flag not given" and silently fall back to the default."""
    return "none" if value.strip().lower() in ("none", "null") else int(value)


def partition_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="jobs/partition.py", description="Raw ImageNet (any layout) → Petastorm Parquet partitioned by synset.")
    parser.add_argument("--input", help="dataset root (path or URI: file:, hdfs:, s3a:, dbfs:)")
    parser.add_argument("--output", help="output dataset directory (path or URI)")
    parser.add_argument("--layout", choices=typing.get_args(Layout))
    parser.add_argument("--resize-short", dest="resize_short", type=_int_or_none,
                        help="short side after resize (default 256; 'none' keeps the original)")
    parser.add_argument("--quality", type=int, help="JPEG quality (default 90)")
    parser.add_argument("--overwrite", action="store_true", default=None, help="replace an existing dataset")
    parser.add_argument("--resume", action="store_true", default=None, help="continue an interrupted run")
    parser.add_argument("--dry-run", dest="dry_run", action="store_true", default=None,
                        help="list what would be read and estimate the output size; write nothing")
    parser.add_argument("--tfrecord", action="store_true", default=None,
                        help="also write TFRecord shards in the Cloud TPU (imagenet_to_gcs) format")
    parser.add_argument("--master", default="local[*]",
                        help="Spark master when not launched by spark-submit (default local[*])")
    _common(parser)
    return parser


_PARTITION_FLAGS = ("input", "output", "layout", "resize_short", "quality", "overwrite", "resume", "dry_run",
                    "tfrecord")


def _explicit(args: argparse.Namespace, names: Sequence[str] | Mapping[str, str]) -> dict[str, Any]:
    """The flags given, by setting key (``names`` maps a flag's dest to a dotted key where they differ)."""
    keys = names if isinstance(names, Mapping) else {n: n for n in names}
    return {key: getattr(args, dest) for dest, key in keys.items() if getattr(args, dest, None) is not None}


def run_partition_cli(args: argparse.Namespace) -> int:
    """Paths checked and (for --dry-run) the whole job done before Spark starts; otherwise the input is listed
    in a thread while the JVM starts."""
    from imagenet_spark.jobs.partition import checked_paths, dry_run, list_in_background, list_job, run_listed
    from imagenet_spark.spark.preflight import check_submitted_conf
    from imagenet_spark.spark.session import build_context_session, ship_package

    cfg = checked_paths(resolve(PartitionConfig, preset=args.config, overrides=args.overrides,
                                explicit=_explicit(args, _PARTITION_FLAGS)))
    if cfg.dry_run:
        result = dry_run(list_job(cfg))
    else:
        check_submitted_conf(barrier=False)  # before Spark starts: some wrong settings fail it with a stack trace
        listed = list_in_background(cfg)
        # RDD tasks only: no SparkSession (ContextSession says why)
        spark = build_context_session("imagenet-spark partition", master=args.master, short_driver=True)
        ship_package(spark)
        result = run_listed(spark, listed())
    summary: dict[str, Any] = {k: result[k] for k in ("totals", "split_sizes", "row_groups", "rejects_by_reason",
                                      "conversion_counts", "bytes", "wall_time_s", "images_per_s") if k in result}
    if cfg.dry_run:
        summary = result
    log.info("summary: %s", json.dumps(summary))
    return 0


def train_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="jobs/train_barrier.py",
        description="Train AlexNet/ResNet on a partitioned dataset in a Spark barrier stage (MWMS or Horovod).")
    parser.add_argument("--data", help="dataset written by jobs/partition.py")
    parser.add_argument("--model-dir", dest="model_dir", help="checkpoints, metrics, TensorBoard, saved_model")
    parser.add_argument("--model", help="alexnet, resnet18/34/50/101/152, or a tiny variant")
    parser.add_argument("--workers", type=int, help="TensorFlow workers = barrier tasks (default 1)")
    parser.add_argument("--backend", choices=typing.get_args(Backend))
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--global-batch-size", dest="global_batch_size", type=int,
                        help="images per step over all workers; the learning rate scales with it")
    parser.add_argument("--image-size", dest="image_size", type=int, help="input size (default: the model's)")
    parser.add_argument("--shard-by", dest="shard_by", choices=typing.get_args(ShardBy))
    parser.add_argument("--max-retries", dest="max_retries", type=int,
                        help="relaunches of the barrier stage after a failure, each resuming from a checkpoint")
    parser.add_argument("--fail-at-step", dest="fail_at_step", type=int,
                        help="fault injection: rank fail_rank crashes once at this global step")
    parser.add_argument("--overwrite", action="store_true", default=None,
                        help="start over in a model dir that holds another run")
    parser.add_argument("--export", choices=typing.get_args(Export),
                        help="export the last epoch's weights (default) or the best evaluated epoch's (best_metric)")
    parser.add_argument("--master", default="local[*]",
                        help="Spark master when not launched by spark-submit (default local[*])")
    _common(parser)
    return parser


# Flag (argparse dest) -> the setting's dotted key.
_TRAIN_FLAGS = {"data": "data", "model_dir": "model_dir", "model": "model", "workers": "workers", "backend": "backend",
                "epochs": "epochs", "global_batch_size": "global_batch_size", "image_size": "image_size",
                "shard_by": "input.shard_by", "max_retries": "launch.max_retries",
                "fail_at_step": "faults.fail_at_step", "overwrite": "overwrite", "export": "output.export"}


def _run_barrier_job(app_name: str, master: str, work: Callable[[Any], str]) -> int:
    """The life of a job that runs barrier stages (train, tune): spark-submit's settings checked before Spark
    starts (some wrong ones hang it or fail it obscurely), the session, the package shipped, ``work(spark)``
    (it returns the line to log), and the session ended. Ending it may end the JVM that carries our output,
    so every error is logged here first."""
    from imagenet_spark.spark.preflight import check_submitted_conf
    from imagenet_spark.spark.session import build_context_session, end_session, ship_package

    check_submitted_conf(barrier=True)
    # The driver waits on its workers; its jobs are RDD and barrier stages only (no SparkSession: ContextSession)
    spark = build_context_session(app_name, master=master, short_driver=True)
    log.info("launch timing: session ready at %.3f", time.time())  # bench/launch.py and the tests read these lines
    rc = 1
    try:
        ship_package(spark)
        log.info("%s", work(spark))
        rc = 0
    except ImagenetSparkError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
    except Exception:
        log.exception("%s failed", app_name)
    finally:
        end_session(spark, rc)
    return rc


def run_train_cli(args: argparse.Namespace) -> int:
    from imagenet_spark.jobs.train import run_training, standby_workers
    from imagenet_spark.spark.session import executors_in_driver_jvm, submitted_master, under_spark_submit
    from imagenet_spark.train_config import TrainConfig

    cfg = resolve(TrainConfig, preset=args.config, overrides=args.overrides, explicit=_explicit(args, _TRAIN_FLAGS))
    # Before the session, so TensorFlow imports while the JVM (or, under spark-submit, the SparkContext) starts.
    # Under spark-submit the master comes from its command line; where that cannot be told, after the session.
    master = submitted_master() if under_spark_submit() else args.master
    early = standby_workers(cfg, master) if master else None

    def work(spark: Any) -> str:
        pool = early
        if pool is not None and not executors_in_driver_jvm(spark.sparkContext.master):
            pool.close()  # the session's master is not the one read before it: no task here could adopt them
            pool = None
        pool = pool or standby_workers(cfg, spark.sparkContext.master)
        with pool or contextlib.nullcontext():
            result = run_training(spark, cfg, standby=pool.addresses if pool else ())
        return f"final: {json.dumps(result.get('metrics', {}))}"

    try:
        return _run_barrier_job("imagenet-spark train", args.master, work)
    finally:
        if early is not None:
            early.close()


def tune_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="jobs/tune.py", description="Hyperparameter search: each trial a barrier training; keeps the best model.")
    parser.add_argument("--data", help="dataset written by jobs/partition.py (with a validation split)")
    parser.add_argument("--model-dir", dest="model_dir",
                        help="search dir: trial-NNN/ per trial, trials.csv/json, best/saved_model")
    parser.add_argument("--max-trials", dest="max_trials", type=int, help="trials in all")
    parser.add_argument("--max-parallel-trials", dest="max_parallel_trials", type=int,
                        help="trials at once, when the cluster has slots for them")
    parser.add_argument("--sampler", choices=typing.get_args(Sampler))
    parser.add_argument("--metric", choices=typing.get_args(Metric))
    parser.add_argument("--overwrite", action="store_true", default=None, help="replace an earlier search there")
    parser.add_argument("--resume", action="store_true", default=None,
                        help="continue a search whose driver died: keep finished trials, resume unfinished ones")
    parser.add_argument("--master", default="local[*]",
                        help="Spark master when not launched by spark-submit (default local[*])")
    _common(parser)
    return parser


_TUNE_FLAGS = ("data", "model_dir", "max_trials", "max_parallel_trials", "sampler", "metric", "overwrite", "resume")


def run_tune_cli(args: argparse.Namespace) -> int:
    import os

    from imagenet_spark.jobs.tune import run_search
    from imagenet_spark.search import TuneConfig

    cfg = resolve(TuneConfig, preset=args.config, overrides=args.overrides, explicit=_explicit(args, _TUNE_FLAGS))
    preset_dir = os.path.dirname(os.path.abspath(args.config)) if args.config else None

    def work(spark: Any) -> str:
        return f"best: {json.dumps(run_search(spark, cfg, preset_dir=preset_dir).get('best', {}))}"

    return _run_barrier_job("imagenet-spark tune", args.master, work)


def predict_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model-dir", dest="model_dir", required=True,
                        help="a training run's --model-dir (saved_model/ + labels.txt)")
    parser.add_argument("inputs", nargs="+", help="image files or folders; with --output: one folder or a dataset")
    parser.add_argument("--top-k", dest="top_k", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=None,
                        help="images per model call (default 32 locally, 64 on Spark)")
    parser.add_argument("--output", default=None,
                        help="batch inference on Spark: write Parquet predictions here instead of printing them")
    parser.add_argument("--split", default="validation", help="split of a dataset source (default validation)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--master", default="local[*]",
                        help="Spark master when not launched by spark-submit (default local[*])")
    parser.add_argument("--log-level", default=None)
    return parser


def run_predict_cli(args: argparse.Namespace) -> int:
    from imagenet_spark.jobs import predict

    return predict.run_predict_cli(args)


def _report_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from imagenet_spark.report import report_parser

    return report_parser(parser)


def _run_report_cli(args: argparse.Namespace) -> int:
    from imagenet_spark.report import run_report_cli

    return run_report_cli(args)


def fake_data_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument("--layout", default="ilsvrc", choices=["ilsvrc", "tar", "folders", "folders-flat"])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--train-per-class", type=int, default=20)
    parser.add_argument("--val-per-class", type=int, default=5)
    parser.add_argument("--size", default="64x48", help="WIDTHxHEIGHT (default 64x48)")
    parser.add_argument("--realistic", action="store_true", help="photo-like ~500x375, ~110 KB JPEGs")
    parser.add_argument("--quirks", action="store_true", help="add CMYK, PNG-named-.JPEG, grayscale, palette, alpha")
    parser.add_argument("--broken", action="store_true", help="add empty, truncated, non-image, unknown-class files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-level", default=None)
    return parser


def run_fake_data_cli(args: argparse.Namespace) -> int:
    from imagenet_spark.data.fake import FakeSpec, write

    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise ConfigError("--size", args.size, "expected WIDTHxHEIGHT.", "write for example --size 64x48.") from None
    spec_args: dict[str, Any] = dict(num_classes=args.classes, train_per_class=args.train_per_class,
                                     val_per_class=args.val_per_class, realistic=args.realistic, quirks=args.quirks,
                                     broken=args.broken, seed=args.seed)
    if not args.realistic or args.size != "64x48":
        spec_args["image_size"] = (width, height)
    summary = write(args.output, FakeSpec(**spec_args), layout=args.layout)
    log.info("wrote %d files in %d classes to %s", summary.total_files, len(summary.classes), summary.root)
    return 0


def summary_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("dataset", help="a dataset written by the partition job")
    parser.add_argument("--log-level", default=None)
    return parser


def run_summary_cli(args: argparse.Namespace) -> int:
    """Print what a person checks first: counts, rejects and why, conversions, bytes, and the shard rule."""
    from imagenet_spark.data import fs
    from imagenet_spark.data.schema import read_row_groups_per_file
    from imagenet_spark.layout import DatasetDir

    manifest_uri = DatasetDir(args.dataset).manifest
    if not fs.exists(manifest_uri):
        raise ConfigError("dataset", args.dataset, "no manifest.json: not a finished dataset.",
                          "run jobs/partition.py (or --resume an interrupted run) first.")
    m = json.loads(fs.read_text(manifest_uri))
    lines = [f"dataset {args.dataset}  (layout {m['layout']}, {m['num_classes']} classes)"]
    t = m["totals"]
    lines.append(f"  inputs {t['inputs']}: written {t['written']}, rejected {t['rejected']}, skipped {t['skipped']}")
    for split, n in m["split_sizes"].items():
        groups = read_row_groups_per_file(fs.join(args.dataset, split))
        lines.append(f"  {split:<10} {n:>8} images in {sum(groups.values()):>6} row groups "
                     f"(serves up to {sum(groups.values())} workers)")
    for reject in m["rejects"][:20]:
        lines.append(f"  rejected  {reject['filename']}: {reject['reason']} ({reject['detail']})")
    if len(m["rejects"]) > 20:
        lines.append(f"  ... {len(m['rejects']) - 20} more rejects in manifest.json and rejects/")
    for kind, n in m["conversion_counts"].items():
        lines.append(f"  converted {n} x {kind}")
    b = m["bytes"]
    lines.append(f"  bytes in {b['input']:,}, out {b['written']:,} ({b['per_image']:,.0f} per image); "
                 f"wall time {m['wall_time_s']} s")
    log.info("\n%s", "\n".join(lines))
    return 0


def jvm_archive_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--force", action="store_true", help="rebuild it even when it exists")
    parser.add_argument("--print-options", action="store_true",
                        help="only print the driver JVM options (for spark-submit --driver-java-options)")
    parser.add_argument("--log-level", default=None)
    return parser


def run_jvm_archive_cli(args: argparse.Namespace) -> int:
    """Build the class archive that halves the driver JVM's start (spark/jvm.py), or print the options using it."""
    from imagenet_spark.spark.jvm import build_archive, driver_java_options

    if args.print_options:  # on stdout, for $(...): the one output of this command that is data, not a log line
        sys.stdout.write(" ".join(driver_java_options(short_driver=True)) + "\n")
        return 0
    build_archive(force=args.force)
    return 0


_COMMANDS: dict[str, tuple[str, Callable[..., argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "partition": ("raw images → Petastorm Parquet (same flags as jobs/partition.py)", partition_parser,
                  run_partition_cli),
    "fake-data": ("write a synthetic, learnable ImageNet-layout tree", fake_data_parser, run_fake_data_cli),
    "train": ("train in a Spark barrier stage (same flags as jobs/train_barrier.py)", train_parser, run_train_cli),
    "tune": ("hyperparameter search, each trial a barrier training (same flags as jobs/tune.py)", tune_parser,
             run_tune_cli),
    "predict": ("top-k classes for images, or batch inference on Spark with --output", predict_parser,
                run_predict_cli),
    "report": ("render curves, LR schedule, throughput and a prediction grid to PNG + report.html", _report_parser,
               _run_report_cli),
    "jvm-archive": ("write the class archive that cuts the Spark driver JVM's start (make setup runs it)",
                    jvm_archive_parser, run_jvm_archive_cli),
    "summary": ("print a dataset's counts, rejects, conversions and row groups", summary_parser, run_summary_cli),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imagenet-spark", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, build, _) in _COMMANDS.items():
        build(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    return run_command(args.command, args)


def run_command(name: str, args: argparse.Namespace) -> int:
    """Run one subcommand with logging configured and user errors turned into one clear line + exit 2."""
    logs.configure(args.log_level)
    try:
        return _COMMANDS[name][2](args)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except ImagenetSparkError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
