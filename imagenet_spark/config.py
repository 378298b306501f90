"""Typed configuration: frozen dataclasses, YAML presets and dotted ``--set key=value`` overrides.

Why one mechanism: every job resolves its configuration exactly once, on the driver, from (in order)
the dataclass defaults, a YAML preset (which may itself derive from another preset via ``base:``),
dotted overrides and explicit command-line flags. The result is frozen and validated before any
Spark work starts, and crosses to executors as a plain dict (``to_dict``).

Why TrainConfig has sections (``cfg.recipe.base_lr``): 70 settings in one flat bag hid what belongs together
and what may change when a run resumes; now each field says it (``metadata={"resumable": True}``) and the
model dir's check reads it from the class. The old flat names (``--set base_lr=0.2``, flat presets, flat
config.json of older model dirs) still work, mapped to their section with one deprecation warning.

Why this module is over 400 lines: the generic machinery (coercion, presets, keys) and the two job configs
it serves are one contract that every job and test imports from here; split, the pieces would import each other.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from imagenet_spark.errors import ImagenetSparkError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Enumerations, spelled once: fields are typed with them, _coerce and check_values refuse other values, argparse
# and the notebooks' widgets take their choices from typing.get_args(...).
Backend = Literal["off", "mirrored", "mwms", "horovod"]
Schedule = Literal["cosine", "step", "constant"]
Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]
# row_group: class-mixed shards (petastorm row group i -> worker i mod N); synset: each worker its own synsets
ShardBy = Literal["row_group", "synset"]
# last: the weights after the final epoch; best: the evaluated epoch with the best ``best_metric``
Export = Literal["last", "best"]
# Validation metrics an epoch records (the search and --export best rank epochs by them)
Metric = Literal["val_top1", "val_top5", "val_loss"]
# auto: petastorm where it is installed (legacy stack), else parquet (pyarrow only: nothing unpickled)
TrainReader = Literal["auto", "petastorm", "parquet"]
# The partition job's input layouts (data/layouts.py)
Layout = Literal["auto", "ilsvrc", "tar", "kaggle", "folders", "csv"]
# The train transform's presets (data/augment.py PRESETS): imagenet = Inception crop + flip (the default), light =
# a milder crop for small or centred images, none = the eval transform.
AugmentPreset = Literal["imagenet", "light", "none"]
BACKENDS: tuple[Backend, ...] = typing.get_args(Backend)
# Whether larger is better, per metric (a Mapping keyed by the Literal: mypy checks the keys against it).
VAL_METRICS: Mapping[Metric, bool] = types.MappingProxyType({"val_top1": True, "val_top5": True, "val_loss": False})
# Warmup is at most this fraction of the run (train/schedules.py effective_warmup_epochs): every preset's warmup
# is within it, and any positive --epochs works with the default 5 warmup epochs.
WARMUP_MAX_FRACTION = 1.0 / 3.0


class ConfigError(ImagenetSparkError, ValueError):
    """A setting has a value we cannot run with. The message names the setting, the value and the fix."""

    def __init__(self, setting: str, value: Any, problem: str, fix: str = "") -> None:
        self.setting = setting
        self.value = value
        message = f"{setting}={value!r}: {problem}"
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)


class FlatSettingWarning(FutureWarning):
    """A setting was named the old flat way (``base_lr``) instead of by its section (``recipe.base_lr``).
    A FutureWarning, not a DeprecationWarning: the people who see it type --set and presets, and Python hides
    DeprecationWarning outside ``__main__``."""


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
    if isinstance(inner, type) and dataclasses.is_dataclass(inner):
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


def check_values(config: Any, prefix: str = "") -> None:
    """Refuse nan/inf in any float setting (also inside tuples) and a value outside its Literal, in a config
    however it was built: ``resolve`` already refuses them while parsing, this catches configs made with the
    constructor or ``with_settings``. Why: ``nan`` passes every range check written as a comparison
    (``nan <= 0`` is False) and then trains to a NaN model; absurd but finite values stay allowed (the trainer's
    divergence check stops those)."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        setting = prefix + field.name
        if dataclasses.is_dataclass(value):
            check_values(value, f"{setting}.")
            continue
        inner, _optional = _strip_optional(hints[field.name])
        if typing.get_origin(inner) is Literal and value is not None and value not in typing.get_args(inner):
            raise ConfigError(setting, value, f"must be one of {', '.join(map(str, typing.get_args(inner)))}.")
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, float) and not math.isfinite(item):
                raise ConfigError(setting, value, "must be a finite number (not nan or inf).",
                                  f"give {setting} a finite value.")


# --------------------------------------------------------------------------------------------------
# Keys: dotted names of the settings, sections, the old flat names


def _sections(cls: type) -> dict[str, type]:
    """The fields of ``cls`` that are sections (frozen dataclasses of settings), by name."""
    hints = typing.get_type_hints(cls)
    out = {}
    for field in dataclasses.fields(cls):
        inner, _optional = _strip_optional(hints[field.name])
        if dataclasses.is_dataclass(inner):
            out[field.name] = typing.cast(type, inner)
    return out


