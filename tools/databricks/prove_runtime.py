#!/usr/bin/env python3
"""Proof, without a workspace, that imagenet-spark installs on a Databricks ML runtime as that runtime really is.

For one runtime pin file (tools/databricks/runtimes/<runtime>.txt: the versions its release notes list) this
builds a virtualenv of the runtime's Python with exactly those versions, plus pyspark==<the runtime's Spark>
standing in for the runtime's own Spark (on Databricks pyspark is part of the image, not a pip package you may
reinstall). Then it installs our wheel the way the README tells Databricks users to (the cluster init script,
tools/databricks/init-imagenet-spark.sh), and compares `pip list` before and after: any runtime distribution that
changed version or disappeared fails the proof (exit 1); what was added is listed. With --notebooks it then runs
the four notebooks as scripts in that venv, as tests/test_notebooks.py does, and reports each one.

    python3 tools/databricks/prove_runtime.py 15.4-lts-ml [--notebooks] [--venv DIR]

Why a script and not only a test: building a runtime's venv downloads about 1-2 GB (TensorFlow, pyspark) once;
tests/test_databricks_runtimes.py runs this script against venvs that exist and checks the install logic itself
on a small runtime that it builds in seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RUNTIMES = REPO / "tools" / "databricks" / "runtimes"
INIT_SCRIPT = REPO / "tools" / "databricks" / "init-imagenet-spark.sh"
NOTEBOOKS = ("01_prepare_imagenet.py", "02_train_distributed.py", "03_evaluate_and_predict.py", "04_tune.py")
log = logging.getLogger("prove_runtime")


def read_runtime(name: str) -> dict:
    """The pin file's header fields (python, spark, spark_version) and its requirement lines."""
    path = RUNTIMES / f"{name}.txt"
    if not path.is_file():
        sys.exit(f"no runtime pin file {path}; known: {', '.join(sorted(p.stem for p in RUNTIMES.glob('*.txt')))}")
    fields: dict = {"pins": [], "path": path}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("#") and ":" in line and not line.startswith("#  "):
            key, _, value = line[1:].partition(":")
            if key.strip() in ("python", "spark", "spark_version"):
                fields[key.strip()] = value.strip()
        elif line and not line.startswith("#"):
            fields["pins"].append(line)
    return fields


def find_python(version: str) -> str:
    """The interpreter for the runtime's Python minor version: pyenv's if installed, else pythonX.Y on PATH
    (pyenv's shims answer for versions that are not selected, and then fail)."""
    for candidate in sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}")):
        return str(candidate)
    found = shutil.which(f"python{version}")
    if found and "/shims/" not in found:
        return found
    sys.exit(f"Python {version} not found: install it (pyenv install {version}) or put python{version} on PATH")


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    log.debug("$ %s", " ".join(cmd))
    return subprocess.run(cmd, check=True, text=True, **kwargs)


def pip_list(python: str) -> dict[str, str]:
    """{normalised name: version} of every distribution in the environment."""
    out = run([python, "-m", "pip", "list", "--disable-pip-version-check", "--format=freeze"],
              capture_output=True).stdout
    result = {}
    for line in out.splitlines():
        name, _, version = line.partition("==")
        result[name.lower().replace("_", "-")] = version
    return result


_TOP_LEVEL = r"""
import importlib.metadata as md, json
out = {}
for dist in md.distributions():
    tops = {f.parts[0] for f in (dist.files or []) if len(f.parts) > 1 and not f.parts[0].endswith(
        (".dist-info", ".egg-info", ".data")) and f.parts[0] not in ("..", "__pycache__", "bin")}
    out[dist.metadata["Name"].lower().replace("_", "-")] = sorted(tops)
print(json.dumps(out))
"""


def top_level_dirs(python: str) -> dict[str, set[str]]:
    """{distribution: the top-level folders its files live in} (cv2, numpy, ...), from each RECORD."""
    out = run([python, "-c", _TOP_LEVEL], capture_output=True).stdout
    return {name: set(tops) for name, tops in json.loads(out).items()}


