"""What a person wants to look at after (or during) a training run, rendered to PNG files and one HTML page.

``imagenet-spark report --model-dir DIR`` (or :func:`render_report`) reads ``DIR/metrics.json`` and
``DIR/config.json`` and writes, to ``DIR/report/`` unless told otherwise:

* ``curves.png``: loss, top-1 and top-5 per epoch, train and validation side by side, with a marker where
  the driver relaunched training (a new attempt resumed from a checkpoint);
* ``lr.png``: the learning rate logged at the end of each epoch over the full per-step schedule the
  optimizer followed (rebuilt from config.json with the trainer's own schedule function);
* ``throughput.png``: training images/s per epoch (coloured by attempt) and the epoch wall time;
* ``predictions.png``: a grid of validation images with their true and predicted class names (green when
  right, red when wrong), classified by the exported SavedModel through its serving signature;
* ``report.html``: a summary table, the pictures (relative links, so the folder can be copied or served
  as is) and the per-epoch table.

Why matplotlib's object API (``Figure`` without pyplot): pyplot keeps a process-wide registry of open
figures and picks a GUI backend from the environment; a driver, a notebook or a test renders here without
either, always with the Agg renderer. Why fixed figure sizes without "tight" bounding boxes: the pixel
size of every picture is known in advance (:func:`figure_size`), so pages and tests can rely on it.

Also here, because notebooks and the report share them: a per-class sample grid and the manifest tables
of a dataset (notebook 01).
"""

from __future__ import annotations

import argparse
import html
import io
import json
import logging
import math
import os
import posixpath
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from imagenet_spark.data import fs
from imagenet_spark.errors import ImagenetSparkError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

DPI = 100
#: Pixel sizes (width, height) of the fixed-size pictures.
CURVES_SIZE = (1500, 450)
LR_SIZE = (1000, 400)
THROUGHPUT_SIZE = (1000, 400)
#: One cell of the prediction grid and of the per-class sample grid, in pixels.
PREDICTION_CELL = (200, 235)
SAMPLE_CELL = (150, 150)
SAMPLE_LABEL_WIDTH = 220
REPORT_DIR = "report"
#: Output file per picture (read-only).
FILES = MappingProxyType({"curves": "curves.png", "lr": "lr.png", "throughput": "throughput.png",
                          "predictions": "predictions.png", "html": "report.html"})
_GOOD, _BAD = "#1a7f37", "#cf222e"


class ReportError(ImagenetSparkError, ValueError):
    """The report cannot be rendered as asked; the message names the path or setting and the fix."""


# --- inputs ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """What the report reads from a model dir: per-epoch history, the run's config and its MLflow pointer."""

    model_dir: str
    history: tuple[dict[str, Any], ...]
    config: dict[str, Any] | None
    mlflow: dict[str, Any] | None


def load_run(model_dir: str) -> RunRecord:
    """Read ``metrics.json`` (required), ``config.json`` and ``mlflow_run.json`` (optional) from a model dir."""
    metrics_uri = fs.join(model_dir, "metrics.json")
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

    def optional(name: str) -> dict[str, Any] | None:
        uri = fs.join(model_dir, name)
        try:
            return json.loads(fs.read_text(uri)) if fs.is_file(uri) else None
        except ValueError:
            log.warning("%s: not valid JSON; the report goes on without it", uri)
            return None

    return RunRecord(model_dir=model_dir, history=tuple(sorted(history, key=lambda r: r["epoch"])),
                     config=optional("config.json"), mlflow=optional("mlflow_run.json"))


@dataclass(frozen=True)
class Sample:
    """One stored image of a dataset split: encoded bytes and its truth."""

    image: bytes
    label: int
    synset: str
    filename: str


def _synset_dirs(split_uri: str) -> list[tuple[str, str]]:
    if not fs.is_dir(split_uri):
        raise ReportError(f"{split_uri}: no such split. Fix: pass the --output of jobs/partition.py as data (it "
                          "holds train/ and validation/).")
    dirs = [(e.relpath.split("=", 1)[1], e.uri) for e in fs.list_dir(split_uri)
            if e.size < 0 and e.relpath.startswith("synset=")]
    if not dirs:
        raise ReportError(f"{split_uri}: no synset=<wnid>/ partitions. Fix: pass a dataset written by "
                          "jobs/partition.py.")
    return dirs


