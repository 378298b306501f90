"""The search's driver: trials are whole barrier trainings, the most accurate model is kept.

How a search runs (``jobs/tune.py`` in the repository, ``imagenet-spark tune``):

* The driver resolves one :class:`~imagenet_spark.search.TuneConfig`: a training preset every trial starts from,
  fixed overrides, a search space over any TrainConfig key, the metric, the budget. A sampler proposes each
  trial's values through Optuna's ask-and-tell interface (imagenet_spark/search.py: the space, rungs, study).
* Each trial is a full training (:func:`~imagenet_spark.jobs.train.run_training`: barrier stage, retries,
  checkpoints) in its own model dir ``<model_dir>/trial-NNN``, with ``export=best`` so the trial keeps and
  exports its best evaluated epoch. Trials run in driver threads, as many at once as the cluster has slots for
  (``slots // workers``, at most ``max_parallel_trials``); the driver says which. Early-stopped trials pause
  at rungs and resume from their checkpoints.
* A trial that fails (bad sampled values, a training that fails after its retries, a training that diverged)
  is recorded with its error and the search goes on. Diverged trials do not count towards
  ``stop_after_failures``: they say the sampled values are bad, not that every trial will fail.
* The search dir is the search's own: disjoint from the data, refused when it holds anything else (a dataset,
  a model dir, a user's files), marked as a search, and leased for the whole search (a second search on it is
  refused with the holder). Each ``trial-NNN`` inside it is a model dir of its own, with its own lease.
* Results: ``trials.csv`` and ``trials.json`` (rewritten after every trial, so a killed search still leaves its
  table), a summary table in the log, and ``best/saved_model`` + ``best/labels.txt`` + ``best/trial.json``: a
  copy of the best trial's export.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from imagenet_spark import jsonio, ownership
from imagenet_spark.config import VAL_METRICS, to_dict, with_settings
from imagenet_spark.data import fs
from imagenet_spark.jobs.train import run_training
from imagenet_spark.layout import ModelDir
from imagenet_spark.search import (
    TrialRecord,
    TuneConfig,
    TuneError,
    ask_trial,
    best_so_far,
    failure_streak,
    make_study,
    parse_param,
    plan_parallel,
    replay,
    rungs,
    short_value,
    summary_table,
    train_preset_values,
    trial_config,
    write_results,
)
from imagenet_spark.spark.barrier import check_cluster, trains_on_driver
from imagenet_spark.train.planning import make_run_plan
from imagenet_spark.train.reporting import read_metrics

log = logging.getLogger(__name__)

# What a resumed search must share with the one it continues (anything else may change).
_RESUME_KEEPS = ("space", "metric", "train", "train_preset", "early_stopping", "min_epochs", "reduction_factor")


def run_search(spark: Any, cfg: TuneConfig, *, preset_dir: str | None = None) -> dict[str, Any]:
    """Run the search; returns the summary (also in ``trials.json``). Raises TuneError if no trial completed."""
    check_search_dir(cfg)
    base = train_preset_values(cfg, preset_dir)
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
        return _Search(spark, cfg, base, stops, parallel, larger=larger).run()


# --------------------------------------------------------------------------------------------------
# The search dir


def is_search_dir(directory: str) -> bool:
    """A search dir written before the ownership marker: it holds a trials.json."""
    return fs.is_file(ModelDir(directory).trials_json)


def check_search_dir(cfg: TuneConfig) -> None:
    """Refuse a search dir that overlaps the data or holds anything but a search of ours, before any work."""
    ownership.check_disjoint("model_dir", cfg.model_dir, "data", cfg.data)
    ownership.check_ours("model_dir", cfg.model_dir, "search", is_search_dir)


def _resumed_trials(cfg: TuneConfig) -> list[TrialRecord]:
    """The trials of the search ``--resume`` continues, refused when a setting it must keep has changed."""
    state = ModelDir(cfg.model_dir).trials_json
    if not fs.exists(state):
        raise TuneError(f"resume: {state} does not exist, so there is no search to continue. Fix: drop --resume.")
    doc = json.loads(fs.read_text(state))
    changed = sorted(k for k in _RESUME_KEEPS if doc.get("config", {}).get(k) != to_dict(cfg).get(k))
    if changed:
        raise TuneError(f"resume: {changed[0]} differs from the search in {cfg.model_dir} "
                        f"({doc['config'].get(changed[0])!r} there). Fix: resume with the same settings, or "
                        "--overwrite to start over.")
    fields = {f.name for f in dataclasses.fields(TrialRecord)}
    return [TrialRecord(**{k: v for k, v in t.items() if k in fields}) for t in doc["trials"]]


def _prepare_root(cfg: TuneConfig) -> list[TrialRecord]:
    """Start, resume or refuse; returns the trials to keep. A search dir holding an earlier search is refused
    (its trials would be mixed in) unless --overwrite (start over) or --resume (continue it)."""
    if cfg.resume:
        return _resumed_trials(cfg)
    root = cfg.model_dir
    ours = [e for e in fs.list_dir(root) if e.relpath not in (ownership.LEASE, ownership.MARKER)] \
        if fs.exists(root) else []
    if ours:  # an earlier search (check_search_dir refused anything else before we got here)
        if not cfg.overwrite:
            hint = " pass --resume to continue it," if fs.exists(ModelDir(root).trials_json) else ""
            raise TuneError(f"model_dir={root!r} already holds files (an earlier search?). Fix:{hint} pass "
                            "--overwrite to start over there, or use another --model-dir.")
        for entry in ours:  # our lease stays: we hold it
            fs.delete(entry.uri)
    ownership.write_mark(root, "search")
    return []


def _copy_tree(src: str, dst: str) -> None:
    for entry in fs.list_files(src):
        fs.write_bytes(fs.join(dst, entry.relpath), fs.read_bytes(entry.uri))


def export_best(cfg: TuneConfig, record: TrialRecord) -> str:
    """Copy the best trial's SavedModel and labels to ``<model_dir>/best`` (staged, then moved into place)."""
    src, root = ModelDir(record.model_dir), ModelDir(cfg.model_dir)
    staging = ModelDir(root.best_trial_staging)
    if fs.exists(staging.root):
        fs.delete(staging.root)
    _copy_tree(src.saved_model, staging.saved_model)
    fs.write_bytes(staging.labels, fs.read_bytes(src.labels))
    fs.write_text_atomic(staging.trial_record, jsonio.dumps(dataclasses.asdict(record), indent=1))
    if fs.exists(root.best_trial):
        fs.delete(root.best_trial)
    fs.move(staging.root, root.best_trial)
    return root.best_trial


