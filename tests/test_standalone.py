"""Both jobs with spark-submit on a real standalone cluster (master + 2 workers on 127.0.0.1), and an executor
killed mid-training: the driver relaunches the barrier stage and training resumes from the newest checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagenet_spark.data.fake import FakeSpec, write_ilsvrc

from .standalone import standalone_cluster

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.cluster]


def _submit_cmd(master: str, job: str, *args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "spark-submit"), "--master", master,
            "--driver-java-options", f"-Dlog4j2.configurationFile={REPO / 'conf/spark/log4j2.properties'}",
            "--conf", "spark.scheduler.barrier.maxConcurrentTasksCheck.interval=1s",
            "--conf", "spark.executor.memory=1g", str(REPO / "jobs" / job), *args]


def _env() -> dict[str, str]:
    return dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1",
                PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def test_partition_then_train_with_an_executor_killed(tmp_path):
    write_ilsvrc(tmp_path / "raw", FakeSpec(num_classes=4, train_per_class=60, val_per_class=15,
                                            image_size=(48, 40), size_jitter=0.1, seed=5, broken=True))
    with standalone_cluster(tmp_path / "cluster", workers=2) as cluster:
        proc = subprocess.run(_submit_cmd(cluster.master_url, "partition.py", "--config",
                                          str(REPO / "conf/partition/smoke.yaml"), "--input", str(tmp_path / "raw"),
                                          "--output", str(tmp_path / "ds"), "--set", "resize_short=40"),
                              capture_output=True, text=True, env=_env(), timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
        assert manifest["totals"]["written"] + manifest["totals"]["rejected"] == manifest["totals"]["inputs"]
        assert manifest["split_sizes"] == {"train": 240, "validation": 60}

        model_dir = tmp_path / "m"
        log_path = tmp_path / "train.log"
        with open(log_path, "w") as log:
            train = subprocess.Popen(
                _submit_cmd(cluster.master_url, "train_barrier.py", "--config",
                            str(REPO / "conf/train/resnet18_smoke.yaml"), "--data", str(tmp_path / "ds"),
                            "--model-dir", str(model_dir), "--epochs", "4", "--set", "checkpoint_every_steps=5",
                            "--set", "slots_wait_s=120"),
                stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
        try:
            deadline = time.monotonic() + 400
            while not (model_dir / "metrics.json").exists():  # epoch 1 done: training is well under way
                assert train.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, log_path.read_text()[-4000:]
                time.sleep(0.5)
            victims = cluster.executor_pids()
            assert victims, "no executor JVM found"
            killed_at = time.monotonic()
            os.kill(victims[0], signal.SIGKILL)  # a lost executor: its task, Python worker and TF worker die
            rc = train.wait(timeout=600)
        finally:
            if train.poll() is None:
                os.killpg(train.pid, signal.SIGKILL)
        out = log_path.read_text()
        assert rc == 0, out[-5000:]
        recovered = time.monotonic() - killed_at
    retry = re.search(r"attempt 0 failed after \d+ s: .*resumes from the checkpoint at step \d+.*", out)
    assert retry, out[-4000:]
    history = json.loads((model_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2, 3, 4], "each epoch exactly once across the attempts"
    assert history[-1]["attempt"] >= 1 and history[-1]["val_images"] == 60
    assert (model_dir / "saved_model" / "saved_model.pb").exists()
    print(f"executor killed after epoch 1; run finished {recovered:.0f} s later; {retry.group(0)[-160:]}")