def _spread(items: Sequence[Any], n: int) -> list[Any]:
    """``n`` items evenly spaced over ``items`` (all of them when there are fewer), in order."""
    if n >= len(items):
        return list(items)
    if n <= 1:
        return [items[0]] if n == 1 else []
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


def _read_class(uri: str, synset: str, limit: int) -> list[Sample]:
    """Up to ``limit`` images of one synset partition, from its first Parquet file's first row groups."""
    import pyarrow.parquet as pq

    files = [e for e in fs.list_files(uri) if e.relpath.endswith(".parquet")]
    out: list[Sample] = []
    for entry in files:
        with fs.open_input(entry.uri) as f:
            parquet = pq.ParquetFile(f)
            columns = [c for c in ("image", "label", "filename") if c in parquet.schema_arrow.names]
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=columns).to_pydict()
                images = table["image"]
                labels = table.get("label") or [-1] * len(images)
                names = table.get("filename") or [""] * len(images)
                for image, label, filename in zip(images, labels, names):
                    out.append(Sample(image=bytes(image), label=int(label), synset=synset, filename=str(filename)))
                    if len(out) >= limit:
                        return out
    return out


def read_samples(data: str, *, split: str = "validation", count: int = 16, per_class: int | None = None,
                 max_classes: int | None = None) -> list[Sample]:
    """A few images of a dataset split, read straight from its Parquet files (no Spark, no TensorFlow).

    Classes are spread evenly over the sorted synsets (so 16 images of ImageNet's 1000 classes show 16
    different classes); ``per_class`` images of each (default: as few as fill ``count``), taken in order,
    so the same call always returns the same images.
    """
    if count < 1 or (per_class is not None and per_class < 1):
        raise ReportError(f"count={count}, per_class={per_class}: must be at least 1 image")
    dirs = _synset_dirs(fs.join(data, split))
    if per_class is not None:  # class by class, per_class each
        classes = _spread(dirs, max_classes or len(dirs))
        return [s for synset, uri in classes for s in _read_class(uri, synset, per_class)]
    classes = _spread(dirs, min(count, max_classes or count))
    per = math.ceil(count / len(classes))
    by_class = [_read_class(uri, synset, per) for synset, uri in classes]
    out: list[Sample] = []
    for i in range(per):  # round robin: every class once before a second image of any
        out += [samples[i] for samples in by_class if i < len(samples)]
    return out[:count]


def _class_names(model_dir: str | None, data: str | None) -> dict[str, str]:
    """synset -> human name from the model's (or dataset's) labels.txt; empty when neither is readable."""
    from imagenet_spark.serving.labels import load_labels, parse_labels

    try:
        if model_dir:
            return dict(load_labels(model_dir))
        if data and fs.is_file(fs.join(data, "labels.txt")):
            uri = fs.join(data, "labels.txt")
            return dict(parse_labels(fs.read_text(uri), source=uri))
    except ImagenetSparkError as exc:
        log.info("class names: %s; showing synset names", exc)
    return {}


def _name(names: Mapping[str, str], synset: str) -> str:
    from imagenet_spark.data.synsets import human_name

    return names.get(synset) or human_name(synset)


def short_name(name: str, limit: int = 22) -> str:
    """The first of ImageNet's comma-separated synonyms, cut to ``limit`` characters."""
    first = name.split(",")[0].strip() or name
    return first if len(first) <= limit else first[: limit - 1] + "…"


# --- figures --------------------------------------------------------------------------------------------------


def figure_size(name: str, *, grid: int = 16, classes: int = 0, per_class: int = 0) -> tuple[int, int]:
    """Pixel size ``(width, height)`` of a picture this module renders."""
    if name == "curves":
        return CURVES_SIZE
    if name == "lr":
        return LR_SIZE
    if name == "throughput":
        return THROUGHPUT_SIZE
    if name == "predictions":
        cols, rows = _grid_shape(grid)
        return cols * PREDICTION_CELL[0], rows * PREDICTION_CELL[1]
    if name == "samples":
        return SAMPLE_LABEL_WIDTH + per_class * SAMPLE_CELL[0], classes * SAMPLE_CELL[1] + 50
    raise ReportError(f"figure {name!r}: unknown; known: curves, lr, throughput, predictions, samples")


