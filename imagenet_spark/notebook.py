"""Shims that let the same notebook file run on Databricks and as a plain Python script.

On Databricks a notebook has ``dbutils`` (widgets), ``display``/``displayHTML`` and a ``spark`` session in its
globals. Run as ``python notebooks/01_prepare_imagenet.py`` it has none of them, so:

* :func:`widget` reads a Databricks widget (creating it with its default, as notebooks do), else the
  environment variable ``IMAGENET_SPARK_<NAME>``, else the default: the tests and a shell drive the same
  notebook through environment variables;
* :func:`show` displays a table (Spark or pandas DataFrame, list of dicts, dict) with ``display``, else
  logs it as a text table; :func:`show_image` embeds a PNG, else logs its path;
* :func:`spark_session` returns the notebook's ``spark``, else builds a local one (``local[2]`` unless
  ``IMAGENET_SPARK_MASTER`` says otherwise).

Why look in ``__main__``: a Databricks (IPython) notebook's globals are the ``__main__`` namespace, and so
are a script's; a library function cannot see its caller's globals otherwise. Each function also takes an
explicit ``namespace`` for tests and for callers that keep their globals elsewhere.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from imagenet_spark.errors import ImagenetSparkError

log = logging.getLogger(__name__)

ENV_PREFIX = "IMAGENET_SPARK_"
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


class NotebookError(ImagenetSparkError, ValueError):
    """A widget (or its environment variable) holds a value the notebook cannot use; names both and the fix."""


def _namespace(namespace: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if namespace is not None:
        return namespace
    main = sys.modules.get("__main__")
    found: dict[str, Any] = dict(vars(main)) if main is not None else {}
    try:  # IPython kernels whose user namespace is not __main__'s
        from IPython import get_ipython  # type: ignore[import-not-found, unused-ignore]  # not every env has it

        shell = get_ipython()
        if shell is not None:
            found = {**found, **shell.user_ns}
    except ImportError:
        pass
    return found


def notebook_global(name: str, namespace: Mapping[str, Any] | None = None) -> Any:
    """The notebook's global ``name`` (``dbutils``, ``display``, ``spark``...), or None when there is none."""
    return _namespace(namespace).get(name)


def on_databricks() -> bool:
    """True inside a Databricks runtime (driver or notebook)."""
    return bool(os.environ.get("DATABRICKS_RUNTIME_VERSION"))


