"""The run's pictures: loss and accuracy curves, the learning-rate schedule, throughput; figure sizes and saving.

Why matplotlib's object API (``Figure`` without pyplot): pyplot keeps a process-wide registry of open
figures and picks a GUI backend from the environment; a driver, a notebook or a test renders here without
either, always with the Agg renderer. Why fixed figure sizes without "tight" bounding boxes: the pixel
size of every picture is known in advance (:func:`figure_size`), so pages and tests can rely on it.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from imagenet_spark.data import fs
from imagenet_spark.report.run import ReportError, RunRecord, run_title, steps_per_epoch

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.figure import Figure

DPI = 100
#: Pixel sizes (width, height) of the fixed-size pictures.
CURVES_SIZE = (1500, 450)
LR_SIZE = (1000, 400)
THROUGHPUT_SIZE = (1000, 400)
#: One cell of the prediction grid and of the per-class sample grid, in pixels.
PREDICTION_CELL = (200, 235)
SAMPLE_CELL = (150, 150)
SAMPLE_LABEL_WIDTH = 220


def figure_size(name: str, *, grid: int = 16, classes: int = 0, per_class: int = 0) -> tuple[int, int]:
    """Pixel size ``(width, height)`` of a picture this module renders."""
    if name == "curves":
        return CURVES_SIZE
    if name == "lr":
        return LR_SIZE
    if name == "throughput":
        return THROUGHPUT_SIZE
    if name == "predictions":
        cols, rows = grid_shape(grid)
        return cols * PREDICTION_CELL[0], rows * PREDICTION_CELL[1]
    if name == "samples":
        return SAMPLE_LABEL_WIDTH + per_class * SAMPLE_CELL[0], classes * SAMPLE_CELL[1] + 50
    raise ReportError(f"figure {name!r}: unknown; known: curves, lr, throughput, predictions, samples")


def grid_shape(n: int) -> tuple[int, int]:
    cols = max(1, min(8, math.ceil(math.sqrt(n))))
    return cols, max(1, math.ceil(n / cols))


def new_figure(size_px: tuple[int, int]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(size_px[0] / DPI, size_px[1] / DPI), dpi=DPI)


def save_figure(fig: Figure, uri: str) -> str:
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


def plot_curves(record: RunRecord) -> Figure:
    """Loss, top-1 and top-5 per epoch, train and validation."""
    fig = new_figure(CURVES_SIZE)
    axes = fig.subplots(1, 3)
    smoothing = (record.config or {}).get("recipe.label_smoothing")
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
    fig.suptitle(run_title(record), fontsize=11)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.84, wspace=0.22)
    return fig


def plot_learning_rate(record: RunRecord) -> Figure:
    """The per-step schedule (when config.json is there) and the rate logged at the end of each epoch."""
    from imagenet_spark.train.schedules import make_schedule

    fig = new_figure(LR_SIZE)
    ax = fig.subplots()
    cfg = record.config or {}
    spe = steps_per_epoch(record.history, cfg.get("epochs"))
    title = "Learning rate"
    if cfg and spe:
        peak = float(cfg["recipe.base_lr"]) * float(cfg["global_batch_size"]) / 256
        schedule = make_schedule(peak_lr=peak, steps_per_epoch=spe, epochs=float(cfg["epochs"]),
                                 warmup_epochs=float(cfg.get("recipe.warmup_epochs", 0.0)),
                                 kind=str(cfg.get("recipe.schedule")),
                                 # runs from before the setting: warmup had to be shorter than the run, no clamp
                                 warmup_max_fraction=float(cfg.get("recipe.warmup_max_fraction", 1.0)),
                                 step_epochs=tuple(cfg.get("recipe.step_epochs") or ()),
                                 step_factor=float(cfg.get("recipe.step_factor", 0.1)))
        stride = max(1, schedule.total_steps // 2000)
        steps = list(range(0, schedule.total_steps, stride)) + [schedule.total_steps - 1]
        ax.plot([s / spe for s in steps], [schedule(s) for s in steps], "-", color="C0",
                label=f"schedule per step ({spe} steps/epoch)")
        title = (f"Learning rate: {schedule.kind}, peak {peak:.4g} (base_lr {float(cfg['recipe.base_lr']):g} x "
                 f"{cfg['global_batch_size']}/256), warmup {schedule.warmup_steps / spe:g} epoch(s)")
        per_epoch = spe

        def to_step(epoch: Any) -> Any:
            return epoch * per_epoch

        def to_epoch(step: Any) -> Any:
            return step / per_epoch

        ax.secondary_xaxis("top", functions=(to_step, to_epoch)).set_xlabel("step")
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


def plot_throughput(record: RunRecord) -> Figure:
    """Training images/s per epoch (coloured by attempt) and the epoch's wall time on a second axis."""
    fig = new_figure(THROUGHPUT_SIZE)
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

    attempt_handles: list[Any] = [Patch(color=f"C{a % 10}", label=f"attempt {a}")
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
    ax.legend(attempt_handles + h0 + handles, [str(h.get_label()) for h in attempt_handles] + l0 + labels, fontsize=8,
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

