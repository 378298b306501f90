"""Hyperparameter search on Spark: trials are whole barrier trainings, the most accurate model is kept.

How a search runs (``jobs/tune.py``, ``imagenet-spark tune``):

* The driver resolves one :class:`TuneConfig`: a training preset every trial starts from, fixed overrides,
  a search space over any :class:`~imagenet_spark.config.TrainConfig` key, the metric, the budget.
* A sampler proposes each trial's values: Optuna's TPE (the default) or random search, through Optuna's
  ask-and-tell interface. Why Optuna: it is well kept, pure Python, needs no server or database for an
  in-memory study (SQLAlchemy is installed but never imported), and its samplers and pruners are the
  reference implementations of TPE, median stopping and asynchronous successive halving. Only the driver
  imports it; executors never see it.
* Each trial is a full training (:func:`~imagenet_spark.spark.barrier.run_training`: barrier stage,
  retries, checkpoints) in its own model dir ``<model_dir>/trial-NNN``, with ``export=best`` so the trial
  keeps and exports its best evaluated epoch. Trials run in driver threads, as many at once as the cluster
  has slots for (``slots // workers``, at most ``max_parallel_trials``); the driver says which.
* Early stopping at epoch checkpoints: the trial trains to a rung (``stop_at_epoch``: checkpointed, not
  exported, the learning-rate schedule still spanning all ``epochs``), reports its best-so-far metric to
  the pruner, and either resumes from that checkpoint to the next rung or stops there ("pruned"). Rungs
  are ``min_epochs * reduction_factor**k``. Comparing best-so-far values means a stopped trial can never
  hold a better recorded metric than the completed trial that beat it, so the best model is always one
  that finished.
* A trial that fails (bad sampled values, a training that fails after its retries, a training that
  diverged: ``failure: diverged``) is recorded with its error and the search goes on. Diverged trials do not
  count towards ``stop_after_failures``: they say the sampled values are bad, not that every trial will fail.
* The search dir is the search's own: disjoint from the data, refused when it holds anything else (a dataset,
  a model dir, a user's files), marked as a search, and leased for the whole search (a second search on it is
  refused with the holder). Each ``trial-NNN`` inside it is a model dir of its own, with its own lease.
* Results: ``trials.csv`` and ``trials.json`` (rewritten after every trial, so a killed search still
  leaves its table), a summary table in the log, and ``best/saved_model`` + ``best/labels.txt`` +
  ``best/trial.json``: a copy of the best trial's export.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import threading
import time
import typing
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Mapping

from imagenet_spark import jsonio, ownership
from imagenet_spark.config import VAL_METRICS, ConfigError, TrainConfig, read_preset, resolve, to_dict
from imagenet_spark.data import fs
from imagenet_spark.errors import ImagenetSparkError

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random")
EARLY_STOPPING = ("successive_halving", "median", "none")
PARAM_TYPES = ("loguniform", "uniform", "int", "choice")
# Trial settings the search owns: a space or the fixed overrides must not set them.
_OWNED = {"data", "model_dir", "export", "best_metric", "stop_at_epoch", "overwrite"}
TRIALS_JSON, TRIALS_CSV, BEST = "trials.json", "trials.csv", "best"


class TuneError(ImagenetSparkError, RuntimeError):
    """The search cannot run as configured (or produced no usable trial); the message says why and the fix."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class TuneConfig:
    """Settings of a search (``jobs/tune.py``). See conf/tune/ for presets.

    ``space`` maps a TrainConfig key to ``{type: loguniform|uniform, low, high}``, ``{type: int, low, high}``
    or ``{type: choice, values: [...]}``. ``train`` holds fixed TrainConfig settings for every trial, applied
    over ``train_preset``.
    """

    data: str = ""
    model_dir: str = ""
    # A conf/train preset every trial starts from (relative paths: to the tune preset's folder, else the cwd).
    train_preset: typing.Optional[str] = None
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    space: dict[str, Any] = dataclasses.field(default_factory=dict)
    metric: str = "val_top1"
    max_trials: int = 8
    max_parallel_trials: int = 1
    sampler: str = "tpe"
    # TPE proposes at random until this many trials have finished.
    startup_trials: int = 4
    seed: int = 0
    early_stopping: str = "successive_halving"
    # First rung (epochs) and the factor between rungs; successive halving keeps the best 1/reduction_factor.
    min_epochs: int = 1
    reduction_factor: int = 3
    # Values tried first, one mapping per trial (known-good settings, or a grid to compare against).
    enqueue: tuple[dict[str, Any], ...] = ()
    overwrite: bool = False
    # Continue a search whose driver died: finished trials are kept (and told to the sampler), unfinished ones
    # resume from their checkpoints with the same values, then the remaining trials run.
    resume: bool = False
    # Stop starting trials after this many failed in a row: a shared cause (a bad path, a broken setting) would
    # otherwise fail every remaining trial, one cluster launch after another.
    stop_after_failures: int = 3
    # Fault injection for tests and drills: this trial number crashes at its first step, with no retries.
    inject_failure_trial: typing.Optional[int] = None

    def validate(self) -> None:
        if not self.data:
            raise ConfigError("data", self.data, "no dataset given.", "pass --data DIR written by jobs/partition.py.")
        if not self.model_dir:
            raise ConfigError("model_dir", self.model_dir, "no search directory given.",
                              "pass --model-dir DIR (trials go to DIR/trial-NNN, the best model to DIR/best).")
        if self.metric not in VAL_METRICS:
            raise ConfigError("metric", self.metric, f"unknown metric; known: {', '.join(VAL_METRICS)}.")
        if self.max_trials < 1:
            raise ConfigError("max_trials", self.max_trials, "must be at least 1.")
        if self.max_parallel_trials < 1:
            raise ConfigError("max_parallel_trials", self.max_parallel_trials, "must be at least 1.")
        if self.sampler not in SAMPLERS:
            raise ConfigError("sampler", self.sampler, f"unknown sampler; known: {', '.join(SAMPLERS)}.")
        if self.early_stopping not in EARLY_STOPPING:
            raise ConfigError("early_stopping", self.early_stopping,
                              f"unknown rule; known: {', '.join(EARLY_STOPPING)}.")
        if self.overwrite and self.resume:
            raise ConfigError("resume", self.resume, "--resume and --overwrite contradict each other.", "pick one.")
        if self.stop_after_failures < 1:
            raise ConfigError("stop_after_failures", self.stop_after_failures, "must be at least 1.")
        if self.min_epochs < 1:
            raise ConfigError("min_epochs", self.min_epochs, "must be at least 1.")
        if self.reduction_factor < 2:
            raise ConfigError("reduction_factor", self.reduction_factor, "must be at least 2.")
        if not self.space and not self.enqueue:
            raise ConfigError("space", self.space, "nothing to search.",
                              "give at least one key, e.g. --set space.base_lr.type=loguniform "
                              "--set space.base_lr.low=0.01 --set space.base_lr.high=1.")
        for key in sorted(_OWNED & (set(self.space) | set(self.train))):
            raise ConfigError(f"space.{key}" if key in self.space else f"train.{key}", key,
                              "the search sets this itself for every trial.", "remove it.")
        for key, spec in self.space.items():
            parse_param(key, spec)
        known = set(self.space)
        for i, values in enumerate(self.enqueue):
            if not isinstance(values, Mapping) or not set(values) <= known:
                raise ConfigError(f"enqueue[{i}]", values, "must be a mapping of keys from the space.",
                                  f"use only {', '.join(sorted(known)) or '(an empty space: add keys to space)'}.")


