"""GPU scheduling through real Spark: a fake discovery script, local-cluster executors, barrier tasks.

local mode has no GPU scheduling, so this runs a local-cluster (separate executor JVMs) in a subprocess,
with each executor inheriting CUDA_VISIBLE_DEVICES=5,7 as YARN or Kubernetes would set it. Every barrier
task must get one address from Spark and map it through the inherited list to a distinct physical GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pyspark.sql import SparkSession
    from imagenet_spark.distribute.cluster import gpu_addresses, visible_gpus

    discovery = sys.argv[1]
    spark = (SparkSession.builder.master("local-cluster[2,1,1024]")
             .config("spark.worker.resource.gpu.amount", "2")
             .config("spark.worker.resource.gpu.discoveryScript", discovery)
             .config("spark.executor.resource.gpu.amount", "1")
             .config("spark.executor.resource.gpu.discoveryScript", discovery)
             .config("spark.task.resource.gpu.amount", "1")
             .config("spark.executorEnv.CUDA_VISIBLE_DEVICES", "5,7")
             .config("spark.scheduler.barrier.maxConcurrentTasksCheck.interval", "1s")
             .config("spark.ui.enabled", "false").getOrCreate())

    def task(_):
        from pyspark import BarrierTaskContext
        ctx = BarrierTaskContext.get()
        assigned = gpu_addresses(ctx.resources())
        mapped = visible_gpus(assigned, os.environ.get("CUDA_VISIBLE_DEVICES"))
        ctx.barrier()
        yield json.dumps({"rank": ctx.partitionId(), "assigned": assigned, "mapped": mapped,
                          "inherited": os.environ.get("CUDA_VISIBLE_DEVICES")})

    out = spark.sparkContext.parallelize(range(2), 2).barrier().mapPartitions(task).collect()
    print("RESULT " + json.dumps([json.loads(o) for o in out]))
    spark.stop()
""")


@pytest.mark.slow
@pytest.mark.cluster
def test_barrier_tasks_get_distinct_gpus_mapped_through_inherited_devices(tmp_path):
    discovery = tmp_path / "gpus.sh"
    discovery.write_text('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0", "1"]}\'\n')
    discovery.chmod(0o755)
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_LOCAL_IP="127.0.0.1")
    proc = subprocess.run([sys.executable, str(script), str(discovery)], capture_output=True, text=True, env=env,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    results = sorted(json.loads(line[len("RESULT "):]), key=lambda r: r["rank"])
    assert all(r["inherited"] == "5,7" and len(r["assigned"]) == 1 for r in results)
    for r in results:
        assert r["mapped"] == ["5", "7"][int(r["assigned"][0])]
