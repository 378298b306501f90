"""Typed configuration: frozen dataclasses, YAML presets and dotted ``--set key=value`` overrides.

Why one mechanism: every job resolves its configuration exactly once, on the driver, from (in order)
the dataclass defaults, a YAML preset (which may itself derive from another preset via ``base:``),
dotted overrides and explicit command-line flags. The result is frozen and validated before any
Spark work starts, and crosses to executors as a plain dict (``to_dict``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from imagenet_spark.errors import ImagenetSparkError

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConfigError(ImagenetSparkError, ValueError):
    """A setting has a value we cannot run with. The message names the setting, the value and the fix."""

    def __init__(self, setting: str, value: Any, problem: str, fix: str = "") -> None:
        self.setting = setting
        self.value = value
        message = f"{setting}={value!r}: {problem}"
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, allows None) for ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _coerce(setting: str, tp: Any, value: Any) -> Any:
    """Convert a YAML/override value to the annotated type, or raise ConfigError naming the setting."""
    inner, optional = _strip_optional(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise ConfigError(setting, value, "this setting cannot be empty.")
    if dataclasses.is_dataclass(inner):
        if isinstance(value, inner):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(setting, value, f"expected a mapping of {inner.__name__} settings.")
        return _build(inner, value, prefix=f"{setting}.")
    origin = typing.get_origin(inner)
    if origin in (tuple, list):
        (item_tp, *_rest) = typing.get_args(inner) or (Any,)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(setting, value, "expected a list.")
        return tuple(_coerce(f"{setting}[{i}]", item_tp, v) for i, v in enumerate(value))
    if origin is typing.Literal:
        allowed = typing.get_args(inner)
        if value not in allowed:
            raise ConfigError(setting, value, f"must be one of {', '.join(map(str, allowed))}.")
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(setting, value, "expected true or false.")
    if inner is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(setting, value, "expected an integer.")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(setting, value, "expected an integer.") from None
    if inner is float:
        if isinstance(value, bool):
            raise ConfigError(setting, value, "expected a number.")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(setting, value, "expected a number.") from None
        if not math.isfinite(number):  # nan/inf pass every range check written as a comparison
            raise ConfigError(setting, value, "must be a finite number (not nan or inf).",
                              f"give {setting} a finite value.")
        return number
    if inner is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(setting, value, "expected a string.")
        return str(value)
    return value


def check_finite(config: Any) -> None:
    """Refuse nan/inf in any float setting (also inside tuples) of a config however it was built: ``resolve``
    already refuses them while parsing, this catches configs made with the constructor or ``replace``. Why:
    ``nan`` passes every range check written as a comparison (``nan <= 0`` is False) and then trains to a NaN
    model; absurd but finite values stay allowed (the trainer's divergence check stops those)."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(field.name, value, "must be a finite number (not nan or inf).",
                                  f"give {field.name} a finite value.")


