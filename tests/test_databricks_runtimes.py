"""Databricks, as the runtimes really are: the cluster specs in conf/spark/, the runtime pin files, and the install
path (tools/databricks/init-imagenet-spark.sh) that adds our wheel to a runtime without moving any of its packages.

The install is tested for real on small runtimes built here in seconds (a venv holding a few pinned
distributions): the script installs into one whose versions fit, refuses one whose pyarrow is too old while
leaving it exactly as it was, and adds tf-keras where TensorFlow >= 2.16 ships without it. The full proof per
runtime (its whole pin file, pyspark of its Spark, the notebooks as scripts) is tools/databricks/prove_runtime.py;
the last test runs it against the runtime venvs that exist (.venv-dbr-15.4, .venv-dbr-17.3)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "conf" / "spark").glob("databricks-*.json"))
RUNTIMES = REPO / "tools" / "databricks" / "runtimes"
INIT = REPO / "tools" / "databricks" / "init-imagenet-spark.sh"
SUPPORTED = ("15.4-lts-ml", "16.4-lts-ml", "17.3-lts-ml", "18-lts-ml")
SPARK = {"15.4-lts-ml": "3.5.0", "16.4-lts-ml": "3.5.2", "17.3-lts-ml": "4.0.0", "18-lts-ml": "4.1.0"}

sys.path.insert(0, str(REPO / "tools" / "databricks"))
import prove_runtime  # noqa: E402  (the proof's own parsing and comparison, tested here)


def test_one_cluster_spec_per_supported_runtime_and_the_old_one_gone():
    assert [p.name for p in SPECS] == [f"databricks-{name}.json" for name in sorted(SUPPORTED)]
    assert not (REPO / "conf" / "spark" / "databricks-cluster.json").exists()


@pytest.mark.parametrize("name", SUPPORTED)
def test_cluster_spec_has_what_barrier_training_needs(name):
    spec = json.loads((REPO / "conf" / "spark" / f"databricks-{name}.json").read_text())
    runtime = prove_runtime.read_runtime(name)
    assert spec["spark_version"] == runtime["spark_version"]
    assert re.fullmatch(r"\d+(\.\d+|)\.x-gpu-ml-scala2\.1[23]", spec["spark_version"])
    assert spec["data_security_mode"] == "SINGLE_USER", "barrier mode needs a dedicated (single-user) cluster"
    assert isinstance(spec["num_workers"], int) and "autoscale" not in spec, "a fixed size: barrier slots are counted"
    conf = spec["spark_conf"]
    assert conf["spark.dynamicAllocation.enabled"] == "false"
    assert conf["spark.task.resource.gpu.amount"] == "1"
    assert conf["spark.python.worker.reuse"] == "false"
    assert conf["spark.barrier.sync.timeout"].endswith("s")
    env = spec["spark_env_vars"]
    assert env["TF_USE_LEGACY_KERAS"] == "1"
    assert env["IMAGENET_SPARK_WHEEL"].endswith(".whl")
    (script,) = spec["init_scripts"]
    assert Path(script["volumes"]["destination"]).name == INIT.name, "the init script that is in this repo"
    assert not any(k.startswith("spark.pyspark") or "pip" in k for k in conf), "nothing replaces the runtime's Python"


@pytest.mark.parametrize("name", SUPPORTED)
def test_pin_file_names_its_source_python_and_spark(name):
    runtime = prove_runtime.read_runtime(name)
    text = runtime["path"].read_text()
    assert "https://docs.databricks.com/aws/en/release-notes/runtime/" in text
    assert runtime["spark"] == SPARK[name]
    assert runtime["python"] == ("3.11" if name == "15.4-lts-ml" else "3.12")
    pinned = {line.split("==")[0].lower() for line in runtime["pins"]}
    assert all("==" in line for line in runtime["pins"]), "exact versions only"
    assert "pyspark" not in pinned, "pyspark is the runtime's, stood in by the proof from the spark: line"
    assert {"numpy", "mlflow-skinny"} <= pinned


def test_compare_reports_moved_removed_and_added():
    before = {"numpy": "1.23.5", "pyarrow": "14.0.1", "pip": "24.0"}
    after = {"numpy": "1.26.4", "pip": "24.0", "imagenet-spark": "0.1.0", "tf-keras": "2.16.0"}
    moved, added = prove_runtime.compare(before, after)
    assert moved == ["numpy 1.23.5 -> 1.26.4", "pyarrow 14.0.1 -> removed"]
    assert added == ["tf-keras==2.16.0"]


# --- the init script, for real, on small runtimes ---------------------------------------------------------------

def _small_runtime(path: Path, pins: list[str]) -> str:
    """A venv holding exactly ``pins`` (binary wheels): a runtime in miniature."""
    venv.create(path, with_pip=True)
    python = str(path / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--only-binary", ":all:",
                    *pins], check=True)
    return python


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                    "-w", str(out), str(REPO)], check=True)
    (built,) = out.glob("imagenet_spark-*.whl")
    return built


def _install(python: str, wheel: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, IMAGENET_SPARK_PYTHON=python, IMAGENET_SPARK_WHEEL=str(wheel))
    return subprocess.run(["bash", str(INIT)], env=env, capture_output=True, text=True, timeout=600)


def _core_requirements(wheel: Path) -> list[str]:
    """The wheel's unconditional requirements (what the init script makes pip add), as pins that satisfy them
    at the oldest versions the runtimes ship."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    return [line.split(":", 1)[1].strip() for line in lines
            if line.startswith("Requires-Dist:") and "extra ==" not in line]