# --------------------------------------------------------------------------------------------------
# Trials


def _train_rungs(spark: Any, tcfg: Any, stops: list[int], trial: Any, record: TrialRecord, metric: str, *,
                 larger: bool) -> bool:
    """Train ``tcfg`` rung by rung, filling ``record``; returns False when the pruner stopped it at a rung."""
    label = f"trial {record.trial}"
    for stop in [*stops, None]:
        history = read_metrics(tcfg.model_dir)
        if stop is None or len(history) < stop:  # a resumed trial already past this rung just reports it
            record.launches += 1
            run_training(spark, with_settings(tcfg, {"output.stop_at_epoch": stop}), label=label)
            history = read_metrics(tcfg.model_dir)
        record.epochs_run = len(history)
        record.best, record.best_epoch = best_so_far(
            [r for r in history if stop is None or r["epoch"] <= stop], metric, larger=larger)
        if stop is None:
            return True
        if record.best is not None:
            trial.report(record.best, step=stop)
            if trial.should_prune():
                record.status, record.stopped_at_epoch = "pruned", stop
                log.info("%s: stopped early after epoch %d: %s=%.4f is behind the other trials at that epoch",
                         label, stop, metric, record.best)
                return False
    return True


def _run_trial(spark: Any, cfg: TuneConfig, study: Any, trial: Any, record: TrialRecord, base: Mapping[str, Any],
               stops: list[int], *, larger: bool) -> None:
    """Train one trial rung by rung; fills ``record`` and tells the study. Never raises for a trial failure."""
    import optuna

    started = time.monotonic()
    try:
        tcfg = trial_config(cfg, base, record.params, number=record.trial)
        record.model_dir = tcfg.model_dir
        if not _train_rungs(spark, tcfg, stops, trial, record, cfg.metric, larger=larger):
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return
        if record.best is None:
            raise TuneError(f"{cfg.metric} was never recorded (no validation split, or eval_every_epochs too large)")
        record.status = "completed"
        study.tell(trial, record.best)
    except Exception as exc:  # noqa: BLE001 - any failure ends this trial, recorded with its typed kind; the search goes on
        record.status = "failed"
        record.failure = str(getattr(type(exc), "kind", "error"))  # typed (DivergedError.kind), not from the text
        record.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
        log.warning("trial %d failed: %s", record.trial, record.error)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    finally:
        record.seconds = round(time.monotonic() - started, 1)


