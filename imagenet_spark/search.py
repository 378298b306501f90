"""The search's pieces that need no Spark: its settings, the space, rungs, the Optuna study, trial records and
the results table. The driver that runs trials on Spark is :mod:`imagenet_spark.jobs.tune`.

Why Optuna: it is well kept, pure Python, needs no server or database for an in-memory study (SQLAlchemy is
installed but never imported), and its samplers and pruners are the reference implementations of TPE, median
stopping and asynchronous successive halving. Only the driver imports it; executors never see it.

Early stopping at epoch checkpoints: a trial trains to a rung (``stop_at_epoch``: checkpointed, not exported,
the learning-rate schedule still spanning all ``epochs``), reports its best-so-far metric to the pruner, and
either resumes from that checkpoint to the next rung or stops there ("pruned"). Rungs are
``min_epochs * reduction_factor**k``. Comparing best-so-far values means a stopped trial can never hold a better
recorded metric than the completed trial that beat it, so the best model is always one that finished.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from imagenet_spark import jsonio
from imagenet_spark.config import (
    VAL_METRICS,
    ConfigError,
    Metric,
    canonical_key,
    dotted_settings,
    flat_names,
    keyed_by_setting,
    merge_settings,
    read_preset,
    resolve,
    to_dict,
)
from imagenet_spark.data import fs
from imagenet_spark.errors import ImagenetSparkError
from imagenet_spark.layout import ModelDir
from imagenet_spark.train_config import TrainConfig

Sampler = Literal["tpe", "random"]
EarlyStopping = Literal["successive_halving", "median", "none"]
ParamType = Literal["loguniform", "uniform", "int", "choice"]
TrialStatus = Literal["running", "completed", "pruned", "failed"]
PARAM_TYPES: tuple[str, ...] = typing.get_args(ParamType)
# Trial settings the search owns: a space or the fixed overrides must not set them.
_OWNED = frozenset({"data", "model_dir", "output.export", "output.best_metric", "output.stop_at_epoch", "overwrite"})


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
    train_preset: str | None = None
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    space: dict[str, Any] = dataclasses.field(default_factory=dict)
    metric: Metric = "val_top1"
    max_trials: int = 8
    max_parallel_trials: int = 1
    sampler: Sampler = "tpe"
    # TPE proposes at random until this many trials have finished.
    startup_trials: int = 4
    seed: int = 0
    early_stopping: EarlyStopping = "successive_halving"
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
    inject_failure_trial: int | None = None

    def __post_init__(self) -> None:
        # Search keys as dotted TrainConfig keys however written (nested sections, --set space.recipe.base_lr.low,
        # old flat names): one spelling for the sampler, the enqueued values and trials.json.
        object.__setattr__(self, "space", keyed_by_setting(TrainConfig, self.space))
        object.__setattr__(self, "enqueue", tuple(keyed_by_setting(TrainConfig, v) if isinstance(v, Mapping) else v
                                                  for v in self.enqueue))

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
        for where, keys in (("space", list(self.space)), ("train", list(dotted_settings(TrainConfig, self.train)))):
            for key in keys:
                if flat_names(TrainConfig).get(key, key) in _OWNED:
                    raise ConfigError(f"{where}.{key}", key, "the search sets this itself for every trial.",
                                      "remove it.")
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
    canonical_key(TrainConfig, key, setting=setting, problem="not a training setting.")
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
            raise ConfigError(setting, spec, "needs low < high.",
                              f"write e.g. {key}: {{type: {kind}, low: 1, high: 5}}.")
        if kind == "int":
            return IntDistribution(int(low), int(high))
        if kind == "loguniform" and float(low) <= 0:
            raise ConfigError(setting, spec, "a log-uniform range must be positive.", "use low > 0.")
        return FloatDistribution(float(low), float(high), log=kind == "loguniform")
    except (TypeError, ValueError) as exc:
        raise ConfigError(setting, spec, f"not a valid range: {exc}.") from None


def rungs(*, epochs: float, min_epochs: int, reduction_factor: int, early_stopping: EarlyStopping) -> list[int]:
    """Epochs at which a trial pauses for the early-stopping decision (none past the last epoch)."""
    if early_stopping == "none":
        return []
    out, r = [], min_epochs
    while r < math.ceil(epochs):
        out.append(r)
        r *= reduction_factor
    return out


def make_study(cfg: TuneConfig, *, direction: Literal["minimize", "maximize"]) -> Any:
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
# Trials and results


@dataclasses.dataclass
class TrialRecord:
    """One row of the summary table (plain values: written as JSON and CSV)."""

    trial: int
    params: dict[str, Any]
    status: TrialStatus = "running"
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
    owned: dict[str, Any] = {"data": cfg.data, "model_dir": ModelDir(cfg.model_dir).trial(f"trial-{number:03d}").root,
                             "output.export": "best", "output.best_metric": cfg.metric}
    if cfg.inject_failure_trial == number:
        owned.update({"faults.fail_at_step": 1, "launch.max_retries": 0})
    return resolve(TrainConfig, explicit=merge_settings(TrainConfig, base, cfg.train, params, owned))


def best_so_far(history: list[dict[str, Any]], metric: str, *, larger: bool) -> tuple[float | None, int | None]:
    values = [(r[metric], r["epoch"]) for r in history
              if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
    if not values:
        return None, None
    value, epoch = (max if larger else min)(values, key=lambda v: v[0])
    return float(value), int(epoch)


def summary_table(records: list[TrialRecord], metric: str) -> str:
    """The table a person reads first: one line per trial, parameters last."""
    lines = [f"{'trial':>5}  {'status':<9}  {metric:>9}  {'best@':>5}  {'epochs':>6}  {'secs':>7}  params / error"]
    for r in records:
        value = f"{r.best:.4f}" if r.best is not None else "-"
        params = ", ".join(f"{k}={short_value(v)}" for k, v in sorted(r.params.items()))
        tail = f"{params}  ({r.error})" if r.error else params
        lines.append(f"{r.trial:>5}  {r.status:<9}  {value:>9}  {r.best_epoch or '-':>5}  {r.epochs_run:>6}  "
                     f"{r.seconds:>7.1f}  {tail}")
    return "\n".join(lines)


def short_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_results(cfg: TuneConfig, records: list[TrialRecord], extra: Mapping[str, Any]) -> None:
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
    fs.write_text_atomic(ModelDir(cfg.model_dir).trials_csv, buf.getvalue())
    doc = {"metric": cfg.metric, "config": to_dict(cfg), **extra, "trials": [dataclasses.asdict(r) for r in records]}
    fs.write_text_atomic(ModelDir(cfg.model_dir).trials_json, jsonio.dumps(doc, indent=1, default=str))


def failure_streak(records: list[TrialRecord], limit: int) -> str:
    """Why to stop starting trials ("" to go on): the last ``limit`` finished trials all failed. Diverged trials
    are left out: they blame the sampled values (a learning rate too high), not a cause every trial shares."""
    finished = [r for r in records if r.status != "running" and r.failure != "diverged"]
    tail = finished[-limit:]
    if len(tail) == limit and all(r.status == "failed" for r in tail):
        return (f"{limit} trials in a row failed (stop_after_failures={limit}), last: trial {tail[-1].trial}: "
                f"{tail[-1].error}")
    return ""


def replay(study: Any, record: TrialRecord, distributions: Mapping[str, Any]) -> None:
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


def train_preset_values(cfg: TuneConfig, preset_dir: str | None) -> dict[str, Any]:
    if not cfg.train_preset:
        return {}
    path = Path(cfg.train_preset)
    if not path.is_absolute() and preset_dir and (Path(preset_dir) / path).is_file():
        path = Path(preset_dir) / path
    return read_preset(path)