# --------------------------------------------------------------------------------------------------
# Search space


def parse_param(key: str, spec: Any) -> Any:
    """One space entry → an Optuna distribution, or ConfigError naming ``space.KEY`` and the fix."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    setting = f"space.{key}"
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if key not in fields:
        raise ConfigError(setting, spec, "not a training setting.",
                          f"search keys are TrainConfig settings, e.g. {', '.join(sorted(fields)[:6])}, ...")
    if not isinstance(spec, Mapping) or spec.get("type") not in PARAM_TYPES:
        raise ConfigError(setting, spec, f"expected a mapping with type: {' | '.join(PARAM_TYPES)}.",
                          f"write e.g. {key}: {{type: loguniform, low: 0.01, high: 1.0}}.")
    kind = spec["type"]
    try:
        if kind == "choice":
            values = spec.get("values")
            if not isinstance(values, (list, tuple)) or not values:
                raise ConfigError(setting, spec, "a choice needs a non-empty list of values.",
                                  f"write e.g. {key}: {{type: choice, values: [a, b]}}.")
            return CategoricalDistribution(list(values))
        low, high = spec.get("low"), spec.get("high")
        if low is None or high is None or not float(low) < float(high):
            raise ConfigError(setting, spec, "needs low < high.", f"write e.g. {key}: {{type: {kind}, low: 1, high: 5}}.")
        if kind == "int":
            return IntDistribution(int(low), int(high))
        if kind == "loguniform" and float(low) <= 0:
            raise ConfigError(setting, spec, "a log-uniform range must be positive.", "use low > 0.")
        return FloatDistribution(float(low), float(high), log=kind == "loguniform")
    except (TypeError, ValueError) as exc:
        raise ConfigError(setting, spec, f"not a valid range: {exc}.") from None


def rungs(*, epochs: float, min_epochs: int, reduction_factor: int, early_stopping: str) -> list[int]:
    """Epochs at which a trial pauses for the early-stopping decision (none past the last epoch)."""
    if early_stopping == "none":
        return []
    out, r = [], min_epochs
    while r < math.ceil(epochs):
        out.append(r)
        r *= reduction_factor
    return out


def make_study(cfg: TuneConfig, *, direction: str) -> Any:
    """An in-memory Optuna study with the configured sampler and pruner."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler: Any
    if cfg.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.startup_trials,
                                             constant_liar=cfg.max_parallel_trials > 1)
    else:
        sampler = optuna.samplers.RandomSampler(seed=cfg.seed)
    pruner: Any
    if cfg.early_stopping == "successive_halving":
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.min_epochs,
                                                        reduction_factor=cfg.reduction_factor)
    elif cfg.early_stopping == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    else:
        pruner = optuna.pruners.NopPruner()
    return optuna.create_study(direction=direction, sampler=sampler, pruner=pruner)


