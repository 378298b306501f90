"""The on-disk contracts: every file and folder name of a model dir and of a dataset, in one place.

Why one owner (as Horovod's ``spark.common.store.Store`` owns its run, checkpoint and log paths): the names are a
contract with users, with serving (``saved_model/``), with TensorFlow's checkpoint files and with runs written by
older versions. Spelled in eight modules, adding one artifact meant a grep across the package and a resume or
``--overwrite`` that forgot a name. Here each name is spelled once; everything else asks a :class:`ModelDir` or a
:class:`DatasetDir` for a path. The objects are frozen and hold one string, so they pickle across the Spark
boundary, and they accept local paths and URIs alike (joined with :func:`imagenet_spark.data.fs.join`).
DESIGN.md, "Contracts", describes what each file holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from imagenet_spark.data import fs

Split = Literal["train", "validation"]
SPLITS: tuple[Split, ...] = ("train", "validation")

# Written by ownership.claim in every directory a job makes, and the lease a running job holds on it.
MARKER = ".imagenet-spark.json"
LEASE = ".imagenet-spark.lease"
PREFLIGHT_PROBE = ".imagenet-spark-preflight"  # the executors' storage probe, removed after the check
LABELS = "labels.txt"  # one class name a line, in label order; in a dataset, a model dir and the SavedModel's assets
COMMON_METADATA = "_common_metadata"  # petastorm's dataset metadata (the pickled Unischema, row-group index)
# TensorFlow's own names inside any SavedModel directory (ours in a model dir, or one copied on its own).
SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_ASSETS = "assets"

_CHECKPOINT_INDEX = re.compile(r"ckpt-(\d+)\.index$")  # tf.train.CheckpointManager's naming, prefix "ckpt"


@dataclass(frozen=True)
class ModelDir:
    """A training's output directory (``--model-dir``): checkpoints, metrics, TensorBoard, the export.

    The trainer owns everything named in :attr:`TRAINER_FILES` (``--overwrite`` deletes exactly these); the
    search writes its trials and ``best/`` beside them in its own root; ``report/`` is the report's."""

    root: str

    CHECKPOINTS: ClassVar[str] = "checkpoints"
    BEST: ClassVar[str] = "best"  # checkpoints/best/: the best evaluated epoch's weights (export=best)
    CHECKPOINT_PREFIX: ClassVar[str] = "ckpt"
    METRICS: ClassVar[str] = "metrics.json"
    TENSORBOARD: ClassVar[str] = "tensorboard"
    SAVED_MODEL: ClassVar[str] = "saved_model"
    CONFIG_JSON: ClassVar[str] = "config.json"
    MODEL_INFO: ClassVar[str] = "model_info.json"  # in saved_model/assets/: input size, resize, labels count
    RUN_POINTER: ClassVar[str] = "mlflow_run.json"  # which tracking store and run hold this training
    REPORT: ClassVar[str] = "report"
    TRIALS_JSON: ClassVar[str] = "trials.json"
    TRIALS_CSV: ClassVar[str] = "trials.csv"
    TRIAL_RECORD: ClassVar[str] = "trial.json"  # in the search's best/: which trial it is, with its values
    TRAINER_FILES: ClassVar[tuple[str, ...]] = (CHECKPOINTS, TENSORBOARD, METRICS, SAVED_MODEL, LABELS, CONFIG_JSON)

    def join(self, *parts: str) -> str:
        return fs.join(self.root, *parts)

    @property
    def checkpoints(self) -> str:
        return self.join(self.CHECKPOINTS)

    @property
    def best_checkpoints(self) -> str:
        return self.join(self.CHECKPOINTS, self.BEST)

    @property
    def metrics(self) -> str:
        return self.join(self.METRICS)

    @property
    def tensorboard(self) -> str:
        return self.join(self.TENSORBOARD)

    @property
    def saved_model(self) -> str:
        return self.join(self.SAVED_MODEL)

    @property
    def labels(self) -> str:
        return self.join(LABELS)

    @property
    def saved_model_pb(self) -> str:
        """The SavedModel's graph file: there once an export is (the export dir is renamed into place whole)."""
        return self.join(self.SAVED_MODEL, SAVED_MODEL_PB)

    @property
    def config_json(self) -> str:
        return self.join(self.CONFIG_JSON)

    @property
    def model_info(self) -> str:
        return self.join(self.SAVED_MODEL, SAVED_MODEL_ASSETS, self.MODEL_INFO)

    @property
    def run_pointer(self) -> str:
        return self.join(self.RUN_POINTER)

    @property
    def report(self) -> str:
        return self.join(self.REPORT)

    @property
    def trials_json(self) -> str:
        return self.join(self.TRIALS_JSON)

    @property
    def trials_csv(self) -> str:
        return self.join(self.TRIALS_CSV)

    @property
    def best_trial(self) -> str:
        """The search's copy of its best trial's export (``best/saved_model``, ``best/labels.txt``)."""
        return self.join(self.BEST)

    def trial(self, name: str) -> ModelDir:
        return ModelDir(self.join(name))

    @property
    def trial_record(self) -> str:
        return self.join(self.TRIAL_RECORD)

    @property
    def best_trial_staging(self) -> str:
        """Where the search builds ``best/`` before moving it into place."""
        return self.join(f"_{self.BEST}.staging")

    def has_state(self) -> bool:
        """Whether a training already wrote here (checkpoints or its config): resume or refuse, never restart."""
        return fs.exists(self.checkpoints) or fs.exists(self.config_json)

    def latest_step(self) -> int:
        """Global step of the newest checkpoint, from TensorFlow's checkpoint file names (0 when none)."""
        if not fs.exists(self.checkpoints):
            return 0
        steps = [int(m.group(1)) for e in fs.list_dir(self.checkpoints)
                 if (m := _CHECKPOINT_INDEX.match(e.relpath))]
        return max(steps, default=0)