def _build(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            prefix + unknown[0],
            values[unknown[0]],
            "unknown setting.",
            f"valid settings here are: {', '.join(sorted(names))}.",
        )
    kwargs = {k: _coerce(prefix + k, hints[k], v) for k, v in values.items()}
    return cls(**kwargs)


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def read_preset(path: str | Path) -> dict[str, Any]:
    """Read a YAML preset, following ``base:`` (relative to the preset) so presets derive from others."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", str(path), "no such preset file.", "pass a path to a YAML file under conf/.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("--config", str(path), f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError("--config", str(path), "a preset must be a YAML mapping of settings.")
    base = data.pop("base", None)
    if base:
        return _merge(read_preset(path.parent / base), data)
    return data


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=0.1", "epochs=3"]`` into a nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", item, "expected key=value.", "write for example --set quality=85.")
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("--set", item, f"{part} is set both as a value and as a section.")
        node[parts[-1]] = value
    return out


def resolve(
    cls: type[T],
    *,
    preset: str | Path | None = None,
    overrides: Sequence[str] = (),
    explicit: Mapping[str, Any] | None = None,
) -> T:
    """Defaults < preset < --set overrides < explicit flags; returns the validated, frozen config."""
    values: dict[str, Any] = {}
    if preset:
        values = read_preset(preset)
    values = _merge(values, parse_overrides(overrides))
    values = _merge(values, {k: v for k, v in (explicit or {}).items() if v is not None})
    config = _build(cls, values)
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """Plain, picklable dict of a config: what crosses the driver→executor boundary."""
    return dataclasses.asdict(config)


def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Rebuild a config from ``to_dict`` output (on an executor)."""
    return _build(cls, values)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PartitionConfig:
    """Settings of the partition job (``jobs/partition.py``). See conf/partition/ for presets."""

    input: str = ""
    output: str = ""
    # auto | ilsvrc | tar | kaggle | folders | csv
    layout: str = "auto"
    # Resize so the short side is this many pixels (never upscale); None keeps the original size.
    resize_short: typing.Optional[int] = 256
    quality: int = 90
    # Images with more pixels than this are quarantined (decompression-bomb guard).
    max_pixels: int = 89_478_485
    # Bytes of a rejected input kept in DST/rejects/ (per file; 0 keeps none). A larger file keeps empty bytes and
    # a detail saying so: the quarantine is for looking at bad inputs, not a second copy of a huge one.
    reject_bytes_cap: int = 16 << 20
    # The job fails (and publishes nothing) when more than this fraction of inputs is rejected.
    max_reject_fraction: float = 0.01
    # Most images per Spark task and per Parquet file (a class larger than this is cut into files of this many).
    # Small classes are packed into one task up to ~1/3 of a slot's share of the input (one file per class
    # still), so a tree of many small classes is not one task per class. Bounds the work lost on a retry.
    images_per_task: int = 256
    # Rows per Parquet row group: the unit petastorm shards by (row group i goes to worker i mod N).
    rows_per_row_group: int = 64
    # Optional files overriding what the layout finds: label order, validation labels.
    labels_file: typing.Optional[str] = None
    val_labels: typing.Optional[str] = None
    overwrite: bool = False
    resume: bool = False
    dry_run: bool = False
    tfrecord: bool = False
    # TFRecord shards per split; None sizes them from the data (imagenet_to_gcs's records per shard, so
    # ImageNet itself gets its 1024 + 128, and at most ~128 MiB per shard; see data/tfrecord.py).
    tfrecord_train_shards: typing.Optional[int] = None
    tfrecord_validation_shards: typing.Optional[int] = None
    # Fault injection for tests and drills: "TASK_PREFIX" fails the first attempt of matching tasks (Spark
    # retries them), "always:TASK_PREFIX" fails every attempt (the job fails; rerun with --resume), "publish"
    # stops the driver after it moved the first split into place (rerun with --resume).
    inject_failure: typing.Optional[str] = None
    # Spark parallelism for listing/processing; None lets Spark decide from the cluster's default parallelism.
    num_partitions: typing.Optional[int] = None

    def validate(self) -> None:
        check_finite(self)
        if not self.input:
            raise ConfigError("input", self.input, "no input given.", "pass --input DIR (or a URI).")
        if not self.output and not self.dry_run:
            raise ConfigError("output", self.output, "no output given.", "pass --output DIR (or a URI).")
        layouts = ("auto", "ilsvrc", "tar", "kaggle", "folders", "csv")
        if self.layout not in layouts:
            raise ConfigError("layout", self.layout, f"unknown layout; known: {', '.join(layouts)}.")
        if self.resize_short is not None and not 8 <= self.resize_short <= 4096:
            raise ConfigError("resize_short", self.resize_short, "must be between 8 and 4096, or none.")
        if not 1 <= self.quality <= 100:
            raise ConfigError("quality", self.quality, "JPEG quality must be between 1 and 100.")
        if self.max_pixels < 1:
            raise ConfigError("max_pixels", self.max_pixels, "must be positive.")
        if self.reject_bytes_cap < 0:
            raise ConfigError("reject_bytes_cap", self.reject_bytes_cap, "must be 0 (keep no bytes) or more.",
                              "pass a size in bytes, e.g. --set reject_bytes_cap=16777216.")
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise ConfigError("max_reject_fraction", self.max_reject_fraction, "must be between 0 and 1.")
        if self.images_per_task < 1:
            raise ConfigError("images_per_task", self.images_per_task, "must be at least 1.")
        if not 1 <= self.rows_per_row_group <= self.images_per_task:
            raise ConfigError(
                "rows_per_row_group",
                self.rows_per_row_group,
                f"must be between 1 and images_per_task ({self.images_per_task}).",
            )
        if self.overwrite and self.resume:
            raise ConfigError("resume", self.resume, "--resume and --overwrite contradict each other.", "pick one.")
        for name in ("tfrecord_train_shards", "tfrecord_validation_shards"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(name, getattr(self, name), "must be at least 1, or none (sized from the data).")
        if self.num_partitions is not None and self.num_partitions < 1:
            raise ConfigError("num_partitions", self.num_partitions, "must be at least 1.")


BACKENDS = ("off", "mirrored", "mwms", "horovod")
SCHEDULES = ("cosine", "step", "constant")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
# The train transform's presets (data/augment.py PRESETS): imagenet = Inception crop + flip (the default), light =
# a milder crop for small or centred images, none = the eval transform. Spelled once here; fields use the alias.
AugmentPreset = typing.Literal["imagenet", "light", "none"]
# Warmup is at most this fraction of the run (train/schedules.py effective_warmup_epochs): every preset's warmup
# is within it, and any positive --epochs works with the default 5 warmup epochs.
WARMUP_MAX_FRACTION = 1.0 / 3.0
EXPORTS = ("last", "best")
# Validation metrics an epoch records, and whether larger is better (the search and --export best use them).
VAL_METRICS = {"val_top1": True, "val_top5": True, "val_loss": False}


def _check_range(setting: str, value: tuple[float, ...] | None, *, low: float, high: float, fix: str) -> None:
    """A ``[min, max]`` setting: two numbers, ``low < min <= max <= high``; None (unset) passes."""
    if value is None:
        return
    if len(value) != 2 or not low < value[0] <= value[1] <= high:
        upper = "" if math.isinf(high) else f" <= {high:g}"
        raise ConfigError(setting, value, f"must be two numbers min,max with {low:g} < min <= max{upper}.", fix)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Settings of the training job (``jobs/train_barrier.py``). See conf/train/ for presets.

    The global batch size is canonical: each of the ``workers`` processes gets ``global_batch_size /
    workers`` images per step, and the learning rate follows the linear scaling rule,
    ``base_lr * global_batch_size / 256``, whatever the backend.
    """

    data: str = ""
    model_dir: str = ""
    model: str = "resnet50"
    # Input size; None takes the model's own default (224 for the real models, 32 for the tiny ones).
    image_size: typing.Optional[int] = None
    workers: int = 1
    # off (one process, default device) | mirrored (one process, all local GPUs) | mwms | horovod
    backend: str = "mwms"
    epochs: float = 90.0
    global_batch_size: int = 256
    # row_group: class-mixed shards (petastorm row group i -> worker i mod N); synset: each worker its own synsets
    shard_by: str = "row_group"
    # --- recipe
    base_lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    # Linear warmup of min(warmup_epochs, warmup_max_fraction x epochs) epochs (logged when clamped).
    warmup_epochs: float = 5.0
    warmup_max_fraction: float = WARMUP_MAX_FRACTION
    schedule: str = "cosine"
    # step schedule: multiply the rate by step_factor at each of these epochs
    step_epochs: tuple[float, ...] = (30.0, 60.0, 80.0)
    step_factor: float = 0.1
    bn_momentum: float = 0.9
    dropout: typing.Optional[float] = None
    batch_norm: typing.Optional[bool] = None
    precision: str = "float32"
    xla: bool = False
    # --- batch mixing (data/mix.py) and weight averaging (train/ema.py); README "Training recipes"
    # Mixup (Zhang et al. 2018) / CutMix (Yun et al. 2019): Beta(alpha, alpha) per batch, 0 = off. With both on,
    # each batch uses one of them (probability 1/2 each); mix_prob: the share of batches mixed at all.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    # Exponential moving average of the weights (Polyak averaging), evaluated and exported instead of the raw
    # weights when on; 0 = off. ema_warmup: decay min(ema_decay, (1+n)/(10+n)) at update n (TF-models), so a
    # short run is not dominated by the initial weights.
    ema_decay: float = 0.0
    ema_warmup: bool = True
    # --- input pipeline
    seed: int = 0
    shuffle_buffer: int = 4096
    # Train transform (data/augment.py; README "Training recipes"): a preset, then explicit overrides of it.
    # crop_area / crop_aspect: [min, max] of the random crop's share of the image area and of its aspect ratio;
    # flip_prob: chance of a horizontal flip; None keeps the preset's. randaugment_layers N > 0 adds RandAugment
    # (N ops per image at magnitude 0..10; Cubuk et al. 2020 use N=2, M=9 for ImageNet ResNet-50).
    augment: AugmentPreset = "imagenet"
    crop_area: typing.Optional[tuple[float, float]] = None
    crop_aspect: typing.Optional[tuple[float, float]] = None
    flip_prob: typing.Optional[float] = None
    randaugment_layers: int = 0
    randaugment_magnitude: float = 9.0
    # Petastorm reader threads per worker. 1 keeps the row order exactly reproducible for a seed: with more,
    # petastorm's round robin skips a worker whose next row group is not ventilated yet, so under load the
    # order depends on timing. One thread reads ~20k rows/s here, far above what decoding consumes; raise it
    # only for slow remote storage.
    reader_workers: int = 1
    decode_threads: typing.Optional[int] = None
    # --- threads per worker (distribute/threads.py): TensorFlow's intra/inter-op pools and tf.data's pool.
    # None: the task's spark.task.cpus (a GPU worker: its share of the host's cores, if larger; one worker on
    # the driver: the host's cores); 0: TensorFlow's unsized defaults (every core), for comparison only.
    cpus_per_worker: typing.Optional[int] = None
    # How the training stream reads the dataset: "petastorm" (make_batch_reader; it unpickles the Unischema in
    # _common_metadata, so a dataset from an untrusted source can run code) or "parquet" (pyarrow only, by the
    # Parquet schema: nothing is unpickled); "auto": petastorm where it is installed (legacy stack), else
    # parquet. Evaluation and planning never unpickle either way.
    train_reader: str = "auto"
    # --- evaluation, checkpoints, fault tolerance
    eval_every_epochs: int = 1
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 3
    # A NaN/inf loss or gradient norm stops the run (DivergedError, not retried, nothing exported). Checked where
    # the loop reads the running loss, at most this many steps apart (0: at the loop's own cadence, up to 50
    # steps). Each check is one host sync; measured here it costs nothing visible on resnet18 at 64 px.
    divergence_check_steps: int = 10
    max_retries: int = 2
    # Fault injection: fail once, on the first attempt, when the global step reaches this (rank fail_rank).
    fail_at_step: typing.Optional[int] = None
    fail_rank: int = 0
    # Fault injection: on the first attempt, this rank's exchanged TensorFlow port is taken (held open) before
    # TensorFlow binds it, as another process on its host might; proves the relaunch with fresh ports.
    inject_port_conflict_rank: typing.Optional[int] = None
    # --- launch
    barrier_timeout_s: int = 600
    slots_wait_s: int = 60
    progress_every_s: float = 10.0
    horovod_fp16_allreduce: bool = False
    network_interface: typing.Optional[str] = None
    # MWMS: make TensorFlow's gRPC server listen on the task's own address instead of every interface (TF 2.15
    # has no setting for it; a preloaded bind shim, compiled on the executor, rewrites that one bind).
    bind_tf_to_host: bool = True
    # The resume contract: a model dir already holding checkpoints is resumed, never silently restarted.
    overwrite: bool = False
    # --- what is exported, and where a run pauses
    # last: the weights after the final epoch; best: the evaluated epoch with the best ``best_metric`` (kept
    # as its own checkpoint, checkpoints/best/, so a later worse epoch cannot overwrite it).
    export: str = "last"
    best_metric: str = "val_top1"
    # Stop (checkpointed, resumable, not exported) after this epoch while the learning-rate schedule still
    # spans ``epochs``: how the search (jobs/tune.py) runs a trial to a rung and decides whether to continue.
    stop_at_epoch: typing.Optional[int] = None
    # --- tracking: MLflow run per training (a file store beside the model dir unless a URI is given/set)
    track: bool = True
    tracking_uri: typing.Optional[str] = None
    experiment: str = "imagenet-spark"

    def validate(self) -> None:
        from imagenet_spark.models import available

        check_finite(self)
        if not self.data:
            raise ConfigError("data", self.data, "no dataset given.", "pass --data DIR written by jobs/partition.py.")
        if not self.model_dir:
            raise ConfigError("model_dir", self.model_dir, "no model directory given.", "pass --model-dir DIR.")
        if self.model not in available():
            raise ConfigError("model", self.model, "unknown model.", f"choose one of {', '.join(available())}.")
        if self.backend not in BACKENDS:
            raise ConfigError("backend", self.backend, f"unknown backend; known: {', '.join(BACKENDS)}.")
        if self.workers < 1:
            raise ConfigError("workers", self.workers, "must be at least 1.")
        if self.backend in ("off", "mirrored") and self.workers != 1:
            raise ConfigError("backend", self.backend, f"runs one process, but workers={self.workers}.",
                              "use --backend mwms or horovod for several workers.")
        if self.global_batch_size < 1 or self.global_batch_size % self.workers:
            raise ConfigError(
                "global_batch_size", self.global_batch_size,
                f"must be a positive multiple of workers={self.workers} (each worker gets an equal share).",
                f"use {max(self.workers, self.global_batch_size // self.workers * self.workers)} or "
                f"{(self.global_batch_size // self.workers + 1) * self.workers}.")
        if self.epochs <= 0:
            raise ConfigError("epochs", self.epochs, "must be positive.")
        if self.cpus_per_worker is not None and self.cpus_per_worker < 0:
            raise ConfigError("cpus_per_worker", self.cpus_per_worker, "must be 0 (unsized) or more.",
                              "leave it unset to follow spark.task.cpus.")
        if self.shard_by not in ("row_group", "synset"):
            raise ConfigError("shard_by", self.shard_by, "must be row_group or synset.")
        from imagenet_spark.distribute.stack import check_train_config

        check_train_config(self)  # train_reader's values; horovod or petastorm asked on a stack without them
        if self.schedule not in SCHEDULES:
            raise ConfigError("schedule", self.schedule, f"unknown schedule; known: {', '.join(SCHEDULES)}.")
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", self.precision, f"unknown precision; known: {', '.join(PRECISIONS)}.")
        if self.base_lr <= 0:
            raise ConfigError("base_lr", self.base_lr, "must be positive.")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing", self.label_smoothing, "must be in [0, 1).")
        self._validate_mix_and_ema()
        self._validate_warmup()
        self._validate_augment()
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError("image_size", self.image_size, "must be at least 16 pixels.")
        if self.max_retries < 0:
            raise ConfigError("max_retries", self.max_retries, "must be 0 or more.")
        if self.export not in EXPORTS:
            raise ConfigError("export", self.export, f"must be one of {', '.join(EXPORTS)}.")
        if self.best_metric not in VAL_METRICS:
            raise ConfigError("best_metric", self.best_metric, f"unknown metric; known: {', '.join(VAL_METRICS)}.")
        if self.stop_at_epoch is not None and not 1 <= self.stop_at_epoch:
            raise ConfigError("stop_at_epoch", self.stop_at_epoch, "must be 1 or more (or none).")
        if self.fail_rank >= self.workers:
            raise ConfigError("fail_rank", self.fail_rank, f"there are only {self.workers} workers.")
        if self.inject_port_conflict_rank is not None and not 0 <= self.inject_port_conflict_rank < self.workers:
            raise ConfigError("inject_port_conflict_rank", self.inject_port_conflict_rank,
                              f"must be a rank below workers={self.workers}.", "pass 0 or none.")
        if self.checkpoint_every_steps < 0:
            raise ConfigError("checkpoint_every_steps", self.checkpoint_every_steps, "must be 0 (epochs only) or more.")
        if self.divergence_check_steps < 0:
            raise ConfigError("divergence_check_steps", self.divergence_check_steps,
                              "must be 0 (at the loop's cadence, up to 50 steps) or more.", "pass 10.")

    def _validate_mix_and_ema(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ConfigError(name, getattr(self, name), "must be 0 (off) or positive.",
                                  f"pass --set {name}=0.2 (mixup) or 1.0 (cutmix), or 0.")
        if not 0 <= self.mix_prob <= 1:
            raise ConfigError("mix_prob", self.mix_prob, "must be in [0, 1].", "pass --set mix_prob=1.0.")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError("ema_decay", self.ema_decay, "must be in [0, 1) (0 = off).",
                              "pass --set ema_decay=0.9999 (long runs) or 0.999 (short ones), or 0.")

    def _validate_warmup(self) -> None:
        if self.warmup_epochs < 0:
            raise ConfigError("warmup_epochs", self.warmup_epochs, "must be 0 (no warmup) or more.", "pass 0 or 5.")
        if not 0 <= self.warmup_max_fraction < 1:
            raise ConfigError("warmup_max_fraction", self.warmup_max_fraction,
                              "must be in [0, 1): the share of the run warmup may take at most.",
                              f"pass {WARMUP_MAX_FRACTION:.3g}.")

    def _validate_augment(self) -> None:
        """The augmentation settings, checked here so a bad value fails on the driver, before Spark starts."""
        from imagenet_spark.data.randaugment import MAX_LAYERS, MAX_MAGNITUDE

        if self.augment not in typing.get_args(AugmentPreset):
            raise ConfigError("augment", self.augment, f"must be one of {', '.join(typing.get_args(AugmentPreset))}.")
        _check_range("crop_area", self.crop_area, low=0.0, high=1.0, fix="pass two fractions, e.g. 0.08,1.")
        _check_range("crop_aspect", self.crop_aspect, low=0.0, high=math.inf, fix="pass e.g. 0.75,1.3333.")
        if self.flip_prob is not None and not 0 <= self.flip_prob <= 1:
            raise ConfigError("flip_prob", self.flip_prob, "must be a probability in [0, 1].", "pass 0.5 or 0.")
        if not 0 <= self.randaugment_layers <= MAX_LAYERS:
            raise ConfigError("randaugment_layers", self.randaugment_layers,
                              f"must be 0 (off) to {MAX_LAYERS} ops per image.", "pass 2 (Cubuk et al.) or 0.")
        if not 0 <= self.randaugment_magnitude <= MAX_MAGNITUDE:
            raise ConfigError("randaugment_magnitude", self.randaugment_magnitude,
                              f"must be in [0, {MAX_MAGNITUDE:g}] (10: the end of each op's range).", "pass 9.")
        if self.augment == "none":
            for name in ("crop_area", "crop_aspect", "flip_prob", "randaugment_layers"):
                if getattr(self, name):
                    raise ConfigError(name, getattr(self, name), "augment=none trains on the eval transform "
                                      "(the centre crop, nothing random), so this setting has nothing to act on.",
                                      "use --set augment=light (or imagenet) with it, or drop it.")

    @property
    def per_worker_batch(self) -> int:
        return self.global_batch_size // self.workers

    @property
    def learning_rate(self) -> float:
        """Peak learning rate by the linear scaling rule (Goyal et al.): base_lr per 256 images."""
        return self.base_lr * self.global_batch_size / 256