@pytest.mark.slow
def test_init_script_installs_the_wheel_and_moves_nothing(tmp_path, wheel):
    python = _small_runtime(tmp_path / "rt", ["numpy==1.26.4", "pyarrow==15.0.2", "PyYAML==6.0.1",
                                              "Pillow==10.3.0"])
    before = prove_runtime.pip_list(python)
    proc = _install(python, wheel)
    after = prove_runtime.pip_list(python)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    moved, _added = prove_runtime.compare(before, after)
    assert moved == [], f"the runtime moved: {moved}; the wheel requires {_core_requirements(wheel)}"
    assert "imagenet-spark" in after
    assert "no runtime package moved" in proc.stdout


def _dummy_distribution(folder: Path, name: str, version: str) -> Path:
    """A real installable distribution ``name==version`` that holds no code: a runtime whose ``name`` is older
    than any supported runtime's, made without needing that old version's wheel for this Python."""
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(
        f'[project]\nname = "{name}"\nversion = "{version}"\n[tool.setuptools]\npy-modules = []\n'
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n')
    return folder


@pytest.mark.slow
def test_init_script_refuses_a_runtime_it_would_have_to_change_and_leaves_it_as_it_was(tmp_path, wheel):
    # A runtime whose numpy (1.0) is older than the wheel needs: pip would have to upgrade it, so nothing happens.
    python = _small_runtime(tmp_path / "rt", ["PyYAML==6.0.1"])
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    str(_dummy_distribution(tmp_path / "old-numpy", "numpy", "1.0.0"))], check=True)
    before = prove_runtime.pip_list(python)
    assert before["numpy"] == "1.0.0"
    proc = _install(python, wheel)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "would change packages this runtime ships" in proc.stdout
    assert prove_runtime.pip_list(python) == before


@pytest.mark.slow
def test_init_script_refuses_to_run_without_a_wheel(tmp_path):
    env = dict(os.environ, IMAGENET_SPARK_PYTHON=sys.executable, IMAGENET_SPARK_WHEEL=str(tmp_path / "none.whl"))
    proc = subprocess.run(["bash", str(INIT)], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "no such file" in proc.stdout
    env.pop("IMAGENET_SPARK_WHEEL")
    proc = subprocess.run(["bash", str(INIT)], env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "IMAGENET_SPARK_WHEEL is not set" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["15.4-lts-ml", "17.3-lts-ml"])
def test_full_runtime_proof_where_its_venv_was_built(runtime):
    """The whole proof for a runtime whose venv exists (built by `python3 tools/databricks/prove_runtime.py`,
    about 1-2 GB of downloads, so not built by the test): install the Databricks way, nothing of the runtime moves."""
    venv_dir = REPO / f".venv-dbr-{runtime.split('-')[0]}"
    if not (venv_dir / ".runtime-key").is_file():
        pytest.skip(f"{venv_dir.name} not built: python3 tools/databricks/prove_runtime.py {runtime}")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "databricks" / "prove_runtime.py"), runtime],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"PASS {runtime}: pip moved none of the runtime's packages" in proc.stdout
