"""Process start -> first training step of a 2-worker MWMS run on ``local[2]`` (issue #13, goal 3: under 10 s).

    .venv/bin/python bench/launch.py [--runs 3] [--mode submit|python|both] [--baseline COMMIT] [--standby-off]
                                     [--peer] [--quick: 2 runs, python mode, --baseline ebb2367, --standby-off,
                                     --peer]

Runs ``jobs/train_barrier.py`` as a user does (``spark-submit --master local[2]``, or ``python
jobs/train_barrier.py --master local[2]``) on a tiny partitioned dataset (4 classes of 40x40 fake images),
resnet_tiny, 2 MWMS workers, 1 short epoch, and splits the time from process start to the first training step
into phases, read from the ``launch timing:`` log lines the driver and the workers write (wall-clock seconds):

* start -> training call: interpreter, JVM and SparkSession start, config resolution;
* training call -> launch clock: plan, cluster check, the storage probe (skipped on local[N]), model-dir claim;
* launch clock -> workers started: barrier stage, port exchange (none on local[N] since c2ae0da), worker
  processes up to our first line;
* workers started -> backend ready: importing TensorFlow and creating the MWMS strategy (the later of the ranks);
* backend ready -> first step: model, optimizer, input pipeline, tracing and the first step (the later rank).

``--peer`` also runs the peer the issue names, spark-tensorflow-distributor's ``MirroredStrategyRunner``
(``bench/peer_launch.py``: its own small CNN on in-memory data), alternating with ours, timed the same way from
process start to the later worker's first step.

Several runs, modes alternating, medians printed. Why whole processes: the figure users see includes the JVM and
the fresh Python workers, which an in-process timer (``launch_to_first_step_s``) leaves out.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from figures import Figure, emit, parse_sized

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.launch")

_TIMING = re.compile(r"launch timing: (?:rank (\d+) )?(?:attempt \d+ )?([a-z ]+?) at (\d+\.\d+)")
# The commit --quick compares against: the first with 'launch timing:' lines, before issue #13's launch work.
QUICK_BASELINE = "ebb2367"
PHASES = ("start -> training call", "training call -> launch clock", "launch clock -> workers started",
          "workers started -> backend ready", "backend ready -> first step", "start -> first step")


def make_dataset(work: Path) -> Path:
    """A tiny dataset written by the real partition job (its own Spark session, stopped before the runs)."""
    from imagenet_spark.config import PartitionConfig, resolve
    from imagenet_spark.data.fake import FakeSpec, write_ilsvrc
    from imagenet_spark.jobs.partition import run_partition
    from imagenet_spark.spark.session import build_session

    write_ilsvrc(work / "raw", FakeSpec(num_classes=4, train_per_class=40, val_per_class=8, image_size=(40, 40)))
    spark = build_session("bench-launch-data", master="local[2]", conf={"spark.ui.showConsoleProgress": "false"})
    try:
        run_partition(spark, resolve(PartitionConfig, explicit=dict(
            input=str(work / "raw"), output=str(work / "ds"), resize_short=40, images_per_task=16,
            rows_per_row_group=8)))
    finally:
        spark.stop()
    return work / "ds"


def _settings(repo: Path) -> list[str]:
    """No warmup and a short wait for slots, in the names ``repo`` knows: sectioned since the config had sections
    (a flat name there logs a FlatSettingWarning), flat for a baseline commit from before them (ebb2367)."""
    sectioned = "class FlatSettingWarning" in (repo / "imagenet_spark/config.py").read_text()
    names = ("recipe.warmup_epochs", "launch.slots_wait_s") if sectioned else ("warmup_epochs", "slots_wait_s")
    return ["--set", f"{names[0]}=0", "--set", f"{names[1]}=5"]


def _command(mode: str, data: Path, model_dir: Path, repo: Path, extra: tuple[str, ...] = ()) -> list[str]:
    job = [str(repo / "jobs/train_barrier.py"), "--data", str(data), "--model-dir", str(model_dir), "--model",
           "resnet_tiny", "--workers", "2", "--backend", "mwms", "--epochs", "1", "--global-batch-size", "32",
           *_settings(repo), *extra]
    if mode == "submit":
        bindir = Path(sys.executable).parent
        return [str(bindir / "spark-submit"), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
                "--driver-java-options", f"-Dlog4j2.configurationFile={REPO / 'conf/spark/log4j2.properties'}", *job]
    return [sys.executable, *job, "--master", "local[2]"]


def phases(out: str, started: float) -> dict[str, float]:
    """Phase durations from the ``launch timing:`` lines; the workers' phases end at the later rank."""
    marks: dict[str, list[float]] = {}
    for _rank, name, stamp in _TIMING.findall(out):
        marks.setdefault(name.strip(), []).append(float(stamp))
    need = ("training call", "launch clock", "worker started", "backend ready", "first step done")
    missing = [n for n in need if n not in marks]
    if missing:
        raise RuntimeError(f"no 'launch timing: {missing[0]}' line in the job's output:\n{out[-3000:]}")
    call, clock = marks["training call"][0], marks["launch clock"][-1]
    workers, backend, first = max(marks["worker started"]), max(marks["backend ready"]), max(marks["first step done"])
    result = dict(zip(PHASES, (call - started, clock - call, workers - clock, backend - workers, first - backend,
                               first - started)))
    if "model built" in marks and "input ready" in marks:  # the parts of "backend ready -> first step"
        built, ready = max(marks["model built"]), max(marks["input ready"])
        result.update({"  of which model built": built - backend, "  of which input ready": ready - built})
        if "traced" in marks:  # commits before 6th session's: trace and step 1 in one figure
            traced = max(marks["traced"])
            result.update({"  of which trace": traced - ready, "  of which step 1": first - traced})
        else:
            result["  of which trace + step 1"] = first - ready
    return result