def env_name(name: str) -> str:
    """The environment variable a widget falls back to: ``IMAGENET_SPARK_<NAME>`` (upper case, ``_`` for others)."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def widget(name: str, default: str, choices: Sequence[str] | None = None, *, label: str | None = None,
           namespace: Mapping[str, Any] | None = None) -> str:
    """A notebook parameter: the Databricks widget ``name`` (a dropdown when ``choices`` is given), else
    ``IMAGENET_SPARK_<NAME>``, else ``default``. A value outside ``choices`` fails with the allowed values."""
    default = str(default)
    dbutils = notebook_global("dbutils", namespace)
    if dbutils is not None:
        if choices:
            options = list(dict.fromkeys([*map(str, choices), default]))
            dbutils.widgets.dropdown(name, default, options, label or name)
        else:
            dbutils.widgets.text(name, default, label or name)
        value = str(dbutils.widgets.get(name))
        source = f"widget {name}"
    else:
        value = os.environ.get(env_name(name), default)
        source = f"{env_name(name)} (widget {name})"
    value = value.strip()
    if choices and value not in [str(c) for c in choices]:
        raise NotebookError(f"{source}={value!r}: not one of {', '.join(map(str, choices))}. Fix: pick one of them.")
    return value


def widget_int(name: str, default: int, *, label: str | None = None,
               namespace: Mapping[str, Any] | None = None) -> int:
    """An integer widget; a non-integer value fails naming the widget and its environment variable."""
    value = widget(name, str(default), label=label, namespace=namespace)
    try:
        return int(value)
    except ValueError:
        raise NotebookError(f"widget {name} ({env_name(name)})={value!r}: expected an integer. Fix: enter a whole "
                            f"number, e.g. {default}.") from None


def widget_float(name: str, default: float, *, label: str | None = None,
                 namespace: Mapping[str, Any] | None = None) -> float:
    """A number widget; a non-number fails naming the widget and its environment variable."""
    value = widget(name, f"{default:g}", label=label, namespace=namespace)
    try:
        return float(value)
    except ValueError:
        raise NotebookError(f"widget {name} ({env_name(name)})={value!r}: expected a number. Fix: enter a number, "
                            f"e.g. {default:g}.") from None


def widget_bool(name: str, default: bool, *, label: str | None = None,
                namespace: Mapping[str, Any] | None = None) -> bool:
    """A true/false dropdown."""
    value = widget(name, "true" if default else "false", ["true", "false"] if notebook_global("dbutils", namespace)
                   else None, label=label, namespace=namespace).lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise NotebookError(f"widget {name} ({env_name(name)})={value!r}: expected true or false. Fix: set it to "
                        "true or false.")


def settings(text: str) -> list[str]:
    """``key=value`` settings from a free-text widget, separated by spaces, semicolons or new lines (commas stay
    inside values, e.g. ``recipe.step_epochs=30,60,80``); what ``resolve(..., overrides=...)`` takes."""
    items = [item for item in re.split(r"[\s;]+", text or "") if item]
    bad = [item for item in items if "=" not in item]
    if bad:
        raise NotebookError(f"settings {bad[0]!r}: expected key=value. Fix: write e.g. 'recipe.base_lr=0.4 "
                            "recipe.warmup_epochs=1', separated by spaces.")
    return items


def work_dir(namespace: Mapping[str, Any] | None = None) -> str:
    """The folder the three notebooks share (raw fake data, dataset, model, predictions): widget ``work_dir``,
    default ``dbfs:/tmp/imagenet-spark`` on Databricks, else ``<tmp>/imagenet-spark-notebooks``.

    Why a ``dbfs:`` URI there rather than ``/dbfs/...``: Spark resolves a bare path against DBFS
    (``/dbfs/x`` would become ``dbfs:/dbfs/x``), while the library maps ``dbfs:/x`` to the ``/dbfs/x`` mount
    for everything that is not Spark (pyarrow, TensorFlow), so one spelling works for both.
    """
    from imagenet_spark.data import fs

    default = "dbfs:/tmp/imagenet-spark" if on_databricks() else os.path.join(tempfile.gettempdir(),
                                                                             "imagenet-spark-notebooks")
    path = widget("work_dir", default, label="Work folder shared by the notebooks", namespace=namespace)
    fs.make_dirs(path)
    return path


def join(base: str, *parts: str) -> str:
    """Join onto a path or URI (``dbfs:/...``, ``s3a://...``) without touching the scheme."""
    from imagenet_spark.data import fs

    return fs.join(base, *parts)


def setup_logging(level: str | None = None) -> None:
    """Send the library's log (training progress included) to the cell output.

    Outside Databricks: the package's usual console setup. On Databricks the root logger belongs to the
    runtime, so only a handler on the ``imagenet_spark`` logger is added (once).
    """
    from imagenet_spark import logs

    if not on_databricks():
        logs.configure(level)
        return
    logger = logging.getLogger("imagenet_spark")
    logger.setLevel((level or "INFO").upper())
    if not any(getattr(h, "_imagenet_spark_notebook", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._imagenet_spark_notebook = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False


def spark_session(*, app_name: str = "imagenet-spark notebook", master: str = "local[2]",
                  namespace: Mapping[str, Any] | None = None) -> Any:
    """The notebook's ``spark``, else a local session (``IMAGENET_SPARK_MASTER`` or ``master``) with the
    package shipped to executors."""
    spark = notebook_global("spark", namespace)
    if spark is not None:
        return spark
    from imagenet_spark.spark.session import build_session, ship_package

    session = build_session(app_name, master=os.environ.get(env_name("master"), master),
                            conf={"spark.ui.showConsoleProgress": "false"})
    ship_package(session)
    return session


def _to_pandas(obj: Any, max_rows: int) -> Any:
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return obj
    if hasattr(obj, "toPandas") and hasattr(obj, "limit"):  # a Spark DataFrame
        return obj.limit(max_rows).toPandas()
    if isinstance(obj, Mapping):
        return pd.DataFrame({"key": list(obj.keys()), "value": [str(v) for v in obj.values()]})
    if isinstance(obj, (list, tuple)):
        return pd.DataFrame(list(obj))
    return None


def show(obj: Any, *, title: str | None = None, max_rows: int = 50,
         namespace: Mapping[str, Any] | None = None) -> None:
    """Display a table: ``display`` on Databricks (Spark DataFrames stay interactive), else a logged text table
    of at most ``max_rows`` rows."""
    display = notebook_global("display", namespace)
    if display is not None:
        if title:
            html = notebook_global("displayHTML", namespace)
            if html is not None:
                html(f"<h4>{title}</h4>")
        is_spark = hasattr(obj, "toPandas") and hasattr(obj, "limit")
        frame = obj if is_spark else _to_pandas(obj, max_rows)
        display(frame if frame is not None else obj)
        return
    frame = _to_pandas(obj, max_rows)
    if frame is None:
        log.info("%s%s", f"{title}: " if title else "", obj)
        return
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 30, "display.max_colwidth", 60):
        text = frame.head(max_rows).to_string(index=False) if len(frame) else "(no rows)"
    more = f"\n... {len(frame) - max_rows} more rows" if len(frame) > max_rows else ""
    log.info("%s\n%s%s", title or "table", text, more)


def show_image(path: str, *, title: str | None = None, namespace: Mapping[str, Any] | None = None) -> None:
    """Embed a PNG in the cell output on Databricks (``displayHTML``), else log where it is."""
    html = notebook_global("displayHTML", namespace)
    if html is not None:
        from imagenet_spark.data import fs

        data = base64.b64encode(fs.read_bytes(path)).decode("ascii")
        heading = f"<h4>{title}</h4>" if title else ""
        html(f"{heading}<img src='data:image/png;base64,{data}' style='max-width:100%'>")
        return
    log.info("%s%s", f"{title}: " if title else "picture: ", path)


def fake_input(work: str, *, classes: int = 10, train_per_class: int = 40, val_per_class: int = 10,
               size: tuple[int, int] = (64, 48), quirks: bool = True, seed: int = 0) -> str:
    """A synthetic ImageNet (ILSVRC layout) under ``work/raw``, written once and reused by later runs with
    the same settings; returns its path. A notebook without real data still runs end to end on it."""
    import json

    from imagenet_spark.data import fs
    from imagenet_spark.data.fake import FakeSpec, write_ilsvrc

    root = fs.normalize(fs.join(work, "raw"))  # written with local file APIs (on Databricks: the /dbfs mount)
    spec = FakeSpec(num_classes=classes, train_per_class=train_per_class, val_per_class=val_per_class,
                    image_size=size, quirks=quirks, seed=seed)
    marker = os.path.join(root, ".fake-spec.json")  # hidden: the partition job skips it
    wanted = json.dumps({"classes": classes, "train": train_per_class, "val": val_per_class, "size": list(size),
                         "quirks": quirks, "seed": seed}, sort_keys=True)
    if os.path.isfile(marker):
        with open(marker) as f:
            if f.read() == wanted:
                log.info("fake data already in %s; reusing it", root)
                return root
        raise NotebookError(f"{root}: holds fake data with other settings. Fix: delete {root} or set another "
                            "work_dir.")
    summary = write_ilsvrc(root, spec)
    with open(marker, "w") as f:
        f.write(wanted)
    log.info("wrote fake ImageNet: %d files, %d classes in %s", summary.total_files, len(summary.classes), root)
    return root


def sample_images(data: str, folder: str, *, split: str = "validation", count: int = 6) -> str:
    """Copy ``count`` stored images of a dataset split to ``folder`` as JPEG files (named by their true synset),
    standing in for uploaded pictures when the notebook is given none; returns the folder."""
    from imagenet_spark.data import fs
    from imagenet_spark.data.samples import read_samples

    for i, sample in enumerate(read_samples(data, split=split, count=count)):
        fs.write_bytes(fs.join(folder, f"{i:02d}_{sample.synset}.jpg"), sample.image)
    return folder