class _Search:
    """One search once its dir is checked and leased: the study, the records, and the trials in flight.

    Why a class: the scheduling loop, the results file and the resume all share the records and a lock; as
    attributes they need no closure over a long function's locals."""

    def __init__(self, spark: Any, cfg: TuneConfig, base: Mapping[str, Any], stops: list[int], parallel: int, *,
                 larger: bool) -> None:
        self.spark, self.cfg, self.base, self.stops, self.parallel, self.larger = \
            spark, cfg, base, stops, parallel, larger
        self.records: list[TrialRecord] = []
        self.lock = threading.Lock()
        self.started = time.monotonic()

    def checkpoint_results(self) -> None:
        """trials.json/csv as they stand: a new driver can resume from them."""
        with self.lock:
            write_results(self.cfg, self.records, {"status": "running",
                                                   "seconds": round(time.monotonic() - self.started, 1)})

    def run(self) -> dict[str, Any]:
        """The trials; returns the summary (also in ``trials.json``)."""
        cfg = self.cfg
        kept = _prepare_root(cfg)
        study = make_study(cfg, direction="maximize" if self.larger else "minimize")
        distributions = {k: parse_param(k, v) for k, v in cfg.space.items()}
        self.records = [r for r in kept if r.status != "running"]
        for record in self.records:
            replay(study, record, distributions)
        unfinished = [r for r in kept if r.status == "running"]
        if kept:
            log.info("resuming the search: %d trial(s) finished before, %d to continue (%s)", len(self.records),
                     len(unfinished), ", ".join(str(r.trial) for r in unfinished) or "none")
        numbers = sorted({r.trial for r in unfinished} | set(range(len(kept), cfg.max_trials)))
        stopped = self._schedule(study, distributions, numbers, unfinished)
        return self._finish(stopped)

    def _schedule(self, study: Any, distributions: Mapping[str, Any], numbers: list[int],
                  unfinished: list[TrialRecord]) -> str:
        """Start the trials ``parallel`` at a time; returns why it stopped starting them ("" if it did not)."""
        cfg = self.cfg
        running: dict[Future[None], TrialRecord] = {}
        stopped = ""
        with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="trial") as pool:
            for number in numbers:
                while len(running) >= self.parallel:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        running.pop(future)
                        self.checkpoint_results()
                stopped = failure_streak(self.records, cfg.stop_after_failures)
                if stopped:
                    log.error("%s; not starting the remaining trial(s) from trial %d on", stopped, number)
                    break
                previous = next((r for r in unfinished if r.trial == number), None)
                # a resumed trial gets its values again, and so resumes from its own checkpoints
                fixed = previous.params if previous else cfg.enqueue[number] if number < len(cfg.enqueue) else None
                trial = ask_trial(study, distributions, fixed)
                record = TrialRecord(trial=number, params=dict(trial.params))
                self.records.append(record)
                self.records.sort(key=lambda r: r.trial)
                self.checkpoint_results()  # the trial's values are on disk before it starts: a new driver resumes it
                values = ", ".join(f"{k}={short_value(v)}" for k, v in sorted(record.params.items()))
                log.info("trial %d: %s", number, values)
                running[pool.submit(_run_trial, self.spark, cfg, study, trial, record, self.base, self.stops,
                                    larger=self.larger)] = record
            for future in list(running):
                future.result()
        return stopped

    def _finish(self, stopped: str) -> dict[str, Any]:
        """Results, the best trial's copy and the summary; TuneError when no trial completed."""
        cfg, records = self.cfg, self.records
        finished = [r for r in records if r.status == "completed" and r.best is not None]
        extra: dict[str, Any] = {"status": "stopped" if stopped else "done", "stopped_because": stopped,
                                 "seconds": round(time.monotonic() - self.started, 1),
                                 "parallel_trials": self.parallel, "rungs": self.stops}
        if finished:
            best = (max if self.larger else min)(finished, key=lambda r: r.best)  # type: ignore[arg-type, return-value]
            extra["best"] = {"trial": best.trial, "value": best.best, "epoch": best.best_epoch, "params": best.params,
                             "model_dir": best.model_dir, "export": export_best(cfg, best)}
        write_results(cfg, records, extra)
        log.info("search done in %.0f s:\n%s", extra["seconds"], summary_table(records, cfg.metric))
        if not finished:
            raise TuneError(f"no trial completed ({', '.join(f'{r.trial}: {r.status}' for r in records)}); see "
                            f"{ModelDir(cfg.model_dir).trials_json} for the errors.")
        log.info("best: trial %d, %s=%.4f at epoch %s -> %s", extra["best"]["trial"], cfg.metric,
                 extra["best"]["value"], extra["best"]["epoch"], extra["best"]["export"])
        return {**extra, "trials": [dataclasses.asdict(r) for r in records]}