@dataclass(frozen=True)
class DatasetDir:
    """A dataset the partition job writes (``--output``, then ``--data``): the splits, labels, the manifest,
    quarantined inputs, and, while a run is in progress, its staging area."""

    root: str

    STAGING: ClassVar[str] = "_staging"
    TASKS: ClassVar[str] = "_tasks"  # in staging: one result file per finished task
    MANIFEST: ClassVar[str] = "manifest.json"
    PUBLISHING: ClassVar[str] = "_publishing.json"  # in staging: what a publish moves, so it can be undone
    RUN: ClassVar[str] = "run.json"  # in staging: the settings of the run that made it (a resume keeps them)
    PLAN: ClassVar[str] = "_plan.json"  # in staging: task id -> key, for every task whose result may be on disk
    FINGERPRINT: ClassVar[str] = "_inputs.json.zlib"  # in staging: the listed inputs, so a resume sees changes
    REJECTS: ClassVar[str] = "rejects"
    TFRECORD: ClassVar[str] = "tfrecord"
    FORMAT: ClassVar[str] = "imagenet-spark dataset"  # manifest.json's "format"

    def join(self, *parts: str) -> str:
        return fs.join(self.root, *parts)

    def split(self, name: str) -> str:
        return self.join(name)

    def common_metadata(self, split: str) -> str:
        return self.join(split, COMMON_METADATA)

    def has_split(self, split: str) -> bool:
        return fs.exists(self.common_metadata(split))

    @property
    def labels(self) -> str:
        return self.join(LABELS)

    @property
    def manifest(self) -> str:
        return self.join(self.MANIFEST)

    @property
    def rejects(self) -> str:
        return self.join(self.REJECTS)

    @property
    def tfrecord(self) -> str:
        return self.join(self.TFRECORD)

    @property
    def staging(self) -> DatasetDir:
        """The staging area, itself laid out as the dataset it becomes (splits, labels, rejects, manifest)."""
        return DatasetDir(self.join(self.STAGING))

    @property
    def tasks(self) -> str:
        return self.join(self.TASKS)

    @property
    def run_json(self) -> str:
        return self.join(self.RUN)

    @property
    def publishing(self) -> str:
        return self.join(self.PUBLISHING)

    @property
    def plan(self) -> str:
        return self.join(self.PLAN)

    @property
    def fingerprint(self) -> str:
        return self.join(self.FINGERPRINT)

    def is_finished(self) -> bool:
        return fs.exists(self.manifest)

    def is_interrupted(self) -> bool:
        """A partition run stopped before publishing (rerun it with --resume)."""
        return fs.exists(self.join(self.STAGING))