def run_once(mode: str, data: Path, model_dir: Path, repo: Path = REPO,
             extra: tuple[str, ...] = ()) -> dict[str, float]:
    """One whole job; ``repo``: the source tree to run (a baseline commit's worktree, first on PYTHONPATH, which
    the Python workers and the training processes inherit)."""
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH", "")) if p))
    started = time.time()
    proc = subprocess.run(_command(mode, data, model_dir, repo, extra), capture_output=True, text=True, env=env,
                          timeout=600, cwd=model_dir.parent)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed (rc {proc.returncode}):\n{out[-3000:]}")
    return phases(out, started)


def run_peer(work: Path) -> dict[str, float]:
    """One run of ``bench/peer_launch.py``: process start -> the later worker's first step.

    ``TF_USE_LEGACY_KERAS=1``: with TensorFlow >= 2.16's default Keras 3 the runner's strategy fails at the first
    step ("Attempt to convert a value (PerReplica...)"), so its users on this stack run tf-keras, as ours does."""
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, TF_USE_LEGACY_KERAS="1",
               SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"))
    started = time.time()
    proc = subprocess.run([sys.executable, str(REPO / "bench/peer_launch.py")], capture_output=True, text=True,
                          env=env, timeout=600, cwd=work)
    out = proc.stdout + proc.stderr
    stamps = [float(stamp) for _rank, name, stamp in _TIMING.findall(out) if name.strip() == "first step done"]
    if proc.returncode != 0 or not stamps:
        raise RuntimeError(f"peer run failed (rc {proc.returncode}):\n{out[-3000:]}")
    return {"start -> first step": max(stamps) - started}


