"""The parts the training loop is wired from (train/epochs.py, checkpoints.py, reporting.py, faults.py), each
without Spark: the epoch record's wire form, where calls of the step function end, the checkpoint keeper's
restore / keep-best / rank-local saves, and metrics.json + progress. Real TensorFlow on a tiny model; the
end-to-end runs that wire them are in tests/test_train.py.
"""

from __future__ import annotations

import json
import math

import pytest

from imagenet_spark.config import from_dict, resolve
from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.train.epochs import EpochRecord, _call_length
from imagenet_spark.train.faults import FaultInjector
from imagenet_spark.train_config import TrainConfig

_TRAINED = dict(epoch=2, global_step=14, loss=1.25, top1=0.5, top5=1.0, images_per_s=321.5, learning_rate=0.05,
                train_time_s=1.5, attempt=1)


def _cfg(tmp_path, **kw) -> TrainConfig:
    """Flat setting names, as the command line and the other training tests give them."""
    return resolve(TrainConfig, explicit=dict(data=str(tmp_path / "data"), model_dir=str(tmp_path / "m"),
                                              model="resnet_tiny", workers=1, backend="off", global_batch_size=4,
                                              **kw))


def test_epoch_record_has_metrics_json_keys_in_their_order():
    """The record is written as before the split: same keys, same order, evaluation keys only when evaluated."""
    plain = EpochRecord(**_TRAINED, wall_time_s=2.0)
    assert json.dumps(plain.to_dict()) == json.dumps({**_TRAINED, "wall_time_s": 2.0})
    evaluated = EpochRecord(**_TRAINED, val_loss=0.5, val_top1=0.75, val_top5=1.0, val_images=60,
                            eval_weights="ema", wall_time_s=2.5)
    assert list(evaluated.to_dict()) == [*_TRAINED, "val_loss", "val_top1", "val_top5", "val_images",
                                         "eval_weights", "wall_time_s"]
    assert from_dict(EpochRecord, evaluated.to_dict()).val_top1 == 0.75
    assert evaluated.metric("val_top1") == 0.75 and plain.metric("val_top1") is None


def test_calls_end_at_checkpoint_check_and_fault_steps(tmp_path):
    """A call of the step function never runs past a periodic checkpoint, a divergence check or fail_at_step
    (first attempt only), so each happens at exactly its step on every rank."""
    cfg = _cfg(tmp_path, checkpoint_every_steps=5, divergence_check_steps=3, fail_at_step=7)
    armed = FaultInjector.from_config(cfg, WorkerContext())
    relaunch = FaultInjector.from_config(cfg, WorkerContext(attempt=1))
    ends, step = [], 0
    while step < 12:
        step += _call_length(cfg, armed, 50, step)
        ends.append(step)
    assert ends == [3, 5, 6, 7, 9, 10, 12]
    assert _call_length(cfg, relaunch, 50, 6) == 3, "a relaunch does not stop at fail_at_step again"
    FaultInjector(fail_at_step=7, fail_rank=1, rank=0, attempt=0).after_steps(7)  # rank 0 is not the one: returns


def _keeper(tmp_path, ctx: WorkerContext):
    tf = pytest.importorskip("tensorflow")
    from imagenet_spark.distribute.backends import make_backend
    from imagenet_spark.train.checkpoints import CheckpointKeeper, RunCounters

    cfg = _cfg(tmp_path, export="best", best_metric="val_loss")
    backend = make_backend("off", ctx)
    with backend.scope():
        model = tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
        optimizer = tf.keras.optimizers.SGD(0.1)
        counters = RunCounters.create()
    keeper = CheckpointKeeper(cfg, ctx, backend, model=model, optimizer=optimizer, counters=counters, average=None,
                              steps_per_epoch=10, learning_rate=lambda step: 0.1)
    return keeper, model


def test_checkpoint_keeper_restores_position_and_best_epoch(tmp_path):
    keeper, model = _keeper(tmp_path, WorkerContext())
    assert keeper.restore() == (0, 0) and keeper.best() is None
    keeper.keep_if_best(1, 0.9)
    keeper.keep_if_best(2, math.nan)  # not measured: ignored
    keeper.keep_if_best(3, 1.2)  # val_loss: smaller is better, so epoch 1 stays
    best_weights = [w.copy() for w in model.get_weights()]
    keeper.save(3, 4)
    assert sorted(p.name for p in (tmp_path / "m" / "checkpoints").glob("*.index")) == ["ckpt-34.index"]
    again, model_again = _keeper(tmp_path, WorkerContext())
    assert again.restore() == (3, 4)
    assert again.best() == {"epoch": 1, "metric": "val_loss", "value": pytest.approx(0.9)}
    assert again.best_weights_path() is not None and again.best_weights_path().endswith("ckpt-1")
    assert all((a == b).all() for a, b in zip(model_again.get_weights(), best_weights))


def test_checkpoint_keeper_off_the_chief_writes_nothing_to_the_model_dir(tmp_path):
    keeper, _ = _keeper(tmp_path, WorkerContext(rank=1, size=2))
    keeper.save(1, 0)
    keeper.keep_if_best(1, 0.5)
    assert not (tmp_path / "m" / "checkpoints").exists() or not any((tmp_path / "m" / "checkpoints").rglob("*"))