def setting_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    """Every leaf setting of ``cls`` by its dotted key (``recipe.base_lr``; a top-level field by its name)."""
    sections = _sections(cls)
    out: dict[str, dataclasses.Field[Any]] = {}
    for field in dataclasses.fields(cls):
        if field.name in sections:
            out.update({f"{field.name}.{f.name}": f for f in dataclasses.fields(sections[field.name])})
        else:
            out[field.name] = field
    return out


def flat_names(cls: type) -> dict[str, str]:
    """Old flat name -> dotted key, for every setting that now lives in a section (``base_lr`` ->
    ``recipe.base_lr``): the one table that maps flat --set keys, flat presets and old config.json files."""
    return {key.split(".", 1)[1]: key for key in setting_fields(cls) if "." in key}


def resumable_settings(cls: type) -> frozenset[str]:
    """Dotted keys of the settings marked ``resumable``: those that may differ when a run is resumed."""
    return frozenset(key for key, field in setting_fields(cls).items() if field.metadata.get("resumable"))


def _nearest(cls: type, key: str) -> str | None:
    """The known setting closest to a mistyped ``key`` (compared with dotted keys and their flat names)."""
    candidates = {name: name for name in setting_fields(cls)}
    candidates.update({flat: dotted for flat, dotted in flat_names(cls).items() if flat not in candidates})
    match = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.6)
    return candidates[match[0]] if match else None


def canonical_key(cls: type, key: str, *, setting: str, problem: str = "unknown setting.") -> str:
    """The dotted key of ``key`` (dotted already, or an old flat name), or ConfigError naming ``setting``, the
    key and the nearest known setting."""
    known = setting_fields(cls)
    if key in known:
        return key
    if key in flat_names(cls):
        return flat_names(cls)[key]
    nearest = _nearest(cls, key)
    raise ConfigError(setting, key, problem,
                      f"did you mean {nearest}?" if nearest else "see the presets in conf/ for the settings.")


