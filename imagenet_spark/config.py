"""Typed configuration: frozen dataclasses, YAML presets and dotted ``--set key=value`` overrides.

Why one mechanism: every job resolves its configuration exactly once, on the driver, from (in order)
the dataclass defaults, a YAML preset (which may itself derive from another preset via ``base:``),
dotted overrides and explicit command-line flags. The result is frozen and validated before any
Spark work starts, and crosses to executors as a plain dict (``to_dict``).

Settings of a config class may live in sections (TrainConfig's, in train_config.py): they are named by dotted
key (``recipe.base_lr``) everywhere, and the old flat names (``--set base_lr=0.2``, flat presets, a flat
config.json of an older model dir) still work, mapped through ``flat_names`` with one deprecation warning.

Why this size: the generic machinery (coercion, presets, dotted keys, resume comparison) is
one contract; TrainConfig and its sections live in train_config.py, PartitionConfig (one job's flat options) here.
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