def shadowing(before: dict[str, str], after: dict[str, str], tops: dict[str, set[str]]) -> list[str]:
    """Added distributions that write into a folder a runtime distribution owns (opencv-python-headless beside
    opencv-python: both are cv2/). pip sees no conflict, yet the runtime's files are overwritten."""
    found = []
    for name in sorted(set(after) - set(before)):
        for owner in sorted(before):
            shared = tops.get(name, set()) & tops.get(owner, set())
            if shared and owner != name:
                found.append(f"{name} writes into {', '.join(sorted(shared))}/ of the runtime's {owner}")
    return found


def build_runtime_venv(runtime: dict, venv: Path) -> str:
    """The runtime stand-in: its Python, its pins and pyspark of its Spark; reused while the pin file is unchanged."""
    python = str(venv / "bin" / "python")
    key = hashlib.sha256(runtime["path"].read_bytes()).hexdigest()[:16]
    stamp = venv / ".runtime-key"
    if stamp.is_file() and stamp.read_text() == key:
        log.info("runtime venv %s is up to date", venv)
        return python
    if venv.exists():
        shutil.rmtree(venv)
    run([find_python(runtime["python"]), "-m", "venv", str(venv)])
    pins = runtime["pins"] + [f"pyspark=={runtime['spark']}"]
    log.info("installing the runtime's %d pinned libraries + pyspark==%s into %s", len(pins) - 1, runtime["spark"],
             venv)
    # Binary wheels only for the pins (nothing compiles); pyspark is an sdist of pure Python.
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--only-binary", ":all:",
         "--no-binary", "pyspark", *pins])
    (venv / ".runtime-list").write_text(json.dumps(pip_list(python), indent=0, sort_keys=True))
    stamp.write_text(key)
    return python


def reset_to_runtime(python: str, venv: Path) -> None:
    """Back to the runtime as built: remove what an earlier proof added (our wheel, tf-keras, ...)."""
    runtime = json.loads((venv / ".runtime-list").read_text())
    current = pip_list(python)
    added = sorted(set(current) - set(runtime))
    if added:
        log.info("removing what an earlier run added: %s", ", ".join(added))
        tops = top_level_dirs(python)
        # Uninstalling an added distribution that shared a folder with a runtime one deletes the runtime's files
        # too (pip removes by RECORD): reinstall those owners afterwards.
        owners = sorted({owner for name in added for owner in runtime
                         if tops.get(name, set()) & tops.get(owner, set())})
        run([python, "-m", "pip", "uninstall", "-q", "-y", *added], capture_output=True)
        if owners:
            log.info("restoring the runtime's %s", ", ".join(owners))
            run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--force-reinstall",
                 "--only-binary", ":all:", *[f"{name}=={runtime[name]}" for name in owners]])
    changed = [name for name, version in runtime.items() if pip_list(python).get(name) != version]
    if changed:
        sys.exit(f"{venv} no longer holds the runtime ({', '.join(changed)} changed): delete it and rerun")


def build_wheel(python: str, out_dir: Path) -> Path:
    """Our wheel, built from this checkout as a release would be (no dependencies resolved here)."""
    run([python, "-m", "pip", "wheel", "--disable-pip-version-check", "-q", "--no-deps", "-w", str(out_dir), str(REPO)])
    wheels = sorted(out_dir.glob("imagenet_spark-*.whl"))
    if not wheels:
        sys.exit(f"pip wheel wrote no imagenet_spark wheel into {out_dir}")
    return wheels[-1]


def install_like_databricks(python: str, wheel: Path) -> subprocess.CompletedProcess:
    """The README's install path: the cluster init script, pointed at this venv's Python."""
    env = dict(os.environ, IMAGENET_SPARK_PYTHON=python, IMAGENET_SPARK_WHEEL=str(wheel))
    return subprocess.run(["bash", str(INIT_SCRIPT)], env=env, text=True, capture_output=True)


