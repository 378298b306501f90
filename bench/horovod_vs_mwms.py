"""Horovod vs MultiWorkerMirroredStrategy: training step time, and Horovod's allreduce vs a plain TCP copy.

    .venv/bin/python bench/horovod_vs_mwms.py [--model resnet_tiny] [--image-size 32] [--batch 64] [--steps 40]
                                              [--rounds 2] [--sizes-mb 1,4,16,64] [--skip-step] [--skip-allreduce]
                                              [--quick: 20 steps, 1 round, 1 and 16 MB]

* step: two worker processes on this machine, started exactly as the barrier launcher starts them (TF_CONFIG for
  MWMS; task-0 rendezvous + HOROVOD_* variables for Horovod; no Spark, so launch cost is not in the figure),
  run the jobs' own step (``steps.make_step_functions``) on the same in-memory data, model, seed and global
  batch. Figure: ms per step of each, and the ratio Horovod / MWMS. Backends alternate; median over rounds.
* allreduce: two Horovod workers over Gloo on loopback reduce float32 tensors of gradient-like sizes; beside
  them, in the same run, two processes copy the same bytes over a loopback TCP socket. Figure: bytes/s of
  each (allreduce: tensor bytes / time per allreduce) and the ratio. For two ranks a ring allreduce sends
  every byte of the tensor once per rank (half in reduce-scatter, half in allgather), so the TCP copy of the
  same bytes is the floor it is compared with.

Prints figures (this is a bench); the workers log nothing unless something fails.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from figures import Figure, emit, parse_sized

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


# --------------------------------------------------------------------------------------------------
# Launch two local workers the way the barrier launcher does


def _launch(role: str, backend: str, args: argparse.Namespace, out_dir: Path) -> list[dict[str, Any]]:
    """Start ranks 0 and 1 of ``python bench/horovod_vs_mwms.py --role ROLE``; return their JSON results."""
    from imagenet_spark.distribute.cluster import Endpoint, tf_config
    from imagenet_spark.distribute.horovod_env import choose_iface, horovod_env, host_alloc_plan, start_rendezvous
    from imagenet_spark.distribute.ports import free_port

    hosts = [HOST, HOST]
    server = None
    envs: list[dict[str, str]] = []
    if backend == "horovod":
        server = start_rendezvous(host=HOST, plan=host_alloc_plan(hosts))
        envs = [horovod_env(hosts=hosts, rank=r, rendezvous_host=HOST, rendezvous_port=server.port,
                            iface=choose_iface(HOST), gpu=False, gloo_timeout_s=300) for r in range(2)]
    else:
        endpoints = [Endpoint(r, HOST, free_port(HOST)) for r in range(2)]
        envs = [{"TF_CONFIG": tf_config(endpoints, r)} for r in range(2)]
    procs = []
    try:
        for rank in range(2):
            result = out_dir / f"{role}-{backend}-{rank}.json"
            cmd = [sys.executable, __file__, "--role", role, "--backend", backend, "--rank", str(rank),
                   "--result", str(result), "--model", args.model, "--image-size", str(args.image_size),
                   "--batch", str(args.batch), "--steps", str(args.steps), "--sizes-mb", args.sizes_mb]
            env = {**os.environ, **envs[rank], "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
            procs.append((subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
                          result))
        outputs = [p.communicate(timeout=900)[0] for p, _ in procs]
    finally:
        for p, _ in procs:
            if p.poll() is None:
                p.kill()
        if server is not None:
            server.stop()
    for (p, _), text in zip(procs, outputs):
        if p.returncode != 0:
            raise RuntimeError(f"{role}/{backend} worker exited {p.returncode}:\n{text[-4000:]}")
    return [json.loads(r.read_text()) for _, r in procs]


# --------------------------------------------------------------------------------------------------
# Worker roles (run in the child processes)


def _step_worker(args: argparse.Namespace) -> dict[str, Any]:
    from imagenet_spark.distribute.backends import make_backend
    from imagenet_spark.distribute.context import WorkerContext
    from imagenet_spark.train_config import Recipe, TrainConfig

    ctx = WorkerContext(rank=args.rank, size=2, host=HOST)
    backend = make_backend(args.backend, ctx)  # before any other TensorFlow op
    import numpy as np
    import tensorflow as tf

    from imagenet_spark.models import build
    from imagenet_spark.train.steps import make_step_functions

    classes = 10
    cfg = TrainConfig(data="-", model_dir="-", model=args.model, workers=2, backend=args.backend,
                      global_batch_size=args.batch, recipe=Recipe(weight_decay=1e-4, label_smoothing=0.1))
    per_worker = args.batch // 2
    tf.keras.utils.set_random_seed(1)
    rng = np.random.default_rng(args.rank)
    x = rng.normal(size=(per_worker * 8, args.image_size, args.image_size, 3)).astype("float32")
    y = tf.one_hot(rng.integers(0, classes, size=per_worker * 8), classes).numpy()
    with backend.scope():
        model = build(args.model, num_classes=classes, image_size=args.image_size)
        opt = tf.keras.optimizers.SGD(0.01, momentum=0.9)
        sums = {n: tf.keras.metrics.Sum(name=n) for n in ("loss", "top1", "top5", "count", "val_loss", "val_top1",
                                                           "val_top5", "val_count")}
    train_steps, _ = make_step_functions(cfg, backend, model, opt, sums, num_classes=classes,
                                         mean=(0.0,) * 3, std=(1.0,) * 3)  # normal data: identity normalisation
    ds = backend.distribute(lambda: tf.data.Dataset.from_tensor_slices((x, y)).batch(per_worker, drop_remainder=True)
                            .repeat().prefetch(4))
    it = iter(ds)
    train_steps(it, tf.constant(1))
    backend.after_first_step(model, opt)
    train_steps(it, tf.constant(5))  # warm up
    backend.sum_across_workers(float(sums["loss"].result()))  # both ranks start the clock together
    start = time.perf_counter()
    train_steps(it, tf.constant(args.steps))
    backend.sum_across_workers(float(sums["loss"].result()))
    elapsed = time.perf_counter() - start
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    return {"ms_per_step": elapsed / args.steps * 1000, "params": params}


def _allreduce_worker(args: argparse.Namespace) -> dict[str, Any]:
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    out = {}
    for mb in [float(s) for s in args.sizes_mb.split(",")]:
        n = int(mb * 2**20) // 4
        t = tf.random.uniform([n], seed=hvd.rank())
        reps = max(3, int(64 / mb))
        for _ in range(2):
            hvd.allreduce(t, op=hvd.Sum).numpy()  # warm up (buffers, fusion)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            hvd.allreduce(t, op=hvd.Sum).numpy()
            times.append(time.perf_counter() - start)
        out[str(mb)] = statistics.median(times)
    return {"seconds": out}


def _tcp_receiver(port_q: Any, sizes: list[int], reps: int) -> None:
    with socket.create_server((HOST, 0)) as srv:
        port_q.put(srv.getsockname()[1])
        conn, _ = srv.accept()
        with conn:
            buf = bytearray(max(sizes))
            view = memoryview(buf)
            for size in sizes:
                for _ in range(reps + 2):
                    got = 0
                    while got < size:
                        got += conn.recv_into(view[got:size])
                    conn.sendall(b"k")


def tcp_copy(sizes: list[int], reps: int) -> dict[int, float]:
    """Median seconds to copy ``size`` bytes to another process over loopback TCP (send, then a 1-byte ack)."""
    mp = multiprocessing.get_context("spawn")
    port_q = mp.Queue()
    receiver = mp.Process(target=_tcp_receiver, args=(port_q, sizes, reps))
    receiver.start()
    out = {}
    with socket.create_connection((HOST, port_q.get(timeout=60))) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for size in sizes:
            payload = os.urandom(size)
            times = []
            for i in range(reps + 2):
                start = time.perf_counter()
                conn.sendall(payload)
                conn.recv(1)
                if i >= 2:
                    times.append(time.perf_counter() - start)
            out[size] = statistics.median(times)
    receiver.join(30)
    return out


# --------------------------------------------------------------------------------------------------
# Driver


def bench_step(args: argparse.Namespace, work: Path) -> None:
    runs: dict[str, list[float]] = {"horovod": [], "mwms": []}
    params = 0
    for _ in range(args.rounds):
        for backend in ("horovod", "mwms"):
            results = _launch("step", backend, args, work)
            runs[backend].append(max(r["ms_per_step"] for r in results))  # the slower rank sets the pace
            params = results[0]["params"]
    h, m = statistics.median(runs["horovod"]), statistics.median(runs["mwms"])
    print(f"step  {args.model} ({params / 1e6:.2f} M params, {params * 4 / 2**20:.1f} MB of gradients) "
          f"{args.image_size}px, global batch {args.batch} on 2 workers, 2 cores: "
          f"horovod {h:.1f} ms/step, mwms {m:.1f} ms/step, ratio horovod/mwms {h / m:.2f} "
          f"(rounds: horovod {[round(v, 1) for v in runs['horovod']]}, mwms {[round(v, 1) for v in runs['mwms']]})")
    emit(Figure(script="horovod_vs_mwms", figure="Horovod step", value=h, baseline_name="MWMS step", baseline=m,
                unit="ms/step", better="lower", shape=f"{args.model} {args.image_size} px, global batch {args.batch}, "
                f"2 workers, {args.steps} steps, median of {args.rounds} round(s)"))


def bench_allreduce(args: argparse.Namespace, work: Path) -> None:
    sizes_mb = [float(s) for s in args.sizes_mb.split(",")]
    results = _launch("allreduce", "horovod", args, work)
    hvd_s = {mb: max(r["seconds"][str(mb)] for r in results) for mb in sizes_mb}
    tcp_s = tcp_copy([int(mb * 2**20) // 4 * 4 for mb in sizes_mb], reps=5)
    print("allreduce  2 Horovod/Gloo workers over loopback vs a TCP copy of the same bytes between 2 processes")
    for mb in sizes_mb:
        size = int(mb * 2**20) // 4 * 4
        a, t = size / hvd_s[mb], size / tcp_s[size]
        print(f"  {mb:6g} MB: allreduce {a / 1e9:6.2f} GB/s ({hvd_s[mb] * 1000:7.1f} ms), tcp copy {t / 1e9:6.2f} GB/s "
              f"({tcp_s[size] * 1000:7.1f} ms), allreduce/tcp {a / t:.2f}")
        emit(Figure(script="horovod_vs_mwms", figure=f"Horovod/Gloo allreduce {mb:g} MB", value=a / 1e9,
                    baseline_name="TCP copy of the same bytes", baseline=t / 1e9, unit="GB/s",
                    shape="float32 tensor, 2 processes over loopback"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet_tiny")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--sizes-mb", default="1,4,16,64")
    parser.add_argument("--skip-step", action="store_true")
    parser.add_argument("--skip-allreduce", action="store_true")
    parser.add_argument("--role", choices=("driver", "step", "allreduce"), default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="horovod", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parse_sized(parser, quick={"steps": 20, "rounds": 1, "sizes_mb": "1,16"})
    if args.role != "driver":
        import warnings

        warnings.filterwarnings("ignore")
        result = _step_worker(args) if args.role == "step" else _allreduce_worker(args)
        Path(args.result).write_text(json.dumps(result))
        return 0
    sys.path.insert(0, str(REPO))
    work = Path(tempfile.mkdtemp(prefix="bench-hvd-"))
    if not args.skip_step:
        bench_step(args, work)
    if not args.skip_allreduce:
        bench_allreduce(args, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
