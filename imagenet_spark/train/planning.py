"""Driver-side planning of a training run: everything checked and computed before any executor starts.

Why on the driver: a dataset with too few row groups, a batch that does not split, a model dir holding a
different run: each of these would otherwise surface minutes later, inside an executor log, as a hang or
a cryptic TensorFlow error. No Spark and no TensorFlow here.
"""

from __future__ import annotations

import json
import logging

from imagenet_spark import jsonio, ownership
from imagenet_spark.config import changed_settings, to_dict
from imagenet_spark.data import fs
from imagenet_spark.data.augment import augment_spec
from imagenet_spark.data.schema import DatasetError
from imagenet_spark.layout import DatasetDir, ModelDir
from imagenet_spark.models import eval_resize_for
from imagenet_spark.models import info as model_info
from imagenet_spark.train.loop import RunPlan
from imagenet_spark.train.schedules import steps_for, warmup_clamp_note
from imagenet_spark.train_config import TrainConfig

log = logging.getLogger(__name__)



def make_run_plan(cfg: TrainConfig) -> RunPlan:
    from imagenet_spark.data.metadata import load_plan

    dataset = DatasetDir(cfg.data)
    if not dataset.is_finished():
        hint = " (an interrupted partition run: rerun it with --resume)" if dataset.is_interrupted() else ""
        raise DatasetError(f"data={cfg.data!r}: no {DatasetDir.MANIFEST}, so not a finished dataset{hint}. Fix: point "
                           "--data at the --output of jobs/partition.py.")
    labels = [line for line in fs.read_text(dataset.labels).splitlines() if line.strip()]
    info = model_info(cfg.model)
    image_size = cfg.image_size or info.image_size
    eval_resize = info.eval_resize if cfg.image_size is None else eval_resize_for(image_size)
    train = load_plan(cfg.data, "train", workers=cfg.workers, per_worker_batch=cfg.per_worker_batch,
                      shard_by=cfg.input.shard_by, drop_remainder=True)
    validation = None
    if dataset.has_split("validation"):
        validation = load_plan(cfg.data, "validation", workers=cfg.workers, per_worker_batch=cfg.per_worker_batch,
                               drop_remainder=False)
    if cfg.output.export == "best" and validation is None:
        raise DatasetError(f"export='best' keeps the epoch with the best {cfg.output.best_metric}, but {cfg.data} has "
                           "no validation split. Fix: --set output.export=last, or partition a dataset with validation "
                           "images.")
    total = steps_for(cfg.epochs, train.steps_per_epoch)
    augment = augment_spec(cfg, eval_resize=eval_resize)
    manifest = json.loads(fs.read_text(dataset.manifest))
    plan = RunPlan(num_classes=len(labels), image_size=image_size, eval_resize=eval_resize, mean=info.mean,
                   std=info.std, train=train, validation=validation, steps_per_epoch=train.steps_per_epoch,
                   total_steps=total, resize_short=manifest.get("config", {}).get("resize_short"),
                   augment=augment)
    log.info("train transform: %s", augment.describe())
    clamp = warmup_clamp_note(cfg.recipe.warmup_epochs, cfg.epochs, cfg.recipe.warmup_max_fraction)
    if clamp:  # logged here only: the workers build the same schedule silently
        log.info("%s", clamp)
    log.info("plan: %d classes, %d train images -> %d workers x %d per step, %d steps/epoch, %d steps total; "
             "peak lr %.4g (base %.4g x %d/256); validation %s", plan.num_classes, train.total_rows, cfg.workers,
             cfg.per_worker_batch, train.steps_per_epoch, total, cfg.learning_rate, cfg.recipe.base_lr,
             cfg.global_batch_size, f"{validation.total_rows} images" if validation else "none")
    return plan


# Keys every config.json the trainer ever wrote holds: how a model dir from before the ownership marker is known.
_MODEL_DIR_KEYS = frozenset({"data", "model_dir", "model", "global_batch_size", "epochs"})


def is_model_dir(directory: str) -> bool:
    """Whether ``directory`` is a model dir the trainer wrote before it marked its dirs (ownership.MARKER): its
    config.json is a JSON object holding TrainConfig's keys. A dataset, or a user's folder, is not."""
    uri = ModelDir(directory).config_json
    try:
        if not fs.is_file(uri):
            return False
        data = json.loads(fs.read_text(uri))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and set(data) >= _MODEL_DIR_KEYS


def check_model_dir(cfg: TrainConfig) -> bool:
    """Refuse, before any work, a model dir the trainer must not write: one that overlaps the dataset (equal,
    inside or containing it: ``--overwrite`` would delete the dataset's files), or one that exists, is not empty
    and was not made by the trainer (a dataset, a search dir, a user's folder), ``--overwrite`` or not.
    Returns True when it holds an earlier run of ours."""
    ownership.check_disjoint("model_dir", cfg.model_dir, "data", cfg.data)
    return ownership.check_ours("model_dir", cfg.model_dir, "model_dir", is_model_dir)


def prepare_model_dir(cfg: TrainConfig) -> str:
    """Start, resume or refuse: returns "new" or "resume". A model dir with checkpoints of another config is
    refused (resuming it would silently mix runs) unless --overwrite, which deletes only the files the trainer
    writes, and only in a dir it marked as its own (checked again here: the caller holds the dir's lease now)."""
    check_model_dir(cfg)
    model_dir = ModelDir(cfg.model_dir)
    config_uri = model_dir.config_json
    has_state = model_dir.has_state()
    if has_state and cfg.overwrite:
        for name in ModelDir.TRAINER_FILES:
            if fs.exists(model_dir.join(name)):
                fs.delete(model_dir.join(name))
        has_state = False
    mode = "new"
    current = to_dict(cfg)
    if has_state and fs.exists(config_uri):
        # A setting added after the run was written is absent from its config.json: it ran with the default.
        # Only settings marked resumable may differ (config.py); an old flat config.json maps to the sections.
        changed = changed_settings(TrainConfig, json.loads(fs.read_text(config_uri)), cfg)
        if changed:
            key, was, now = changed[0]
            raise DatasetError(f"model_dir={cfg.model_dir!r} holds a run with {key}={was!r}, not {now!r}. "
                               "Fix: resume with the same settings, pass --overwrite to start over, or use another "
                               "--model-dir.")
        mode = "resume"
    fs.make_dirs(cfg.model_dir)
    ownership.write_mark(cfg.model_dir, "model_dir")
    fs.write_text_atomic(config_uri, jsonio.dumps(current, indent=1))
    labels = fs.read_text(DatasetDir(cfg.data).labels)
    fs.write_text_atomic(model_dir.labels, labels)
    return mode
