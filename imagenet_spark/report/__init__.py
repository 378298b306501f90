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

Split by what it draws: ``run`` reads the model dir, ``plots`` the training pictures, ``samples`` the image
grids, ``page`` the HTML and :func:`render_report`, ``cli`` the command. The dataset helpers the notebooks
share (``read_samples``, ``manifest_tables``) live in :mod:`imagenet_spark.data.samples`.
"""

from imagenet_spark.report.cli import report_parser, run_report_cli
from imagenet_spark.report.page import FILES, render_report, summary_rows
from imagenet_spark.report.plots import figure_size, plot_curves, plot_learning_rate, plot_throughput, save_figure
from imagenet_spark.report.run import ReportError, RunRecord, load_run
from imagenet_spark.report.samples import plot_predictions, plot_samples_per_class, render_sample_grid

__all__ = ["FILES", "ReportError", "RunRecord", "figure_size", "load_run", "plot_curves", "plot_learning_rate",
           "plot_predictions", "plot_samples_per_class", "plot_throughput", "render_report", "render_sample_grid",
           "report_parser", "run_report_cli", "save_figure", "summary_rows"]
