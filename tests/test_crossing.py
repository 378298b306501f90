"""One dataset contract across the two stacks (README, "Stacks"): a dataset written on either stack is read by
pyarrow and spark.read.parquet on both, by stock petastorm on the legacy stack, and trained on by both.

Each test crosses once, with the other stack's venv in a subprocess (``tests/crossing_child.py``): written
here and read + trained there, and written there and read + trained here. Run on either stack, so every CI
run proves both directions. Without the other venv the tests skip, naming the setup command, unless
``IMAGENET_SPARK_REQUIRE_CROSSING=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagenet_spark.data.schema import imagenet_schema
from imagenet_spark.distribute import stack

pytestmark = [pytest.mark.crossing, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CHILD = REPO / "tests" / "crossing_child.py"
FIELDS = ["filename", "height", "image", "label", "synset", "width"]


def _other() -> tuple[str, Path]:
    """The other stack's name and interpreter (``IMAGENET_SPARK_OTHER_PYTHON`` overrides where it is)."""
    here = stack.stack_name()
    other = "current" if here == "legacy" else "legacy"
    python = Path(os.environ.get("IMAGENET_SPARK_OTHER_PYTHON")
                  or REPO / (".venv" if other == "current" else ".venv-legacy") / "bin" / "python")
    if not python.exists():
        reason = f"the {other} stack's venv is missing ({python}); run `make setup STACK={other}`"
        if os.environ.get("IMAGENET_SPARK_REQUIRE_CROSSING") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return other, python


def _child(python: Path | str, *args: str) -> dict[str, Any]:
    """Run the child on ``python``; its environment is this one's minus what would confuse the other stack."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "PYSPARK_PYTHON",
                                                             "PYSPARK_DRIVER_PYTHON", "VIRTUAL_ENV")}
    env.update(PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", SPARK_LOCAL_IP="127.0.0.1")
    proc = subprocess.run([str(python), str(CHILD), *args], capture_output=True, text=True, timeout=600, env=env,
                          cwd=REPO)
    assert proc.returncode == 0, f"{python} {args}: {proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_read_and_trained(out: dict[str, Any], sizes: dict[str, int], reader_stack: str) -> None:
    assert out["stack"] == reader_stack, out
    assert out["keras"].startswith("2."), f"the training code must get Keras 2: {out['keras']}"
    assert out["pyarrow_rows"] == sizes
    assert out["spark_rows"] == sizes["train"] and set(FIELDS) <= set(out["spark_columns"])
    # the same Unischema pickle on both stacks: the one shipped as package data
    assert bytes.fromhex(out["unischema_pickle"]) == imagenet_schema().unischema_pickle()
    if reader_stack == "legacy":
        assert out["petastorm"] == {"make_reader": sizes["train"], "make_reader_fields": FIELDS,
                                    "make_batch_reader": sizes["validation"], "image_is_bytes": True}
        assert out["train_reader"] == "petastorm"
    else:
        assert "petastorm" not in out and out["train_reader"] == "parquet"
    (epoch,) = out["history"]
    assert epoch["epoch"] == 1 and epoch["val_images"] == sizes["validation"], epoch
    assert epoch["loss"] == epoch["loss"] and epoch["loss"] > 0, "a finite training loss"


def test_written_here_read_and_trained_on_by_the_other_stack(dataset, tmp_path):
    other, python = _other()
    sizes = json.loads((dataset / "manifest.json").read_text())["split_sizes"]
    out = _child(python, "read", str(dataset), str(tmp_path / "model"))
    _assert_read_and_trained(out, sizes, other)


def test_written_by_the_other_stack_read_and_trained_on_here(tmp_path):
    other, python = _other()
    written = _child(python, "write", str(tmp_path))
    assert written["stack"] == other
    data = tmp_path / "ds"
    manifest = json.loads((data / "manifest.json").read_text())
    assert ("petastorm" in manifest["versions"]) == (other == "legacy")
    out = _child(sys.executable, "read", str(data), str(tmp_path / "model"))
    _assert_read_and_trained(out, written["split_sizes"], stack.stack_name())


@pytest.mark.legacy_only
def test_shipped_unischema_is_petastorms_schema():
    """The bytes every dataset carries unpickle (with petastorm's own restricted unpickler) to the Unischema
    built from imagenet_schema(); regenerate them with tools/make_unischema_pickle.py when the schema moves."""
    from petastorm.etl.legacy import depickle_legacy_package_name_compatible

    from imagenet_spark.data.schema import imagenet_unischema, unischema_pickle_bytes

    shipped = imagenet_schema().unischema_pickle()
    expected = imagenet_unischema()
    for loaded in (pickle.loads(shipped), depickle_legacy_package_name_compatible(shipped)):
        assert type(loaded) is type(expected) and loaded._name == expected._name
        assert list(loaded.fields.values()) == list(expected.fields.values())  # name, dtype, shape, nullable
        assert [type(f.codec._spark_type) for f in loaded.fields.values()] == \
            [type(f.codec._spark_type) for f in expected.fields.values()]
    assert unischema_pickle_bytes() == shipped, "stale: run tools/make_unischema_pickle.py on the legacy stack"
