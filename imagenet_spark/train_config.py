"""The training job's settings (``jobs/train_barrier.py``): TrainConfig and its frozen sections.

Why sections (``cfg.recipe.base_lr``): 70 settings in one flat bag hid what belongs together and what may change
when a run resumes; each field now says it (``metadata={"resumable": True}``, read by
``config.resumable_settings``), and ``--set``/presets/config.json name a setting by its dotted key. The machinery
(coercion, presets, old flat names, resume comparison) is generic and lives in config.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypeVar

from imagenet_spark.config import (
    WARMUP_MAX_FRACTION,
    AugmentPreset,
    Backend,
    ConfigError,
    Export,
    Metric,
    Precision,
    Schedule,
    ShardBy,
    TrainReader,
    check_values,
)

T = TypeVar("T")


def _resumable(default: Any) -> Any:
    """A setting that may differ when a run is resumed (cadence, timeouts, retries, fault injection, tracking).
    Everything else must match the run being resumed: a new setting is resume-breaking unless marked here."""
    return dataclasses.field(default=default, metadata={"resumable": True})


def _section(cls: type[T]) -> T:
    return dataclasses.field(default_factory=cls)


def _check_range(setting: str, value: tuple[float, ...] | None, *, low: float, high: float, fix: str) -> None:
    """A ``[min, max]`` setting: two numbers, ``low < min <= max <= high``; None (unset) passes."""
    if value is None:
        return
    if len(value) != 2 or not low < value[0] <= value[1] <= high:
        upper = "" if math.isinf(high) else f" <= {high:g}"
        raise ConfigError(setting, value, f"must be two numbers min,max with {low:g} < min <= max{upper}.", fix)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
    """``recipe.*``: what the weights see (rate, schedule, regularisation, numerics, batch mixing, weight
    averaging). Nothing here may change on resume: it would be another run under the same name."""

    base_lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    # Linear warmup of min(warmup_epochs, warmup_max_fraction x epochs) epochs (logged when clamped).
    warmup_epochs: float = 5.0
    warmup_max_fraction: float = WARMUP_MAX_FRACTION
    schedule: Schedule = "cosine"
    # step schedule: multiply the rate by step_factor at each of these epochs
    step_epochs: tuple[float, ...] = (30.0, 60.0, 80.0)
    step_factor: float = 0.1
    bn_momentum: float = 0.9
    dropout: float | None = None
    batch_norm: bool | None = None
    precision: Precision = "float32"
    xla: bool = False
    # Horovod only: gradients allreduced in float16 (half the bytes; changes the numbers, so part of the recipe).
    horovod_fp16_allreduce: bool = False
    # Batch mixing (data/mix.py; README "Training recipes"). Mixup (Zhang et al. 2018) / CutMix (Yun et al. 2019):
    # Beta(alpha, alpha) per batch, 0 = off. With both on, each batch uses one of them (probability 1/2 each);
    # mix_prob: the share of batches mixed at all.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    # Exponential moving average of the weights (train/ema.py; Polyak averaging), evaluated and exported instead
    # of the raw weights when on; 0 = off. ema_warmup: decay min(ema_decay, (1+n)/(10+n)) at update n (TF-models),
    # so a short run is not dominated by the initial weights.
    ema_decay: float = 0.0
    ema_warmup: bool = True

    def validate(self) -> None:
        if self.base_lr <= 0:
            raise ConfigError("recipe.base_lr", self.base_lr, "must be positive.")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("recipe.label_smoothing", self.label_smoothing, "must be in [0, 1).")
        if self.warmup_epochs < 0:
            raise ConfigError("recipe.warmup_epochs", self.warmup_epochs, "must be 0 (no warmup) or more.",
                              "pass 0 or 5.")
        if not 0 <= self.warmup_max_fraction < 1:
            raise ConfigError("recipe.warmup_max_fraction", self.warmup_max_fraction,
                              "must be in [0, 1): the share of the run warmup may take at most.",
                              f"pass {WARMUP_MAX_FRACTION:.3g}.")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ConfigError(f"recipe.{name}", getattr(self, name), "must be 0 (off) or positive.",
                                  f"pass --set recipe.{name}=0.2 (mixup) or 1.0 (cutmix), or 0.")
        if not 0 <= self.mix_prob <= 1:
            raise ConfigError("recipe.mix_prob", self.mix_prob, "must be in [0, 1].", "pass --set recipe.mix_prob=1.0.")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError("recipe.ema_decay", self.ema_decay, "must be in [0, 1) (0 = off).",
                              "pass --set recipe.ema_decay=0.9999 (long runs) or 0.999 (short ones), or 0.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Input:
    """``input.*``: the training stream: order (seed, shuffle, sharding), the train transform, the reader and its
    threads. Only the reader's thread counts may change on resume (they change speed, not what is read)."""

    seed: int = 0
    shuffle_buffer: int = 4096  # rows in each worker's shuffle buffer, at most its shard's (reader.shuffle_buffer_rows)
    shard_by: ShardBy = "row_group"
    # Train transform (data/augment.py; README "Training recipes"): a preset, then explicit overrides of it.
    # crop_area / crop_aspect: [min, max] of the random crop's share of the image area and of its aspect ratio;
    # flip_prob: chance of a horizontal flip; None keeps the preset's. randaugment_layers N > 0 adds RandAugment
    # (N ops per image at magnitude 0..10; Cubuk et al. 2020 use N=2, M=9 for ImageNet ResNet-50).
    augment: AugmentPreset = "imagenet"
    crop_area: tuple[float, float] | None = None
    crop_aspect: tuple[float, float] | None = None
    flip_prob: float | None = None
    randaugment_layers: int = 0
    randaugment_magnitude: float = 9.0
    # How the training stream reads the dataset: "petastorm" (make_batch_reader; it unpickles the Unischema in
    # _common_metadata, so a dataset from an untrusted source can run code) or "parquet" (pyarrow only, by the
    # Parquet schema: nothing is unpickled); "auto": petastorm where it is installed (legacy stack), else
    # parquet. Evaluation and planning never unpickle either way.
    train_reader: TrainReader = "auto"
    # Petastorm reader threads per worker. 1 keeps the row order exactly reproducible for a seed: with more,
    # petastorm's round robin skips a worker whose next row group is not ventilated yet, so under load the
    # order depends on timing. One thread reads ~20k rows/s here, far above what decoding consumes; raise it
    # only for slow remote storage.
    reader_workers: int = _resumable(1)
    decode_threads: int | None = _resumable(None)

    def validate(self) -> None:
        """The augmentation settings, checked here so a bad value fails on the driver, before Spark starts."""
        from imagenet_spark.data.randaugment import MAX_LAYERS, MAX_MAGNITUDE

        _check_range("input.crop_area", self.crop_area, low=0.0, high=1.0, fix="pass two fractions, e.g. 0.08,1.")
        _check_range("input.crop_aspect", self.crop_aspect, low=0.0, high=math.inf, fix="pass e.g. 0.75,1.3333.")
        if self.flip_prob is not None and not 0 <= self.flip_prob <= 1:
            raise ConfigError("input.flip_prob", self.flip_prob, "must be a probability in [0, 1].", "pass 0.5 or 0.")
        if not 0 <= self.randaugment_layers <= MAX_LAYERS:
            raise ConfigError("input.randaugment_layers", self.randaugment_layers,
                              f"must be 0 (off) to {MAX_LAYERS} ops per image.", "pass 2 (Cubuk et al.) or 0.")
        if not 0 <= self.randaugment_magnitude <= MAX_MAGNITUDE:
            raise ConfigError("input.randaugment_magnitude", self.randaugment_magnitude,
                              f"must be in [0, {MAX_MAGNITUDE:g}] (10: the end of each op's range).", "pass 9.")
        if self.augment == "none":
            for name in ("crop_area", "crop_aspect", "flip_prob", "randaugment_layers"):
                if getattr(self, name):
                    raise ConfigError(f"input.{name}", getattr(self, name), "augment=none trains on the eval "
                                      "transform (the centre crop, nothing random), so this setting has nothing to "
                                      "act on.", "use --set input.augment=light (or imagenet) with it, or drop it.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Launch:
    """``launch.*``: how the barrier stage starts and is retried: waits, relaunches, network, threads. All may
    change on resume (a relaunch with a longer timeout is the same run)."""

    max_retries: int = _resumable(2)
    barrier_timeout_s: int = _resumable(600)
    slots_wait_s: int = _resumable(60)
    network_interface: str | None = _resumable(None)
    # MWMS: make TensorFlow's gRPC server listen on the task's own address instead of every interface (TF 2.15
    # has no setting for it; a preloaded bind shim, compiled on the executor, rewrites that one bind).
    bind_tf_to_host: bool = _resumable(True)
    # Threads per worker (distribute/threads.py): TensorFlow's intra/inter-op pools and tf.data's pool. None: the
    # task's spark.task.cpus (a GPU worker: its share of the host's cores, if larger; one worker on the driver:
    # the host's cores); 0: TensorFlow's unsized defaults (every core), for comparison only.
    cpus_per_worker: int | None = _resumable(None)
    # local[N] with MWMS: start the worker processes before the Spark session, so TensorFlow's ~4 s import
    # overlaps Spark's start (distribute/standby.py); the barrier tasks adopt them. Off: fresh processes.
    standby_workers: bool = _resumable(True)

    def validate(self) -> None:
        if self.max_retries < 0:
            raise ConfigError("launch.max_retries", self.max_retries, "must be 0 or more.")
        if self.cpus_per_worker is not None and self.cpus_per_worker < 0:
            raise ConfigError("launch.cpus_per_worker", self.cpus_per_worker, "must be 0 (unsized) or more.",
                              "leave it unset to follow spark.task.cpus.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Loop:
    """``loop.*``: what the training loop does between steps, and how often: evaluate, checkpoint, check for
    divergence, report progress. All may change on resume."""

    eval_every_epochs: int = _resumable(1)
    checkpoint_every_steps: int = _resumable(0)
    keep_checkpoints: int = _resumable(3)
    # A NaN/inf loss or gradient norm stops the run (DivergedError, not retried, nothing exported). Checked where
    # the loop reads the running loss, at most this many steps apart (0: at the loop's own cadence, up to 50
    # steps). Each check is one host sync; measured here it costs nothing visible on resnet18 at 64 px.
    divergence_check_steps: int = _resumable(10)
    progress_every_s: float = _resumable(10.0)

    def validate(self) -> None:
        if self.checkpoint_every_steps < 0:
            raise ConfigError("loop.checkpoint_every_steps", self.checkpoint_every_steps,
                              "must be 0 (epochs only) or more.")
        if self.divergence_check_steps < 0:
            raise ConfigError("loop.divergence_check_steps", self.divergence_check_steps,
                              "must be 0 (at the loop's cadence, up to 50 steps) or more.", "pass 10.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Faults:
    """``faults.*``: fault injection for tests and drills (proves resume and relaunch); may change on resume."""

    # Fail once, on the first attempt, when the global step reaches this (rank fail_rank).
    fail_at_step: int | None = _resumable(None)
    fail_rank: int = _resumable(0)
    # On the first attempt, this rank's exchanged TensorFlow port is taken (held open) before TensorFlow binds
    # it, as another process on its host might; proves the relaunch with fresh ports.
    inject_port_conflict_rank: int | None = _resumable(None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Output:
    """``output.*``: what is exported, and where a run pauses."""

    # last: the weights after the final epoch; best: the evaluated epoch with the best ``best_metric`` (kept
    # as its own checkpoint, checkpoints/best/, so a later worse epoch cannot overwrite it).
    export: Export = "last"
    best_metric: Metric = "val_top1"
    # Stop (checkpointed, resumable, not exported) after this epoch while the learning-rate schedule still
    # spans ``epochs``: how the search (jobs/tune.py) runs a trial to a rung and decides whether to continue.
    stop_at_epoch: int | None = _resumable(None)

    def validate(self) -> None:
        if self.stop_at_epoch is not None and not self.stop_at_epoch >= 1:
            raise ConfigError("output.stop_at_epoch", self.stop_at_epoch, "must be 1 or more (or none).")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tracking:
    """``tracking.*``: the MLflow run of a training (a file store beside the model dir unless a URI is given or
    set); may change on resume."""

    track: bool = _resumable(True)
    tracking_uri: str | None = _resumable(None)
    experiment: str = _resumable("imagenet-spark")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Settings of the training job (``jobs/train_barrier.py``). See conf/train/ for presets.

    Flat: what names the job and sizes it (dataset, model dir, model, input size, workers, backend, epochs,
    batch) and the --overwrite action: the flags of the command line, read by every part of the run. The rest
    lives in sections. The global batch size is canonical: each of the ``workers`` processes gets
    ``global_batch_size / workers`` images per step, and the learning rate follows the linear scaling rule,
    ``recipe.base_lr * global_batch_size / 256``, whatever the backend.
    """

    data: str = ""
    model_dir: str = ""
    model: str = "resnet50"
    # Input size; None takes the model's own default (224 for the real models, 32 for the tiny ones).
    image_size: int | None = None
    workers: int = 1
    # off (one process, default device) | mirrored (one process, all local GPUs) | mwms | horovod
    backend: Backend = "mwms"
    # May grow on resume: the schedule then spans the longer run.
    epochs: float = _resumable(90.0)
    global_batch_size: int = 256
    # The resume contract: a model dir already holding checkpoints is resumed, never silently restarted.
    overwrite: bool = _resumable(False)
    recipe: Recipe = _section(Recipe)
    input: Input = _section(Input)
    launch: Launch = _section(Launch)
    loop: Loop = _section(Loop)
    faults: Faults = _section(Faults)
    output: Output = _section(Output)
    tracking: Tracking = _section(Tracking)

    def validate(self) -> None:
        from imagenet_spark.distribute.stack import check_train_config
        from imagenet_spark.models import available

        check_values(self)
        if not self.data:
            raise ConfigError("data", self.data, "no dataset given.", "pass --data DIR written by jobs/partition.py.")
        if not self.model_dir:
            raise ConfigError("model_dir", self.model_dir, "no model directory given.", "pass --model-dir DIR.")
        if self.model not in available():
            raise ConfigError("model", self.model, "unknown model.", f"choose one of {', '.join(available())}.")
        self._validate_size()
        check_train_config(self)  # horovod or petastorm asked on a stack without them
        for section in (self.recipe, self.input, self.launch, self.loop, self.output):
            section.validate()
        if self.faults.fail_rank >= self.workers:
            raise ConfigError("faults.fail_rank", self.faults.fail_rank, f"there are only {self.workers} workers.")
        rank = self.faults.inject_port_conflict_rank
        if rank is not None and not 0 <= rank < self.workers:
            raise ConfigError("faults.inject_port_conflict_rank", rank, f"must be a rank below workers={self.workers}.",
                              "pass 0 or none.")

    def _validate_size(self) -> None:
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
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError("image_size", self.image_size, "must be at least 16 pixels.")

    @property
    def per_worker_batch(self) -> int:
        return self.global_batch_size // self.workers

    @property
    def learning_rate(self) -> float:
        """Peak learning rate by the linear scaling rule (Goyal et al.): base_lr per 256 images."""
        return self.recipe.base_lr * self.global_batch_size / 256
