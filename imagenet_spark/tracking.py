"""MLflow tracking of a training run, on the driver, best effort.

What is recorded: the resolved configuration as parameters (plus the derived peak learning rate and
per-worker batch), one value per epoch of every number in a ``metrics.json`` record (loss, top-1/top-5,
validation, images/s, learning rate, times, attempt) at ``step = epoch``, a summary of the attempts, and the
model dir's ``saved_model/``, ``labels.txt``, ``metrics.json`` and ``config.json`` as artifacts.
TensorBoard logs are written by the trainer as before; this is an addition, not a replacement.

Design choices, each for a reason:

* **Where.** ``uri`` when given, else ``MLFLOW_TRACKING_URI`` (Databricks and most MLflow setups set it),
  else ``databricks`` on a Databricks runtime, else a local file store ``mlruns/`` beside the model dir (the
  embedded default: no server, nothing to install beyond the client, browsable with ``mlflow ui``).
* **The client API, not ``mlflow.start_run``.** The fluent API keeps a process-wide "active run" stack; the
  driver may run several trainings (notebook cells, tests) and the per-epoch callback runs on the progress
  server's thread. :class:`MlflowClient` takes the run id explicitly, so no global state is shared.
* **Never fails training.** Every call is guarded: the first failure is logged as one warning with the
  cause and the fix, tracking switches itself off for the rest of the run, and training goes on. An HTTP
  tracking server is probed with a short TCP connect first, because MLflow's own retries would otherwise
  hold up the start of training for minutes when the server is down.
* **Resumable.** ``finish`` back-fills any epoch of ``metrics.json`` the run has not seen (a lost progress
  message, a run resumed by a new driver), and ``DIR/mlflow_run.json`` names the run so the report and
  a later resumption can find it.
* mlflow is imported lazily: the rest of the package (and the executors) never need it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from imagenet_spark.data import fs
from imagenet_spark.errors import ImagenetSparkError
from imagenet_spark.layout import LABELS, ModelDir

if TYPE_CHECKING:  # pragma: no cover - typing only
    from imagenet_spark.train_config import TrainConfig

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "imagenet-spark"
#: Written into the model dir: which tracking store and run hold this training (read by the report).
RUN_POINTER = ModelDir.RUN_POINTER
#: Model dir entries logged as artifacts by :meth:`Tracker.finish` (those that exist).
ARTIFACTS = (ModelDir.SAVED_MODEL, LABELS, ModelDir.METRICS, ModelDir.CONFIG_JSON)
#: Record keys that are not metrics: the step itself, the planned total, the message kind.
_NOT_METRICS = frozenset({"epoch", "epochs", "event"})
_STATUSES = ("FINISHED", "FAILED", "KILLED")
# Conservative limits that hold for old and new MLflow servers alike (newer ones allow 6000 characters).
_MAX_PARAM_CHARS = 500
_MAX_BATCH = 100


class TrackingError(ImagenetSparkError, RuntimeError):
    """Tracking cannot start as configured. :class:`Tracker` logs these (training goes on); they are raised
    only by the helpers, for callers that want to fail on them."""


def resolve_tracking_uri(uri: str | None, *, model_dir: str) -> str:
    """The tracking URI to use: ``uri``, ``MLFLOW_TRACKING_URI``, ``databricks`` on Databricks, or a local
    file store ``<model dir's parent>/mlruns`` (``./mlruns`` when the model dir is not a local path)."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return "databricks"
    local = fs.normalize(model_dir) if model_dir else os.path.abspath("model")
    if "://" in local:  # hdfs:, s3: ...: a file store must be local; keep it beside the driver instead
        root = os.path.abspath("mlruns")
        log.info("model dir %s is not a local path: the MLflow file store goes to %s (pass a tracking URI to "
                 "choose another)", model_dir, root)
    else:
        root = posixpath.join(posixpath.dirname(local.rstrip("/")) or "/", "mlruns")
    return Path(root).as_uri()


def is_file_store(uri: str) -> bool:
    """True for ``file:`` URIs and plain paths (MLflow's file store)."""
    scheme = urlparse(uri).scheme
    return scheme in ("", "file") and not uri.startswith("databricks")