def _build(cls: type[T], values: Mapping[str, Any], prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        nearest = _nearest(cls, unknown[0])
        hint = f"did you mean {prefix}{nearest}? " if nearest else ""
        raise ConfigError(prefix + unknown[0], values[unknown[0]], "unknown setting.",
                          f"{hint}valid settings here are: {', '.join(sorted(names))}.")
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


def _nest(cls: type, values: Mapping[str, Any], flat_used: list[str]) -> dict[str, Any]:
    """Settings in nested sections, whether given nested, by dotted key (``recipe.base_lr``) or by an old flat
    name (``base_lr``: appended to ``flat_used`` for the deprecation warning). Unknown keys pass through, for
    ``_build`` to refuse with the nearest known one."""
    aliases = flat_names(cls)
    sections = _sections(cls)
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in aliases:
            flat_used.append(key)
            key = aliases[key]
        head, dot, rest = key.partition(".")
        if dot and head in sections:
            out = _merge(out, {head: {rest: value}})
        else:
            out = _merge(out, {key: value})
    return out


def _warn_flat(cls: type, flat_used: Sequence[str]) -> None:
    """One warning per resolved config, naming each flat name used and its dotted key."""
    aliases = flat_names(cls)
    names = ", ".join(f"{name} -> {aliases[name]}" for name in dict.fromkeys(flat_used))
    example = aliases[flat_used[0]]
    warnings.warn(f"flat setting names are deprecated: {names}. Write the dotted key (--set {example}=...) or nest "
                  f"it under its section in a preset ({example.split('.')[0]}: {{{example.split('.')[1]}: ...}}).",
                  FlatSettingWarning, stacklevel=3)


def merge_settings(cls: type, *layers: Mapping[str, Any]) -> dict[str, Any]:
    """Layers of settings (nested, dotted or old flat names; later ones win) as one nested mapping, with one
    deprecation warning naming every flat name used."""
    flat_used: list[str] = []
    values: dict[str, Any] = {}
    for layer in layers:
        values = _merge(values, _nest(cls, layer, flat_used))
    if flat_used:
        _warn_flat(cls, flat_used)
    return values


def keyed_by_setting(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """A mapping keyed by settings of ``cls`` (a search space, or values for one: tune.py) with every key made
    dotted: nested sections (``recipe: {base_lr: ...}``, as ``--set space.recipe.base_lr.low=...`` builds them)
    flattened, old flat names mapped (one deprecation warning), two entries for one setting merged. Unknown
    keys pass through, for the caller to refuse with its own setting name."""
    sections, aliases = _sections(cls), flat_names(cls)
    flat_used: list[str] = []
    out: dict[str, Any] = {}
    for key, value in values.items():
        nested = key in sections and isinstance(value, Mapping) and "type" not in value
        for name, item in ([(f"{key}.{k}", v) for k, v in value.items()] if nested else [(key, value)]):
            if name in aliases:
                flat_used.append(name)
                name = aliases[name]
            both = isinstance(item, Mapping) and isinstance(out.get(name), Mapping)
            out[name] = _merge(out[name], item) if both else item
    if flat_used:
        _warn_flat(cls, flat_used)
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
    """Turn ``["recipe.base_lr=0.1", "epochs=3"]`` into a nested dict; values are parsed as YAML scalars."""
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
    """Defaults < preset < --set overrides < explicit flags; returns the validated, frozen config. Keys may be
    nested, dotted (``recipe.base_lr``, also in ``explicit``) or old flat names (one deprecation warning)."""
    layers = [read_preset(preset) if preset else {}, parse_overrides(overrides),
              {k: v for k, v in (explicit or {}).items() if v is not None}]
    config = _build(cls, merge_settings(cls, *layers))
    validate = getattr(config, "validate", None)
    if callable(validate):
        validate()
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """Plain, picklable dict of a config (sections nested): what crosses the driver→executor boundary."""
    return dataclasses.asdict(config)


def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Rebuild a config from ``to_dict`` output (on an executor)."""
    return _build(cls, values)


def with_settings(config: T, changes: Mapping[str, Any]) -> T:
    """``config`` with dotted settings changed (``{"output.stop_at_epoch": 3}``), its sections rebuilt: what
    ``dataclasses.replace`` does for a flat config, whose keywords reach only the top level."""
    cls = type(config)
    top: dict[str, Any] = {}
    inner: dict[str, dict[str, Any]] = {}
    for key, value in changes.items():
        section, dot, name = canonical_key(cls, key, setting=key).partition(".")
        if dot:
            inner.setdefault(section, {})[name] = value
        else:
            top[section] = value
    for section, values in inner.items():
        top[section] = dataclasses.replace(getattr(config, section), **values)
    return dataclasses.replace(config, **top)  # type: ignore[type-var]


def dotted_settings(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """A nested (or old flat) settings mapping as {dotted key: value}, tuples as lists (as JSON holds them)."""
    out: dict[str, Any] = {}
    for key, value in _nest(cls, values, []).items():
        if key in _sections(cls) and isinstance(value, Mapping):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def changed_settings(cls: type, previous: Mapping[str, Any], current: Any) -> list[tuple[str, Any, Any]]:
    """(dotted key, previous value, current value) of each setting not marked resumable that differs between
    ``previous`` (a model dir's config.json: nested, or flat from before the sections) and ``current``. A setting
    absent from ``previous`` (added after that run was written) counts as its default."""
    before = {**dotted_settings(cls, to_dict(cls())), **dotted_settings(cls, previous)}
    now = dotted_settings(cls, to_dict(current))
    resumable = resumable_settings(cls)
    return [(key, before.get(key), now[key]) for key in sorted(now)
            if key not in resumable and before.get(key) != now[key]]


def _resumable(default: Any) -> Any:
    """A setting that may differ when a run is resumed (cadence, timeouts, retries, fault injection, tracking).
    Everything else must match the run being resumed: a new setting is resume-breaking unless marked here."""
    return dataclasses.field(default=default, metadata={"resumable": True})


def _section(cls: type[T]) -> T:
    return dataclasses.field(default_factory=cls)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PartitionConfig:
    """Settings of the partition job (``jobs/partition.py``). See conf/partition/ for presets. Flat on purpose:
    its 20 settings are one job's inputs and output options, read together by one driver; sections would add
    a level to every --set without grouping anything a reader looks for."""

    input: str = ""
    output: str = ""
    layout: Layout = "auto"
    # Resize so the short side is this many pixels (never upscale); None keeps the original size.
    resize_short: int | None = 256
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
    labels_file: str | None = None
    val_labels: str | None = None
    overwrite: bool = False
    resume: bool = False
    dry_run: bool = False
    tfrecord: bool = False
    # TFRecord shards per split; None sizes them from the data (imagenet_to_gcs's records per shard, so
    # ImageNet itself gets its 1024 + 128, and at most ~128 MiB per shard; see data/tfrecord.py).
    tfrecord_train_shards: int | None = None
    tfrecord_validation_shards: int | None = None
    # Fault injection for tests and drills: "TASK_PREFIX" fails the first attempt of matching tasks (Spark
    # retries them), "always:TASK_PREFIX" fails every attempt (the job fails; rerun with --resume), "publish"
    # stops the driver after it moved the first split into place (rerun with --resume).
    inject_failure: str | None = None
    # Spark parallelism for listing/processing; None lets Spark decide from the cluster's default parallelism.
    num_partitions: int | None = None

    def validate(self) -> None:
        check_values(self)
        if not self.input:
            raise ConfigError("input", self.input, "no input given.", "pass --input DIR (or a URI).")
        if not self.output and not self.dry_run:
            raise ConfigError("output", self.output, "no output given.", "pass --output DIR (or a URI).")
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
    shuffle_buffer: int = 4096
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

    def __getattr__(self, name: str) -> Any:
        # TRANSITION: removed when every access site uses sections. Only called when normal lookup fails:
        # resolves an old flat name (cfg.base_lr) to its section's field (cfg.recipe.base_lr).
        dotted = flat_names(type(self)).get(name)
        if dotted is None:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}")
        section, field = dotted.split(".")
        return getattr(object.__getattribute__(self, section), field)

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