def compare(before: dict[str, str], after: dict[str, str]) -> tuple[list[str], list[str]]:
    """(what moved or vanished, what was added), our own package left out."""
    moved = [f"{name} {version} -> {after.get(name, 'removed')}" for name, version in sorted(before.items())
             if name != "imagenet-spark" and after.get(name) != version]
    added = [f"{name}=={version}" for name, version in sorted(after.items())
             if name not in before and name != "imagenet-spark"]
    return moved, added


def prove_install(runtime_name: str, venv: Path) -> str:
    """Build the runtime, install the wheel the Databricks way, fail if anything of the runtime moved."""
    runtime = read_runtime(runtime_name)
    python = build_runtime_venv(runtime, venv)
    reset_to_runtime(python, venv)
    before = pip_list(python)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(python, Path(tmp))
        proc = install_like_databricks(python, wheel)
    print(proc.stdout + proc.stderr)
    after = pip_list(python)
    moved, added = compare(before, after)
    moved += shadowing(before, after, top_level_dirs(python))
    print(f"runtime {runtime_name}: {len(before)} distributions before, {len(after)} after")
    print("added: " + (", ".join(added) or "nothing"))
    if proc.returncode != 0 or moved or "imagenet-spark" not in after:
        print("MOVED: " + ("; ".join(moved) or "nothing") + f"; init script exit {proc.returncode}")
        sys.exit(1)
    print(f"PASS {runtime_name}: pip moved none of the runtime's packages")
    return python


def run_notebooks(python: str, work: Path) -> bool:
    """The four notebooks as scripts in the runtime venv, on tiny fake data; True when all ran."""
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGENET_SPARK_", "MLFLOW_"))}
    env.update({
        "IMAGENET_SPARK_WORK_DIR": str(work), "IMAGENET_SPARK_MASTER": "local[2]", "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": python, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_USE_LEGACY_KERAS": "1",
        "PATH": f"{Path(python).parent}:{os.environ.get('PATH', '')}",
        "IMAGENET_SPARK_FAKE_CLASSES": "3", "IMAGENET_SPARK_FAKE_TRAIN_PER_CLASS": "16",
        "IMAGENET_SPARK_FAKE_VAL_PER_CLASS": "4", "IMAGENET_SPARK_RESIZE_SHORT": "40",
        "IMAGENET_SPARK_GRID_CLASSES": "3", "IMAGENET_SPARK_EPOCHS": "2", "IMAGENET_SPARK_BATCH": "8",
        "IMAGENET_SPARK_REPORT_GRID": "6", "IMAGENET_SPARK_TOP_K": "3", "IMAGENET_SPARK_MAX_TRIALS": "2",
        "IMAGENET_SPARK_TRAIN_SETTINGS": "base_lr=0.4 warmup_epochs=0.5 progress_every_s=1",
    })
    ok = True
    for name in NOTEBOOKS:
        proc = subprocess.run([python, str(REPO / "notebooks" / name)], env=env, cwd=work, text=True,
                              capture_output=True, timeout=600)
        status = "ran" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        print(f"notebook {name}: {status}")
        if proc.returncode != 0:
            print((proc.stdout + proc.stderr)[-3000:])
            ok = False
            break  # later notebooks read what earlier ones wrote
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runtime", help="a pin file name in tools/databricks/runtimes/, e.g. 15.4-lts-ml")
    parser.add_argument("--venv", type=Path, help="where the runtime venv lives (default .venv-dbr-<runtime>)")
    parser.add_argument("--notebooks", action="store_true", help="then run the notebooks as scripts in it")
    parser.add_argument("--work-dir", type=Path, help="the notebooks' work folder (default: a temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="[prove_runtime] %(message)s")
    venv = args.venv or REPO / f".venv-dbr-{args.runtime.split('-')[0]}"
    python = prove_install(args.runtime, venv.resolve())
    if args.notebooks:
        work = args.work_dir or Path(tempfile.mkdtemp(prefix=f"dbr-{args.runtime}-"))
        if not run_notebooks(python, work):
            sys.exit(1)
        print(f"PASS {args.runtime}: the four notebooks ran as scripts (work folder {work})")


if __name__ == "__main__":
    main()