def test_epoch_log_and_progress_carry_the_record(tmp_path):
    pytest.importorskip("tensorflow")
    from imagenet_spark.train.reporting import EpochLog, ProgressReporter, read_metrics

    messages: list[dict] = []
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "metrics.json").write_text(json.dumps([{"epoch": 1}, {"epoch": 2}]))
    log = EpochLog(str(tmp_path / "m"), WorkerContext(), start_epoch=1, epochs_total=3, report=messages.append)
    record = EpochRecord(**_TRAINED, wall_time_s=2.0)
    log.write(record)
    assert read_metrics(str(tmp_path / "m")) == [{"epoch": 1}, record.to_dict()], "resumed: epoch 2 rewritten"
    assert messages == [{"event": "epoch", **record.to_dict(), "epochs": 3}] and log.epochs_written == 2
    assert list((tmp_path / "m" / "tensorboard").iterdir()), "TensorBoard events written"
    progress = ProgressReporter(messages.append, WorkerContext(), every_s=3600, global_batch_size=4, total_steps=20,
                                epochs_total=3)
    for step in (1, 2):
        progress.after_steps(epoch=1, step=step, epoch_steps=10, global_step=step, loss=2.0, steps_run=step,
                             epoch_started=0.0)
    assert len(messages) == 2, "the first call reports at once, the next waits progress_every_s"
    assert list(messages[1]) == ["event", "epoch", "epochs", "step", "steps", "global_step", "total_steps", "loss",
                                 "images_per_s", "eta_s"]
    silent = EpochLog(str(tmp_path / "m"), WorkerContext(rank=1, size=2), start_epoch=1, epochs_total=3,
                      report=messages.append)
    silent.write(record)
    assert silent.epochs_written is None and len(messages) == 2, "only the chief writes and reports"


@pytest.mark.parametrize("precision", ["float32", "mixed_float16"])
def test_the_optimizer_has_its_slots_before_the_first_step_is_traced(tmp_path, precision):
    """The slots are made with the model, not while the first step is traced: under MWMS each is broadcast as it
    is created, and made inside the trace (a merge call per update) they cost 1.5-2 s of a 2-worker launch
    (issue #13). The first update then finds every slot and creates none."""
    tf = pytest.importorskip("tensorflow")
    from types import SimpleNamespace

    from imagenet_spark.distribute.backends import make_backend
    from imagenet_spark.train.loop import _build
    from imagenet_spark.train.schedules import make_schedule

    cfg = _cfg(tmp_path, precision=precision)
    schedule = make_schedule(peak_lr=0.1, steps_per_epoch=2, epochs=1, warmup_epochs=0, kind=cfg.recipe.schedule,
                             warmup_max_fraction=0.5)
    model, optimizer, _, _ = _build(cfg, SimpleNamespace(num_classes=3, image_size=32),
                                    make_backend("off", WorkerContext()), schedule)
    made = [v.name for v in optimizer.variables]
    assert len(made) > len(model.trainable_variables), made  # the step count, and a momentum slot per variable
    optimizer.apply_gradients(zip([tf.zeros_like(v) for v in model.trainable_variables], model.trainable_variables))
    assert [v.name for v in optimizer.variables] == made


_LAST_COLLECTIVE = """
import sys, time
from imagenet_spark.distribute.backends import make_backend
from imagenet_spark.distribute.context import WorkerContext
rank, chief_delay = int(sys.argv[1]), float(sys.argv[2])
backend = make_backend("mwms", WorkerContext(rank=rank, size=2))
time.sleep(chief_delay if rank == 0 else 0.0)  # the chief exporting
started = time.monotonic()
backend.end_together()
print(f"rank {rank} waited {time.monotonic() - started:.2f}")
"""


@pytest.mark.slow
def test_the_last_collective_holds_every_worker_until_the_chief_has_exported():
    """Two real MWMS workers: the non-chief's ``end_together`` returns only once the chief, 4 s late (its
    export), reaches it. Without it the non-chief's process ended first, and the chief's coordination service
    reported the finished worker as crashed ("tasks are unhealthy (stopped sending heartbeats)")."""
    import os
    import subprocess
    import sys

    from imagenet_spark.distribute.cluster import Endpoint, tf_config
    from imagenet_spark.distribute.ports import free_ports

    ports = free_ports(2)
    endpoints = [Endpoint(rank=r, host="127.0.0.1", port=p) for r, p in enumerate(ports)]
    procs = [subprocess.Popen([sys.executable, "-c", _LAST_COLLECTIVE, str(rank), "4"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, TF_CONFIG=tf_config(endpoints, rank), TF_CPP_MIN_LOG_LEVEL="2"))
             for rank in range(2)]
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _, err in outs]
    waited = {int(line.split()[1]): float(line.split()[3]) for out, _ in outs for line in out.splitlines()
              if line.startswith("rank ")}
    assert waited[1] >= 3.0 and waited[0] < 3.0, waited