def _grid_shape(n: int) -> tuple[int, int]:
    cols = max(1, min(8, math.ceil(math.sqrt(n))))
    return cols, max(1, math.ceil(n / cols))


def _figure(size_px: tuple[int, int]) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI)


def save_figure(fig: "Figure", uri: str) -> str:
    """PNG bytes of ``fig`` at its own size (no tight cropping) written to a path or URI; returns the URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    fs.write_bytes(uri, buffer.getvalue())
    return uri


def _epochs(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(float(r["epoch"]), float(r[key])) for r in history
             if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _attempt_starts(history: Sequence[Mapping[str, Any]]) -> list[tuple[float, int]]:
    """``(x, attempt)`` where a relaunched attempt took over (between two epochs)."""
    out = []
    for before, after in zip(history, history[1:]):
        if after.get("attempt", 0) != before.get("attempt", 0):
            out.append((float(after["epoch"]) - 0.5, int(after.get("attempt", 0))))
    return out


def _title(record: RunRecord) -> str:
    cfg = record.config or {}
    parts = [str(cfg.get("model", "model"))]
    if cfg:
        parts.append(f"{cfg.get('workers', 1)} worker(s), {cfg.get('backend')}, global batch "
                     f"{cfg.get('global_batch_size')}")
    parts.append(f"{len(record.history)} epoch(s)")
    return " · ".join(parts)


def plot_curves(record: RunRecord) -> "Figure":
    """Loss, top-1 and top-5 per epoch, train and validation."""
    fig = _figure(CURVES_SIZE)
    axes = fig.subplots(1, 3)
    smoothing = (record.config or {}).get("label_smoothing")
    panels = (("Loss", "loss", "val_loss"), ("Top-1 accuracy", "top1", "val_top1"),
              ("Top-5 accuracy", "top5", "val_top5"))
    for ax, (title, train_key, val_key) in zip(axes, panels):
        label = "train" + (f" (label smoothing {smoothing:g})" if train_key == "loss" and smoothing else "")
        for key, name, style in ((train_key, label, "o-"), (val_key, "validation", "s--")):
            xs, ys = _epochs(record.history, key)
            if xs:
                ax.plot(xs, ys, style, label=name, markersize=4)
        for x, attempt in _attempt_starts(record.history):
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
            ax.text(x, 0.98, f" attempt {attempt}", transform=ax.get_xaxis_transform(), fontsize=7,
                    color="grey", va="top")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        _integer_epochs(ax)
        if train_key != "loss":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(_title(record), fontsize=11)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.84, wspace=0.22)
    return fig


def steps_per_epoch(history: Sequence[Mapping[str, Any]], epochs: float | None) -> int | None:
    """Optimizer steps per epoch, from the global step recorded at the end of the first epoch."""
    first = min(history, key=lambda r: r["epoch"])
    step = first.get("global_step")
    if not isinstance(step, (int, float)) or step <= 0:
        return None
    span = min(float(first["epoch"]), float(epochs)) if epochs else float(first["epoch"])
    return max(1, round(step / span))


def plot_learning_rate(record: RunRecord) -> "Figure":
    """The per-step schedule (when config.json is there) and the rate logged at the end of each epoch."""
    from imagenet_spark.train.schedules import make_schedule

    fig = _figure(LR_SIZE)
    ax = fig.subplots()
    cfg = record.config or {}
    spe = steps_per_epoch(record.history, cfg.get("epochs"))
    title = "Learning rate"
    if cfg and spe:
        peak = float(cfg["base_lr"]) * float(cfg["global_batch_size"]) / 256
        schedule = make_schedule(peak_lr=peak, steps_per_epoch=spe, epochs=float(cfg["epochs"]),
                                 warmup_epochs=float(cfg.get("warmup_epochs", 0.0)), kind=str(cfg.get("schedule")),
                                 # runs from before the setting: warmup had to be shorter than the run, no clamp
                                 warmup_max_fraction=float(cfg.get("warmup_max_fraction", 1.0)),
                                 step_epochs=tuple(cfg.get("step_epochs") or ()),
                                 step_factor=float(cfg.get("step_factor", 0.1)))
        stride = max(1, schedule.total_steps // 2000)
        steps = list(range(0, schedule.total_steps, stride)) + [schedule.total_steps - 1]
        ax.plot([s / spe for s in steps], [schedule(s) for s in steps], "-", color="C0",
                label=f"schedule per step ({spe} steps/epoch)")
        title = (f"Learning rate: {schedule.kind}, peak {peak:.4g} (base_lr {float(cfg['base_lr']):g} x "
                 f"{cfg['global_batch_size']}/256), warmup {schedule.warmup_steps / spe:g} epoch(s)")
        ax.secondary_xaxis("top", functions=(lambda e: e * spe, lambda s: s / spe)).set_xlabel("step")
    logged = [((float(r["global_step"]) - 1) / spe if spe and isinstance(r.get("global_step"), (int, float))
               else float(r["epoch"]), float(r["learning_rate"]))
              for r in record.history if isinstance(r.get("learning_rate"), (int, float))]
    if logged:  # the trainer logs the rate of the epoch's last step
        ax.plot([x for x, _ in logged], [y for _, y in logged], "o", color="C1",
                label="logged at the end of each epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.09, right=0.97, bottom=0.13, top=0.78)
    return fig


def plot_throughput(record: RunRecord) -> "Figure":
    """Training images/s per epoch (coloured by attempt) and the epoch's wall time on a second axis."""
    fig = _figure(THROUGHPUT_SIZE)
    ax = fig.subplots()
    history = [r for r in record.history if isinstance(r.get("images_per_s"), (int, float))]
    xs = [float(r["epoch"]) for r in history]
    ys = [float(r["images_per_s"]) for r in history]
    colours = [f"C{int(r.get('attempt', 0)) % 10}" for r in history]
    bars = ax.bar(xs, ys, width=0.6, color=colours)
    if len(history) <= 40:
        ax.bar_label(bars, labels=[f"{y:,.0f}" for y in ys], fontsize=7, padding=2)
    cfg = record.config or {}
    workers = int(cfg.get("workers", 1) or 1)
    if ys:
        median = statistics.median(ys)
        ax.axhline(median, color="black", linestyle="--", linewidth=1,
                   label=f"median {median:,.0f} images/s ({median / workers:,.0f} per worker)")
    from matplotlib.patches import Patch

    attempt_handles = [Patch(color=f"C{a % 10}", label=f"attempt {a}")
                       for a in sorted({int(r.get("attempt", 0)) for r in history})]
    walls = [(float(r["epoch"]), float(r["wall_time_s"])) for r in history
             if isinstance(r.get("wall_time_s"), (int, float))]
    if walls:
        twin = ax.twinx()
        twin.plot([w[0] for w in walls], [w[1] for w in walls], "d-", color="grey", markersize=4,
                  label="epoch wall time (s, right)")
        twin.set_ylabel("seconds per epoch (train + eval)")
        twin.set_ylim(0, max(w[1] for w in walls) * 1.5)
        handles, labels = twin.get_legend_handles_labels()
    else:
        handles, labels = [], []
    h0, l0 = ax.get_legend_handles_labels()
    ax.legend(attempt_handles + h0 + handles, [h.get_label() for h in attempt_handles] + l0 + labels, fontsize=8,
              loc="upper left", ncol=2)
    ax.set_ylim(0, (max(ys) if ys else 1) * 1.5)  # headroom for the legend above the bars
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training images/s (all workers)")
    ax.set_title(f"Throughput: global batch {cfg.get('global_batch_size', '?')}, {workers} worker(s), "
                 f"backend {cfg.get('backend', '?')}", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.subplots_adjust(left=0.09, right=0.91, bottom=0.13, top=0.9)
    return fig


def _decode(image: bytes) -> Any:
    from PIL import Image

    import numpy as np

    with Image.open(io.BytesIO(image)) as im:
        return np.asarray(im.convert("RGB"))


def plot_predictions(samples: Sequence[Sample], predictions: Sequence[Mapping[str, Any]],
                     names: Mapping[str, str], *, grid: int) -> "Figure":
    """A grid of images titled with the true and the predicted class (green when right, red when wrong)."""
    fig = _figure(figure_size("predictions", grid=grid))
    cols, rows = _grid_shape(grid)
    axes = fig.subplots(rows, cols, squeeze=False)
    right = 0
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= len(samples):
            continue
        sample, pred = samples[i], predictions[i]
        ax.imshow(_decode(sample.image))
        true_name = short_name(_name(names, sample.synset))
        top = pred.get("top") or []
        if top:
            guess = top[0]
            ok = guess["synset"] == sample.synset
            right += ok
            text = f"true: {true_name}\npred: {short_name(guess['name'])} {guess['probability']:.0%}"
        else:
            ok = False
            text = f"true: {true_name}\npred: error"
        ax.set_title(text, fontsize=8, color=_GOOD if ok else _BAD, loc="left")
        for spine in ax.spines.values():  # a coloured frame reads faster than the text
            spine.set_visible(True)
            spine.set_color(_GOOD if ok else _BAD)
            spine.set_linewidth(3)
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Validation predictions: {right} of {len(samples)} right (green: right, red: wrong)",
                 fontsize=11)
    # Fixed pixel margins: 70 px for the page title and the first row's two-line titles, 50 px between rows.
    height = rows * PREDICTION_CELL[1]
    top, bottom, gap = 1 - 70 / height, 8 / height, 50
    axes_height = (height * (top - bottom) - (rows - 1) * gap) / rows
    fig.subplots_adjust(left=0.02, right=0.98, bottom=bottom, top=top, hspace=gap / axes_height, wspace=0.1)
    return fig


