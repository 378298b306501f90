"""What the report reads from a model dir: the per-epoch history, the run's config and its MLflow pointer."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imagenet_spark.config import dotted_settings
from imagenet_spark.data import fs
from imagenet_spark.errors import ImagenetSparkError
from imagenet_spark.layout import ModelDir
from imagenet_spark.tracking import RUN_POINTER
from imagenet_spark.train_config import TrainConfig

log = logging.getLogger(__name__)


class ReportError(ImagenetSparkError, ValueError):
    """The report cannot be rendered as asked; the message names the path or setting and the fix."""


@dataclass(frozen=True)
class RunRecord:
    """What the report reads from a model dir: per-epoch history, the run's config and its MLflow pointer."""

    model_dir: str
    history: tuple[dict[str, Any], ...]
    config: dict[str, Any] | None
    mlflow: dict[str, Any] | None


def load_run(model_dir: str) -> RunRecord:
    """Read ``metrics.json`` (required), ``config.json`` and ``mlflow_run.json`` (optional) from a model dir."""
    layout = ModelDir(model_dir)
    metrics_uri = layout.metrics
    if not fs.is_file(metrics_uri):
        raise ReportError(f"model dir {model_dir}: no metrics.json. Fix: pass the --model-dir of a training run "
                          "that has finished at least one epoch (metrics.json is written after every epoch).")
    try:
        history = json.loads(fs.read_text(metrics_uri))
    except ValueError as exc:
        raise ReportError(f"{metrics_uri}: not valid JSON ({exc}). Fix: rerun the training (it rewrites the file "
                          "atomically after every epoch).") from None
    if not isinstance(history, list) or not history or not all(isinstance(r, dict) and "epoch" in r
                                                                  for r in history):
        raise ReportError(f"{metrics_uri}: expected a non-empty list of per-epoch records with 'epoch'. Fix: wait "
                          "for the first epoch to finish, or pass the model dir of another run.")

    def optional(uri: str) -> dict[str, Any] | None:
        try:
            return json.loads(fs.read_text(uri)) if fs.is_file(uri) else None
        except ValueError:
            log.warning("%s: not valid JSON; the report goes on without it", uri)
            return None

    config = optional(layout.config_json)
    return RunRecord(model_dir=model_dir, history=tuple(sorted(history, key=lambda r: r["epoch"])),
                     config=dotted_settings(TrainConfig, config) if config is not None else None,
                     mlflow=optional(layout.join(RUN_POINTER)))


def steps_per_epoch(history: Sequence[Mapping[str, Any]], epochs: float | None) -> int | None:
    """Optimizer steps per epoch, from the global step recorded at the end of the first epoch."""
    first = min(history, key=lambda r: r["epoch"])
    step = first.get("global_step")
    if not isinstance(step, (int, float)) or step <= 0:
        return None
    span = min(float(first["epoch"]), float(epochs)) if epochs else float(first["epoch"])
    return max(1, round(step / span))


def run_title(record: RunRecord) -> str:
    cfg = record.config or {}
    parts = [str(cfg.get("model", "model"))]
    if cfg:
        parts.append(f"{cfg.get('workers', 1)} worker(s), {cfg.get('backend')}, global batch "
                     f"{cfg.get('global_batch_size')}")
    parts.append(f"{len(record.history)} epoch(s)")
    return " · ".join(parts)