def ask_trial(study: Any, distributions: Mapping[str, Any], fixed: Mapping[str, Any] | None = None) -> Any:
    """The next trial: the sampler's proposal, or ``fixed`` values (an ``enqueue`` entry, or a resumed trial's).
    Asked from the driver's main thread only, so the queue holds at most this one entry."""
    if fixed:
        study.enqueue_trial(dict(fixed))
    return study.ask(dict(distributions))


# --------------------------------------------------------------------------------------------------
# Trials


@dataclasses.dataclass
class TrialRecord:
    """One row of the summary table (plain values: written as JSON and CSV)."""

    trial: int
    params: dict[str, Any]
    status: str = "running"  # running | completed | pruned | failed
    best: float | None = None
    best_epoch: int | None = None
    epochs_run: int = 0
    stopped_at_epoch: int | None = None
    launches: int = 0
    seconds: float = 0.0
    model_dir: str = ""
    error: str = ""
    # Why a failed trial failed, as a kind: "diverged" (NaN/inf loss: the sampled values), "error" (anything else).
    failure: str = ""


def trial_config(cfg: TuneConfig, base: Mapping[str, Any], params: Mapping[str, Any], *, number: int) -> TrainConfig:
    """The TrainConfig of trial ``number``: preset < fixed overrides < sampled values < what the search owns."""
    explicit: dict[str, Any] = {**base, **cfg.train, **params, "data": cfg.data,
                                "model_dir": fs.join(cfg.model_dir, f"trial-{number:03d}"), "export": "best",
                                "best_metric": cfg.metric}
    if cfg.inject_failure_trial == number:
        explicit.update(fail_at_step=1, max_retries=0)
    return resolve(TrainConfig, explicit=explicit)


