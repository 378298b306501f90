"""The report page: a summary table, the pictures and the per-epoch table in one HTML file, and
:func:`render_report`, which renders every picture of a model dir beside it."""

from __future__ import annotations

import html
import logging
import posixpath
import statistics
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from imagenet_spark.data import fs
from imagenet_spark.data.samples import read_samples
from imagenet_spark.layout import DatasetDir, ModelDir
from imagenet_spark.report.plots import plot_curves, plot_learning_rate, plot_throughput, save_figure
from imagenet_spark.report.run import ReportError, RunRecord, load_run, run_title, steps_per_epoch
from imagenet_spark.report.samples import class_names, plot_predictions, predict_samples

log = logging.getLogger(__name__)

#: Output file per picture (read-only).
FILES = MappingProxyType({"curves": "curves.png", "lr": "lr.png", "throughput": "throughput.png",
                          "predictions": "predictions.png", "html": "report.html"})


def summary_rows(record: RunRecord) -> list[tuple[str, str]]:
    """The summary table: what a person checks first about a run."""
    history, cfg = record.history, record.config or {}
    last = history[-1]
    rows: list[tuple[str, str]] = [("model dir", record.model_dir)]
    if cfg:
        peak = float(cfg["recipe.base_lr"]) * float(cfg["global_batch_size"]) / 256
        rows += [("model", f"{cfg.get('model')} (image size {cfg.get('image_size') or 'default'})"),
                 ("data", str(cfg.get("data"))),
                 ("workers / backend", f"{cfg.get('workers')} / {cfg.get('backend')}"),
                 ("global batch / peak lr", f"{cfg.get('global_batch_size')} / "
                                            f"{peak:.4g}"),
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
             f"<h1>Training report</h1><p>{e(run_title(record))}</p>", "<h2>Summary</h2><table>"]
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
    out = out_dir or ModelDir(model_dir).report
    fs.make_dirs(out)
    outputs: dict[str, str] = {}
    for name, plot in (("curves", plot_curves), ("lr", plot_learning_rate), ("throughput", plot_throughput)):
        outputs[name] = save_figure(plot(record), fs.join(out, FILES[name]))
    notes: list[str] = []
    source = data or (record.config or {}).get("data")
    has_model = fs.is_file(ModelDir(model_dir).saved_model_pb)
    if data and not fs.is_dir(DatasetDir(data).split("validation")):
        raise ReportError(f"data={data!r}: no validation/ split there. Fix: pass the --output of jobs/partition.py "
                          "(the dataset the model was trained on).")
    if not has_model:
        notes.append("No prediction grid: the model has not been exported yet (saved_model/ is written at the end "
                     "of training).")
    elif not source or not fs.is_dir(DatasetDir(source).split("validation")):
        notes.append(f"No prediction grid: the dataset {source!r} has no validation/ split here; pass data= (--data) "
                     "where the dataset is now.")
    else:
        samples = read_samples(source, split="validation", count=grid)
        predictions = predict_samples(model_dir, samples)
        names = class_names(model_dir, source)
        outputs["predictions"] = save_figure(plot_predictions(samples, predictions, names, grid=grid),
                                             fs.join(out, FILES["predictions"]))
    for note in notes:
        log.warning("%s", note)
    pictures = {k: v for k, v in outputs.items() if k != "html"}
    outputs["html"] = fs.join(out, FILES["html"])
    fs.write_text_atomic(outputs["html"], _html(record, pictures, notes))
    log.info("report of %s: %s", model_dir, outputs["html"])
    return outputs