def predict_samples(model_dir: str, samples: Sequence[Sample], *, top_k: int = 5) -> list[dict[str, Any]]:
    """Classify stored samples with the model dir's SavedModel through the public prediction API (the images
    go through the same serving signature, preprocessing included, that serving and batch inference use)."""
    from imagenet_spark.serving.predict import predict_files

    scratch = tempfile.mkdtemp(prefix="imagenet-spark-report-")
    try:
        paths = []
        for i, sample in enumerate(samples):
            path = os.path.join(scratch, f"{i:04d}.jpg")
            with open(path, "wb") as f:
                f.write(sample.image)
            paths.append(path)
        return predict_files(model_dir, paths, top_k=top_k)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def plot_samples_per_class(data: str, *, split: str = "train", per_class: int = 4,
                           max_classes: int = 12) -> "Figure":
    """Rows of ``per_class`` stored images for up to ``max_classes`` classes (spread over the synsets), each row
    labelled with the synset and its name: what a person checks first after the partition job."""
    samples = read_samples(data, split=split, count=per_class * max_classes, per_class=per_class,
                           max_classes=max_classes)
    synsets = list(dict.fromkeys(s.synset for s in samples))
    names = _class_names(None, data)
    fig = _figure(figure_size("samples", classes=len(synsets), per_class=per_class))
    width, height = fig.get_size_inches() * DPI
    axes = fig.subplots(max(1, len(synsets)), per_class, squeeze=False)
    for row, synset in enumerate(synsets):
        images = [s for s in samples if s.synset == synset]
        for col in range(per_class):
            ax = axes[row][col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(images):
                ax.imshow(_decode(images[col].image))
            else:
                ax.set_axis_off()
            if col == 0:
                ax.set_ylabel(f"{synset}\n{short_name(_name(names, synset), 26)}", rotation=0, ha="right",
                              va="center", fontsize=9, labelpad=8)
    fig.suptitle(f"{split}: {per_class} stored image(s) per class, {len(synsets)} class(es)", fontsize=11)
    fig.subplots_adjust(left=SAMPLE_LABEL_WIDTH / width, right=0.99, bottom=0.01, top=1 - 45 / height,
                        hspace=0.08, wspace=0.05)
    return fig


def render_sample_grid(data: str, path: str, *, split: str = "train", per_class: int = 4,
                       max_classes: int = 12) -> str:
    """:func:`plot_samples_per_class` saved as a PNG at ``path`` (a path or URI); returns it."""
    return save_figure(plot_samples_per_class(data, split=split, per_class=per_class, max_classes=max_classes),
                       path)


def manifest_tables(manifest: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """A dataset manifest as tables: ``splits`` (images, row groups), ``classes`` (images per split and synset,
    with names), ``rejects`` (file, split, reason, detail), ``reasons`` (count per reason), ``conversions``."""
    from imagenet_spark.data.synsets import human_name

    counts = manifest.get("counts", {})
    row_groups = manifest.get("row_groups", {})
    splits = [{"split": split, "images": n, "row_groups": row_groups.get(split, 0),
               "classes": len(counts.get(split, {}))} for split, n in manifest.get("split_sizes", {}).items()]
    synsets = sorted({s for per in counts.values() for s in per})
    classes = [{"synset": s, "name": human_name(s), **{split: counts[split].get(s, 0) for split in counts}}
               for s in synsets]
    rejects = [{"filename": r.get("filename"), "split": r.get("split"), "reason": r.get("reason"),
                "detail": r.get("detail")} for r in manifest.get("rejects", [])]
    reasons = [{"reason": k, "count": v} for k, v in manifest.get("rejects_by_reason", {}).items()]
    conversions = [{"conversion": k, "count": v} for k, v in manifest.get("conversion_counts", {}).items()]
    return {"splits": splits, "classes": classes, "rejects": rejects, "reasons": reasons, "conversions": conversions}


# --- the report -----------------------------------------------------------------------------------------------


def summary_rows(record: RunRecord) -> list[tuple[str, str]]:
    """The summary table: what a person checks first about a run."""
    history, cfg = record.history, record.config or {}
    last = history[-1]
    rows: list[tuple[str, str]] = [("model dir", record.model_dir)]
    if cfg:
        rows += [("model", f"{cfg.get('model')} (image size {cfg.get('image_size') or 'default'})"),
                 ("data", str(cfg.get("data"))),
                 ("workers / backend", f"{cfg.get('workers')} / {cfg.get('backend')}"),
                 ("global batch / peak lr", f"{cfg.get('global_batch_size')} / "
                                            f"{float(cfg['base_lr']) * float(cfg['global_batch_size']) / 256:.4g}"),
                 ("epochs", f"{len(history)} of {cfg.get('epochs'):g}" if isinstance(cfg.get("epochs"), (int, float))
                  else str(len(history)))]
    spe = steps_per_epoch(history, cfg.get("epochs"))
    if spe:
        rows.append(("steps per epoch / total", f"{spe} / {last.get('global_step')}"))

    def pct(value: Any) -> str:
        return f"{value:.2%}" if isinstance(value, (int, float)) else "-"

    rows.append(("final train loss / top-1 / top-5",
                 f"{last.get('loss', float('nan')):.4f} / {pct(last.get('top1'))} / {pct(last.get('top5'))}"))
    evaluated = [r for r in history if isinstance(r.get("val_top1"), (int, float))]
    if evaluated:
        final = evaluated[-1]
        best = max(evaluated, key=lambda r: r["val_top1"])
        rows.append(("final validation top-1 / top-5",
                     f"{pct(final['val_top1'])} / {pct(final.get('val_top5'))} ({final.get('val_images', '?')} "
                     f"images, epoch {final['epoch']})"))
        rows.append(("best validation top-1", f"{pct(best['val_top1'])} (epoch {best['epoch']})"))
    rates = [float(r["images_per_s"]) for r in history if isinstance(r.get("images_per_s"), (int, float))]
    if rates:
        rows.append(("training images/s (median, all workers)", f"{statistics.median(rates):,.0f}"))
    walls = [float(r["wall_time_s"]) for r in history if isinstance(r.get("wall_time_s"), (int, float))]
    if walls:
        rows.append(("time in epochs (train + eval)", f"{sum(walls):,.1f} s"))
    attempts = sorted({int(r.get("attempt", 0)) for r in history})
    rows.append(("attempts seen in metrics", ", ".join(map(str, attempts))))
    if record.mlflow:
        from imagenet_spark.tracking import run_location

        where = run_location(str(record.mlflow.get("tracking_uri")), record.mlflow.get("experiment_id"),
                             record.mlflow.get("run_id"))
        rows.append(("MLflow run", f"{record.mlflow.get('run_id')} at {record.mlflow.get('tracking_uri')}"
                                   + (f" ({where})" if where else "")))
    return rows


def _html(record: RunRecord, pictures: Mapping[str, str], notes: Sequence[str]) -> str:
    e = html.escape
    captions = {"curves": "Loss, top-1 and top-5 per epoch (train and validation)",
                "lr": "Learning-rate schedule", "throughput": "Training throughput per epoch",
                "predictions": "Validation images: true and predicted class"}
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
             f"<title>imagenet-spark report: {e(record.model_dir)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1560px}table{border-collapse:collapse;"
             "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:14px}"
             "th{background:#f4f4f4}img{max-width:100%;border:1px solid #eee;margin:0.5em 0 1.5em}"
             ".note{color:#8a6d3b}</style></head><body>",
             f"<h1>Training report</h1><p>{e(_title(record))}</p>", "<h2>Summary</h2><table>"]
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary_rows(record)]
    parts.append("</table>")
    parts += [f"<p class='note'>{e(n)}</p>" for n in notes]
    for name, path in pictures.items():
        parts.append(f"<h2>{e(captions.get(name, name))}</h2><img src='{e(posixpath.basename(path))}' "
                     f"alt='{e(name)}'>")
    keys = [k for k in ("epoch", "loss", "top1", "top5", "val_loss", "val_top1", "val_top5", "val_images",
                        "images_per_s", "learning_rate", "wall_time_s", "attempt")
            if any(k in r for r in record.history)]
    parts.append("<h2>Per epoch (metrics.json)</h2><table><tr>" + "".join(f"<th>{e(k)}</th>" for k in keys) + "</tr>")
    for r in record.history:
        cells = []
        for k in keys:
            v = r.get(k, "")
            cells.append(f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{e(str(v))}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"


def render_report(model_dir: str, *, out_dir: str | None = None, data: str | None = None,
                  grid: int = 16) -> dict[str, str]:
    """Render the report of a model dir; returns ``{"curves", "lr", "throughput", "predictions", "html"}`` →
    path or URI (``predictions`` only when a SavedModel and the validation split are there).

    ``data`` overrides the dataset recorded in config.json (for a dataset that moved); ``grid`` is the number
    of validation images in ``predictions.png``. A report of a run still training is fine: it shows the epochs
    so far, and the prediction grid once the model is exported.
    """
    if isinstance(grid, bool) or not isinstance(grid, int) or not 1 <= grid <= 64:
        raise ReportError(f"grid={grid!r}: must be between 1 and 64 images")
    record = load_run(model_dir)
    out = out_dir or fs.join(model_dir, REPORT_DIR)
    fs.make_dirs(out)
    outputs: dict[str, str] = {}
    for name, plot in (("curves", plot_curves), ("lr", plot_learning_rate), ("throughput", plot_throughput)):
        outputs[name] = save_figure(plot(record), fs.join(out, FILES[name]))
    notes: list[str] = []
    source = data or (record.config or {}).get("data")
    has_model = fs.is_file(fs.join(model_dir, "saved_model", "saved_model.pb"))
    if data and not fs.is_dir(fs.join(data, "validation")):
        raise ReportError(f"data={data!r}: no validation/ split there. Fix: pass the --output of jobs/partition.py "
                          "(the dataset the model was trained on).")
    if not has_model:
        notes.append("No prediction grid: the model has not been exported yet (saved_model/ is written at the end "
                     "of training).")
    elif not source or not fs.is_dir(fs.join(source, "validation")):
        notes.append(f"No prediction grid: the dataset {source!r} has no validation/ split here; pass data= (--data) "
                     "where the dataset is now.")
    else:
        samples = read_samples(source, split="validation", count=grid)
        predictions = predict_samples(model_dir, samples)
        names = _class_names(model_dir, source)
        outputs["predictions"] = save_figure(plot_predictions(samples, predictions, names, grid=grid),
                                             fs.join(out, FILES["predictions"]))
    for note in notes:
        log.warning("%s", note)
    pictures = {k: v for k, v in outputs.items() if k != "html"}
    outputs["html"] = fs.join(out, FILES["html"])
    fs.write_text_atomic(outputs["html"], _html(record, pictures, notes))
    log.info("report of %s: %s", model_dir, outputs["html"])
    return outputs


# --- command line (wired into cli.py's _COMMANDS) -------------------------------------------------------------


def report_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model-dir", dest="model_dir", required=True,
                        help="a training run's --model-dir (metrics.json, config.json, saved_model/)")
    parser.add_argument("--out-dir", dest="out_dir", default=None,
                        help="where to write the PNG files and report.html (default MODEL_DIR/report)")
    parser.add_argument("--data", default=None,
                        help="the dataset for the prediction grid (default: the one in config.json)")
    parser.add_argument("--grid", type=int, default=16, help="validation images in predictions.png (default 16)")
    parser.add_argument("--log-level", default=None)
    return parser


def run_report_cli(args: argparse.Namespace) -> int:
    """Render the report and log where its files are."""
    outputs = render_report(args.model_dir, out_dir=args.out_dir, data=args.data, grid=args.grid)
    log.info("wrote %s", ", ".join(outputs.values()))
    return 0