def _best_so_far(history: list[dict[str, Any]], metric: str, *, larger: bool) -> tuple[float | None, int | None]:
    values = [(r[metric], r["epoch"]) for r in history
              if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
    if not values:
        return None, None
    value, epoch = (max if larger else min)(values, key=lambda v: v[0])
    return float(value), int(epoch)


def _run_trial(spark: Any, cfg: TuneConfig, study: Any, trial: Any, record: TrialRecord, base: Mapping[str, Any],
               stops: list[int], *, larger: bool) -> None:
    """Train one trial rung by rung; fills ``record`` and tells the study. Never raises for a trial failure."""
    import optuna

    from imagenet_spark.spark.barrier import run_training
    from imagenet_spark.train.reporting import read_metrics

    started = time.monotonic()
    label = f"trial {record.trial}"
    try:
        tcfg = trial_config(cfg, base, record.params, number=record.trial)
        record.model_dir = tcfg.model_dir
        for stop in [*stops, None]:
            history = read_metrics(tcfg.model_dir)
            if stop is None or len(history) < stop:  # a resumed trial already past this rung just reports it
                record.launches += 1
                run_training(spark, dataclasses.replace(tcfg, stop_at_epoch=stop), label=label)
                history = read_metrics(tcfg.model_dir)
            record.epochs_run = len(history)
            record.best, record.best_epoch = _best_so_far(
                [r for r in history if stop is None or r["epoch"] <= stop], cfg.metric, larger=larger)
            if stop is None:
                break
            if record.best is not None:
                trial.report(record.best, step=stop)
                if trial.should_prune():
                    record.status, record.stopped_at_epoch = "pruned", stop
                    log.info("%s: stopped early after epoch %d: %s=%.4f is behind the other trials at that epoch",
                             label, stop, cfg.metric, record.best)
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    return
        if record.best is None:
            raise TuneError(f"{cfg.metric} was never recorded (no validation split, or eval_every_epochs too large)")
        record.status = "completed"
        study.tell(trial, record.best)
    except Exception as exc:  # noqa: BLE001 - any trial failure is recorded and the search goes on
        record.status = "failed"
        record.failure = str(getattr(type(exc), "kind", "error"))  # typed (DivergedError.kind), not from the text
        record.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
        log.warning("%s failed: %s", label, record.error)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    finally:
        record.seconds = round(time.monotonic() - started, 1)


# --------------------------------------------------------------------------------------------------
# Results


def summary_table(records: list[TrialRecord], metric: str) -> str:
    """The table a person reads first: one line per trial, parameters last."""
    lines = [f"{'trial':>5}  {'status':<9}  {metric:>9}  {'best@':>5}  {'epochs':>6}  {'secs':>7}  params / error"]
    for r in records:
        value = f"{r.best:.4f}" if r.best is not None else "-"
        params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(r.params.items()))
        tail = f"{params}  ({r.error})" if r.error else params
        lines.append(f"{r.trial:>5}  {r.status:<9}  {value:>9}  {r.best_epoch or '-':>5}  {r.epochs_run:>6}  "
                     f"{r.seconds:>7.1f}  {tail}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _write_results(cfg: TuneConfig, records: list[TrialRecord], extra: Mapping[str, Any]) -> None:
    keys = sorted({k for r in records for k in r.params})
    buf = io.StringIO()
    writer = csv.writer(buf)
    columns = ["trial", "status", cfg.metric, "best_epoch", "epochs_run", "stopped_at_epoch", "launches", "seconds",
               "model_dir", "error", "failure"]
    writer.writerow(columns + [f"param.{k}" for k in keys])
    for r in records:
        writer.writerow([r.trial, r.status, "" if r.best is None else r.best, r.best_epoch or "", r.epochs_run,
                         r.stopped_at_epoch or "", r.launches, r.seconds, r.model_dir, r.error, r.failure]
                        + [r.params.get(k, "") for k in keys])
    fs.write_text_atomic(fs.join(cfg.model_dir, TRIALS_CSV), buf.getvalue())
    doc = {"metric": cfg.metric, "config": to_dict(cfg), **extra, "trials": [dataclasses.asdict(r) for r in records]}
    fs.write_text_atomic(fs.join(cfg.model_dir, TRIALS_JSON), jsonio.dumps(doc, indent=1, default=str))


def _failure_streak(records: list[TrialRecord], limit: int) -> str:
    """Why to stop starting trials ("" to go on): the last ``limit`` finished trials all failed. Diverged trials
    are left out: they blame the sampled values (a learning rate too high), not a cause every trial shares."""
    finished = [r for r in records if r.status != "running" and r.failure != "diverged"]
    tail = finished[-limit:]
    if len(tail) == limit and all(r.status == "failed" for r in tail):
        return (f"{limit} trials in a row failed (stop_after_failures={limit}), last: trial {tail[-1].trial}: "
                f"{tail[-1].error}")
    return ""


def _copy_tree(src: str, dst: str) -> None:
    for entry in fs.list_files(src):
        fs.write_bytes(fs.join(dst, entry.relpath), fs.read_bytes(entry.uri))


def export_best(cfg: TuneConfig, record: TrialRecord) -> str:
    """Copy the best trial's SavedModel and labels to ``<model_dir>/best`` (staged, then moved into place)."""
    src = record.model_dir
    target = fs.join(cfg.model_dir, BEST)
    staging = fs.join(cfg.model_dir, f"_{BEST}.staging")
    if fs.exists(staging):
        fs.delete(staging)
    _copy_tree(fs.join(src, "saved_model"), fs.join(staging, "saved_model"))
    fs.write_bytes(fs.join(staging, "labels.txt"), fs.read_bytes(fs.join(src, "labels.txt")))
    fs.write_text_atomic(fs.join(staging, "trial.json"), jsonio.dumps(dataclasses.asdict(record), indent=1))
    if fs.exists(target):
        fs.delete(target)
    fs.move(staging, target)
    return target


def _prepare_root(cfg: TuneConfig) -> list[TrialRecord]:
    """Start, resume or refuse; returns the trials to keep. A search dir holding an earlier search is refused
    (its trials would be mixed in) unless --overwrite (start over) or --resume (continue it)."""
    root = cfg.model_dir
    state = fs.join(root, TRIALS_JSON)
    if cfg.resume:
        if not fs.exists(state):
            raise TuneError(f"resume: {state} does not exist, so there is no search to continue. Fix: drop --resume.")
        doc = json.loads(fs.read_text(state))
        changed = sorted(k for k in ("space", "metric", "train", "train_preset", "early_stopping", "min_epochs",
                                     "reduction_factor") if doc.get("config", {}).get(k) != to_dict(cfg).get(k))
        if changed:
            raise TuneError(f"resume: {changed[0]} differs from the search in {root} "
                            f"({doc['config'].get(changed[0])!r} there). Fix: resume with the same settings, or "
                            "--overwrite to start over.")
        fields = {f.name for f in dataclasses.fields(TrialRecord)}
        return [TrialRecord(**{k: v for k, v in t.items() if k in fields}) for t in doc["trials"]]
    ours = [e for e in fs.list_dir(root) if e.relpath not in (ownership.LEASE, ownership.MARKER)] \
        if fs.exists(root) else []
    if ours:  # an earlier search (check_search_dir refused anything else before we got here)
        if not cfg.overwrite:
            hint = " pass --resume to continue it," if fs.exists(state) else ""
            raise TuneError(f"model_dir={root!r} already holds files (an earlier search?). Fix:{hint} pass "
                            "--overwrite to start over there, or use another --model-dir.")
        for entry in ours:  # our lease stays: we hold it
            fs.delete(entry.uri)
    ownership.write_mark(root, "search")
    return []


def is_search_dir(directory: str) -> bool:
    """A search dir written before the ownership marker: it holds a trials.json."""
    return fs.is_file(fs.join(directory, TRIALS_JSON))


def check_search_dir(cfg: TuneConfig) -> None:
    """Refuse a search dir that overlaps the data or holds anything but a search of ours, before any work."""
    ownership.check_disjoint("model_dir", cfg.model_dir, "data", cfg.data)
    ownership.check_ours("model_dir", cfg.model_dir, "search", is_search_dir)


def _replay(study: Any, record: TrialRecord, distributions: Mapping[str, Any]) -> None:
    """Tell the sampler and the pruner about a trial finished by an earlier driver."""
    import optuna
    from optuna.trial import TrialState

    state = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(record.status, TrialState.FAIL)
    dists = {k: v for k, v in distributions.items() if k in record.params}
    intermediate = {record.stopped_at_epoch: record.best} if record.stopped_at_epoch and record.best is not None \
        else {}
    study.add_trial(optuna.trial.create_trial(
        params=record.params, distributions=dists, state=state,
        value=record.best if state == TrialState.COMPLETE else None, intermediate_values=intermediate))


def plan_parallel(*, slots: int, workers: int, max_parallel_trials: int, max_trials: int) -> tuple[int, str]:
    """How many trials run at once, and the sentence the driver logs about it."""
    fit = max(1, slots // workers)
    parallel = min(max_parallel_trials, fit, max_trials)
    if parallel == 1:
        why = "" if max_parallel_trials == 1 or max_trials == 1 else \
            f": the cluster has {slots} slots, room for one barrier stage of {workers} workers " \
            f"(max_parallel_trials={max_parallel_trials} needs {max_parallel_trials * workers})"
        return 1, f"trials run one after another{why}"
    note = f" (the cluster's {slots} slots fit {fit})" if parallel < max_parallel_trials else ""
    return parallel, f"{parallel} trials run at once, {workers} worker(s) each{note}"


def _resolve_train_preset(cfg: TuneConfig, preset_dir: str | None) -> dict[str, Any]:
    if not cfg.train_preset:
        return {}
    path = Path(cfg.train_preset)
    if not path.is_absolute() and preset_dir and (Path(preset_dir) / path).is_file():
        path = Path(preset_dir) / path
    return read_preset(path)


def run_search(spark: Any, cfg: TuneConfig, *, preset_dir: str | None = None) -> dict[str, Any]:
    """Run the search; returns the summary (also in ``trials.json``). Raises TuneError if no trial completed."""
    from imagenet_spark.spark.barrier import check_cluster, trains_on_driver
    from imagenet_spark.train.planning import make_run_plan

    check_search_dir(cfg)
    base = _resolve_train_preset(cfg, preset_dir)
    larger = VAL_METRICS[cfg.metric]
    # Fail fast on what every trial shares (dataset, model, settings), before any trial starts.
    probe = trial_config(cfg, base, {}, number=0)
    make_run_plan(probe)
    epochs = probe.epochs
    if any(k == "epochs" for k in cfg.space):
        log.warning("epochs is searched: rungs follow the base value epochs=%g", epochs)
    stops = rungs(epochs=epochs, min_epochs=cfg.min_epochs, reduction_factor=cfg.reduction_factor,
                  early_stopping=cfg.early_stopping)
    on_driver = trains_on_driver(probe, spark.sparkContext.master)  # the same rule run_training follows
    slots = check_cluster(spark, probe, hoped=probe.workers * cfg.max_parallel_trials) if not on_driver \
        else max(1, spark.sparkContext.defaultParallelism)
    parallel, how = plan_parallel(slots=slots, workers=probe.workers, max_parallel_trials=cfg.max_parallel_trials,
                                  max_trials=cfg.max_trials)
    log.info("search: %d trials, %s; %s on %s (%s); %s", cfg.max_trials, how, cfg.sampler, cfg.metric,
             "larger is better" if larger else "smaller is better",
             f"early stopping ({cfg.early_stopping}) at epochs {stops}" if stops else "no early stopping")
    with ownership.Lease("model_dir", cfg.model_dir, "imagenet-spark tune"):
        check_search_dir(cfg)  # again, under the lease
        return _search(spark, cfg, base, stops, parallel, larger=larger)


def _search(spark: Any, cfg: TuneConfig, base: Mapping[str, Any], stops: list[int], parallel: int, *,
            larger: bool) -> dict[str, Any]:
    """The trials, once the search dir is checked and leased; returns the summary (also in ``trials.json``)."""
    kept = _prepare_root(cfg)
    study = make_study(cfg, direction="maximize" if larger else "minimize")
    distributions = {k: parse_param(k, v) for k, v in cfg.space.items()}
    records: list[TrialRecord] = [r for r in kept if r.status != "running"]
    for record in records:
        _replay(study, record, distributions)
    unfinished = [r for r in kept if r.status == "running"]
    if kept:
        log.info("resuming the search: %d trial(s) finished before, %d to continue (%s)", len(records),
                 len(unfinished), ", ".join(str(r.trial) for r in unfinished) or "none")
    lock = threading.Lock()
    started = time.monotonic()

    def checkpoint_results() -> None:
        with lock:
            _write_results(cfg, records, {"status": "running", "seconds": round(time.monotonic() - started, 1)})

    running: dict[Future[None], TrialRecord] = {}
    stopped = ""
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="trial") as pool:
        for number in sorted({r.trial for r in unfinished} | set(range(len(kept), cfg.max_trials))):
            while len(running) >= parallel:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    running.pop(future)
                    checkpoint_results()
            stopped = _failure_streak(records, cfg.stop_after_failures)
            if stopped:
                log.error("%s; not starting the remaining trial(s) from trial %d on", stopped, number)
                break
            previous = next((r for r in unfinished if r.trial == number), None)
            # a resumed trial gets its values again, and so resumes from its own checkpoints
            fixed = previous.params if previous else cfg.enqueue[number] if number < len(cfg.enqueue) else None
            trial = ask_trial(study, distributions, fixed)
            record = TrialRecord(trial=number, params=dict(trial.params))
            records.append(record)
            records.sort(key=lambda r: r.trial)
            checkpoint_results()  # the trial's values are on disk before it starts: a new driver can resume it
            log.info("trial %d: %s", number, ", ".join(f"{k}={_short(v)}" for k, v in sorted(record.params.items())))
            running[pool.submit(_run_trial, spark, cfg, study, trial, record, base, stops, larger=larger)] = record
        for future in list(running):
            future.result()
    finished = [r for r in records if r.status == "completed" and r.best is not None]
    extra: dict[str, Any] = {"status": "stopped" if stopped else "done", "stopped_because": stopped,
                             "seconds": round(time.monotonic() - started, 1), "parallel_trials": parallel,
                             "rungs": stops}
    if finished:
        best = (max if larger else min)(finished, key=lambda r: r.best)  # type: ignore[arg-type, return-value]
        extra["best"] = {"trial": best.trial, "value": best.best, "epoch": best.best_epoch, "params": best.params,
                         "model_dir": best.model_dir, "export": export_best(cfg, best)}
    _write_results(cfg, records, extra)
    log.info("search done in %.0f s:\n%s", extra["seconds"], summary_table(records, cfg.metric))
    if not finished:
        raise TuneError(f"no trial completed ({', '.join(f'{r.trial}: {r.status}' for r in records)}); see "
                        f"{fs.join(cfg.model_dir, TRIALS_JSON)} for the errors.")
    log.info("best: trial %d, %s=%.4f at epoch %s -> %s", extra["best"]["trial"], cfg.metric, extra["best"]["value"],
             extra["best"]["epoch"], extra["best"]["export"])
    return {**extra, "trials": [dataclasses.asdict(r) for r in records]}