def _emit_ratios(args: argparse.Namespace, modes: tuple[str, ...], results: dict[str, list[dict[str, float]]]) -> None:
    """The figures of the run: ours against each baseline that ran, medians of the alternating runs."""
    shape = (f"resnet_tiny, 2 MWMS workers, local[2], 4 classes x 40 images 40 px; median of {args.runs} "
             "alternating runs each")

    def median(key: str) -> float:
        return statistics.median(r["start -> first step"] for r in results[key])

    for mode in modes:
        ours = median(f"{mode} ours")
        if args.standby_off:
            emit(Figure(script="launch", figure=f"process start -> first step ({mode}), standby workers",
                        value=ours, baseline_name="the same, launch.standby_workers=false",
                        baseline=median(f"{mode} standby off"), unit="s", better="lower", shape=shape))
        if args.baseline:
            base = median(f"{mode} baseline")
            log.info("%s: start -> first step, median: ours %.2f s, baseline %s %.2f s, ratio %.2f", mode, ours,
                     args.baseline, base, ours / base)
            emit(Figure(script="launch", figure=f"process start -> first step ({mode})", value=ours,
                        baseline_name=f"commit {args.baseline}", baseline=base, unit="s", better="lower",
                        shape=shape))
        if args.peer:
            emit(Figure(script="launch", figure=f"process start -> first step ({mode})", value=ours,
                        baseline_name="spark-tensorflow-distributor 1.0.0 (small CNN, in-memory data)",
                        baseline=median("peer"), unit="s", better="lower", shape=shape))
        emit(Figure(script="launch", figure=f"process start -> first step ({mode})", value=ours,
                    baseline_name="issue #13 goal 3", baseline=10.0, unit="s", better="lower", shape=shape))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per mode (alternating)")
    parser.add_argument("--mode", choices=("submit", "python", "both"), default="both")
    parser.add_argument("--standby-off", action="store_true",
                        help="also run the working tree with launch.standby_workers=false, alternating, and print "
                             "the ratio (what starting the workers before the session gains on this machine)")
    parser.add_argument("--baseline", metavar="COMMIT",
                        help="also run this commit (a git worktree; it must have the 'launch timing:' lines, e.g. "
                             "ebb2367), alternating with the working tree, and print the ratio")
    parser.add_argument("--peer", action="store_true",
                        help="also run spark-tensorflow-distributor's MirroredStrategyRunner (bench/peer_launch.py), "
                             "alternating, and print the ratio")
    args = parse_sized(parser, quick={"runs": 2, "mode": "python", "baseline": QUICK_BASELINE, "standby_off": True,
                                      "peer": True})
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    work = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    data = make_dataset(work)
    modes = ("submit", "python") if args.mode == "both" else (args.mode,)
    trees = {"ours": REPO}
    extras: dict[str, tuple[str, ...]] = {"ours": (), "baseline": ()}
    if args.standby_off:
        trees["standby off"] = REPO
        extras["standby off"] = ("--set", "launch.standby_workers=false")
    if args.baseline:
        trees["baseline"] = work / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(trees["baseline"]), args.baseline],
                       check=True, capture_output=True)
    results: dict[str, list[dict[str, float]]] = {f"{m} {t}": [] for m in modes for t in trees}
    try:
        for i in range(args.runs):
            for mode in modes:
                for tree, repo in trees.items():
                    result = run_once(mode, data, work / f"m-{mode}-{tree.replace(' ', '-')}-{i}", repo, extras[tree])
                    results[f"{mode} {tree}"].append(result)
                    log.info("run %d %-6s %-8s %s", i + 1, mode, tree,
                             "  ".join(f"{k.strip()}: {v:.2f}" for k, v in result.items()))
            if args.peer:
                results.setdefault("peer", []).append(run_peer(work))
                log.info("run %d peer: start -> first step %.2f", i + 1, results["peer"][-1]["start -> first step"])
    finally:
        if args.baseline:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(trees["baseline"])],
                           capture_output=True)
    _emit_ratios(args, modes, results)
    for mode, runs in results.items():
        if mode == "peer":
            continue
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        log.info("median of %d, %s --master local[2], resnet_tiny, 2 MWMS workers:", len(runs), mode)
        for k in med:
            log.info("  %-34s %6.2f s", k, med[k])
        log.info("  ratio to the goal (10 s): %.2f", med["start -> first step"] / 10.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