def check_reachable(uri: str, *, timeout_s: float) -> None:
    """For ``http(s)://`` URIs: a TCP connect within ``timeout_s``, else :class:`TrackingError` naming the URI
    and the fix. Other schemes are not probed (file stores, ``databricks``, databases)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise TrackingError(f"tracking URI {uri}: cannot connect to {parsed.hostname}:{port} within {timeout_s:g} s "
                            f"({exc}). Fix: start the MLflow server, pass another tracking URI, or turn tracking "
                            "off.") from None


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def run_params(cfg: TrainConfig) -> dict[str, str]:
    """Every setting of the run as an MLflow parameter named by its dotted key (``recipe.base_lr``; MLflow's UI
    sorts them, so a section's settings sit together), plus the derived values a reader compares runs by."""
    from imagenet_spark.config import dotted_settings, to_dict
    from imagenet_spark.train_config import TrainConfig

    params = {key: _param_value(value) for key, value in dotted_settings(TrainConfig, to_dict(cfg)).items()}
    params["peak_learning_rate"] = _param_value(round(cfg.learning_rate, 8))
    params["per_worker_batch"] = _param_value(cfg.per_worker_batch)
    return params


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one ``metrics.json`` record (or ``epoch`` progress message) as metric values."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[key] = float(value)
    return out


class Tracker:
    """One training run in MLflow, driven by the training launcher on the driver.

    Use: ``start(cfg)`` before the launch, ``log_epoch(msg)`` for every ``epoch`` progress message,
    ``finish(result, model_dir=...)`` after training, ``close(status)`` always (or use it as a context
    manager, which closes with ``FAILED`` on an exception). Safe to call from several threads; every
    method is a no-op when tracking is off or has failed.
    """

    def __init__(self, *, uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT, enabled: bool = True,
                 probe_timeout_s: float = 5.0) -> None:
        self._uri = uri
        self.experiment = experiment or DEFAULT_EXPERIMENT
        self.enabled = enabled
        self._probe_timeout_s = probe_timeout_s
        self._client: Any = None
        self._lock = threading.RLock()
        self._logged_epochs: set[int] = set()
        self._failed = False
        self._closed = False
        self.tracking_uri: str | None = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None

    # --- state

    @property
    def active(self) -> bool:
        """True while a run is open and tracking has not failed."""
        return self.enabled and not self._failed and not self._closed and self.run_id is not None

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turn any tracking failure into one warning and switch tracking off: training must go on."""
        try:
            with self._lock:
                yield
        except Exception as exc:  # noqa: BLE001 - whatever the store raises, training continues
            self._failed = True
            text = str(exc).splitlines()[0][:400] if str(exc) else ""
            if isinstance(exc, TrackingError):  # our own message already names the fix
                fix = ""
            elif isinstance(exc, ImportError):
                fix = " Fix: install the client (pip install mlflow-skinny; requirements/*.lock pin it), or turn " \
                      "tracking off."
            else:
                fix = " Fix: check the tracking URI and that the store is writable, or turn tracking off."
            log.warning("MLflow tracking (%s, %s) failed: %s: %s Training continues without tracking.%s", what,
                        self.tracking_uri or self._uri or "default store", type(exc).__name__, text, fix)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    # --- the run

    def start(self, cfg: TrainConfig, *, run_name: str | None = None) -> str | None:
        """Open a run in the experiment (created if missing) and log the parameters; returns the run id (None
        when tracking is off or could not start)."""
        if not self.enabled:
            log.info("MLflow tracking is off")
            return None
        if self.run_id is not None:
            return self.run_id
        with self._guard("start"):
            uri = resolve_tracking_uri(self._uri, model_dir=cfg.model_dir)
            self.tracking_uri = uri
            check_reachable(uri, timeout_s=self._probe_timeout_s)
            if is_file_store(uri):
                # MLflow >= 3 keeps the file store in maintenance mode and refuses it unless opted in; it is the
                # right store for a run without a server. A user's own setting of the variable wins.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            from mlflow.entities import Param, RunTag
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=uri)
            experiment = self.experiment
            if uri.startswith("databricks") and not experiment.startswith("/"):
                experiment = f"/Shared/{experiment}"  # Databricks experiments are workspace paths
            self.experiment_id = self._experiment_id(client, experiment)
            previous = self._previous_run(cfg.model_dir, uri)
            tags = {"imagenet_spark.model": cfg.model, "imagenet_spark.backend": cfg.backend,
                    "imagenet_spark.workers": str(cfg.workers), "imagenet_spark.data": cfg.data,
                    "imagenet_spark.model_dir": cfg.model_dir}
            if previous:
                tags["imagenet_spark.previous_run_id"] = previous
            name = run_name or f"{cfg.model} {cfg.workers}x{cfg.backend} {time.strftime('%Y-%m-%d %H:%M:%S')}"
            run = client.create_run(self.experiment_id, run_name=name, tags=tags)
            self._client = client
            self.run_id = run.info.run_id
            params = [Param(k, v) for k, v in sorted(run_params(cfg).items())]
            for i in range(0, len(params), _MAX_BATCH):
                client.log_batch(self.run_id, params=params[i:i + _MAX_BATCH],
                                 tags=[RunTag("imagenet_spark.params", str(len(params)))] if i == 0 else [])
            self._write_pointer(cfg.model_dir)
            log.info("MLflow: run %s in experiment %r at %s", self.run_id, experiment, uri)
        return self.run_id if self.active else None

    @staticmethod
    def _experiment_id(client: Any, name: str) -> str:
        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(client.create_experiment(name))
        except Exception:  # another driver created it in between: use theirs
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _previous_run(self, model_dir: str, uri: str) -> str | None:
        """The run id recorded in the model dir by an earlier driver on the same store (a resumed training)."""
        try:
            pointer = json.loads(fs.read_text(ModelDir(model_dir).run_pointer))
        except (OSError, ValueError):
            return None
        return pointer.get("run_id") if pointer.get("tracking_uri") == uri else None

    def _write_pointer(self, model_dir: str) -> None:
        try:
            fs.make_dirs(model_dir)
            fs.write_text_atomic(ModelDir(model_dir).run_pointer, json.dumps(
                {"tracking_uri": self.tracking_uri, "experiment": self.experiment, "experiment_id": self.experiment_id,
                 "run_id": self.run_id}, indent=1))
        except OSError as exc:  # the pointer is a convenience; the run itself is recorded
            log.info("could not write %s in %s: %s", RUN_POINTER, model_dir, exc)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """Log one epoch: every number in ``record`` at ``step = record["epoch"]``. Accepts the ``epoch``
        progress messages as they arrive on the driver (other events are ignored)."""
        if not self.active or record.get("event", "epoch") != "epoch" or "epoch" not in record:
            return
        with self._guard(f"epoch {record.get('epoch')}"):
            from mlflow.entities import Metric

            step = int(record["epoch"])
            now = int(time.time() * 1000)
            metrics = [Metric(key, value, now, step) for key, value in sorted(epoch_metrics(record).items())]
            for i in range(0, len(metrics), _MAX_BATCH):
                self._client.log_batch(self.run_id, metrics=metrics[i:i + _MAX_BATCH])
            self._logged_epochs.add(step)

    def finish(self, result: Mapping[str, Any], *, model_dir: str) -> None:
        """After training: back-fill epochs not seen live, log the attempts summary and the artifacts."""
        if not self.active:
            return
        history = result.get("history")
        if history is None:
            from imagenet_spark.train.reporting import read_metrics

            with self._guard("read metrics.json"):
                history = read_metrics(model_dir)
        for record in history or ():
            if int(record.get("epoch", 0)) not in self._logged_epochs:
                self.log_epoch(record)
        with self._guard("summary"):
            from mlflow.entities import Metric

            attempts = list(result.get("attempts") or ())
            now = int(time.time() * 1000)
            summary = {"attempts": len(attempts),
                       "failed_attempts": sum(1 for a in attempts if a.get("status") != "ok"),
                       "attempts_seconds": sum(float(a.get("seconds") or 0.0) for a in attempts)}
            final = result.get("metrics") or {}
            if isinstance(final.get("global_step"), (int, float)):
                summary["global_step"] = float(final["global_step"])
            if summary["attempts"] or "global_step" in summary:
                self._client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, 0)
                                                             for k, v in sorted(summary.items())])
            if attempts:
                self._client.set_tag(self.run_id, "imagenet_spark.attempts", json.dumps(attempts)[:5000])
        with self._guard("artifacts"):
            self._log_artifacts(model_dir)

    def _log_artifacts(self, model_dir: str) -> None:
        """Log the model dir's artifacts; a non-local model dir (hdfs:, s3:) is copied to a local temp dir first,
        because MLflow's artifact API takes local paths."""
        root = fs.normalize(model_dir)
        present = [name for name in ARTIFACTS if fs.exists(fs.join(root, name))]
        if not present:
            log.info("MLflow: no artifacts in %s yet", model_dir)
            return
        scratch = None
        try:
            if "://" in root:
                scratch = tempfile.mkdtemp(prefix="imagenet-spark-mlflow-")
                for name in present:
                    source = fs.join(root, name)
                    entries = fs.list_files(source) if fs.is_dir(source) else [fs.FileEntry(source, "", -1)]
                    for entry in entries:
                        target = os.path.join(scratch, name, entry.relpath) if entry.relpath else \
                            os.path.join(scratch, name)
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        with open(target, "wb") as f:
                            f.write(fs.read_bytes(entry.uri))
                local = scratch
            else:
                local = root
            for name in present:
                path = os.path.join(local, name)
                if os.path.isdir(path):
                    self._client.log_artifacts(self.run_id, path, artifact_path=name)
                else:
                    self._client.log_artifact(self.run_id, path)
            log.info("MLflow: logged %s from %s", ", ".join(present), model_dir)
        finally:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)

    def close(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED); idempotent."""
        if status not in _STATUSES:
            raise TrackingError(f"status={status!r}: must be one of {', '.join(_STATUSES)}")
        if self._closed or self.run_id is None or self._client is None:
            self._closed = True
            return
        with self._guard("close"):
            self._client.set_terminated(self.run_id, status)
        self._closed = True


def run_location(tracking_uri: str, experiment_id: str | None, run_id: str | None) -> str | None:
    """Where a file-store run lives on disk (what a person opens, or points ``mlflow ui`` at); None for servers,
    which have their own UI."""
    if not run_id or not is_file_store(tracking_uri):
        return None
    root = urlparse(tracking_uri).path if tracking_uri.startswith("file:") else tracking_uri
    return os.path.join(root, str(experiment_id), run_id)
