"""Pure launcher helpers: TF_CONFIG, host grouping, GPU mapping, address parsing, the master rule, the worker
spec and the failure record that cross process boundaries."""

import json
import os
import socket

import pytest

from imagenet_spark.config import from_dict, resolve, to_dict
from imagenet_spark.data.sharding import ShardPlan
from imagenet_spark.distribute.backends import BackendError
from imagenet_spark.distribute.cluster import (
    Endpoint,
    LaunchError,
    host_layout,
    join_host_port,
    split_host_port,
    tf_config,
    visible_gpus,
)
from imagenet_spark.distribute.context import WorkerContext
from imagenet_spark.distribute.failures import (
    BACKEND_EXIT,
    PORT_CONFLICT_EXIT,
    BarrierTaskError,
    PortConflictError,
    TaskFailure,
    exit_code,
    exit_kind,
    failure_of,
    task_failure,
)
from imagenet_spark.distribute.launch import WorkerFailedError
from imagenet_spark.distribute.ports import free_ports, port_taken, wait_for_listener
from imagenet_spark.distribute.progress import ProgressEndpoint
from imagenet_spark.spark.jobs import SparkJobError
from imagenet_spark.spark.session import executors_in_driver_jvm, local_slots, master_kind
from imagenet_spark.train.loop import RunPlan
from imagenet_spark.train.spec import WorkerSpec
from imagenet_spark.train_config import TrainConfig


def test_tf_config_lists_workers_in_rank_order():
    eps = [Endpoint(1, "10.0.0.2", 4001), Endpoint(0, "10.0.0.1", 4000), Endpoint(2, "fe80::1", 4002)]
    cfg = json.loads(tf_config(eps, 2))
    assert cfg == {"cluster": {"worker": ["10.0.0.1:4000", "10.0.0.2:4001", "[fe80::1]:4002"]},
                   "task": {"type": "worker", "index": 2}}


@pytest.mark.parametrize("eps,rank,match", [
    ([Endpoint(0, "h", 1), Endpoint(2, "h", 2)], 0, "not 0..1"),
    ([Endpoint(0, "h", 1), Endpoint(1, "h", 1)], 0, "share an address"),
    ([Endpoint(0, "h", 1)], 3, "outside"),
])
def test_tf_config_rejects_inconsistent_exchanges(eps, rank, match):
    with pytest.raises(LaunchError, match=match):
        tf_config(eps, rank)


@pytest.mark.parametrize("address,expected", [
    ("10.1.2.3:7077", ("10.1.2.3", 7077)), ("host-a", ("host-a", None)), ("[::1]:5000", ("::1", 5000)),
    ("fe80::1:2", ("fe80::1:2", None)), ("[fe80::1]", ("fe80::1", None)),
])
def test_split_host_port_handles_ipv6(address, expected):
    assert split_host_port(address) == expected
    host, port = expected
    if port is not None:
        assert split_host_port(join_host_port(host, port)) == expected


def test_host_layout_two_hosts_two_tasks_each():
    hosts = ["a", "a", "b", "b"]
    got = [host_layout(hosts, r) for r in range(4)]
    assert [(g.local_rank, g.local_size, g.cross_rank, g.cross_size) for g in got] == [
        (0, 2, 0, 2), (1, 2, 0, 2), (0, 2, 1, 2), (1, 2, 1, 2)]


def test_host_layout_uneven_and_interleaved():
    hosts = ["a", "b", "a", "a", "c"]
    got = [host_layout(hosts, r) for r in range(5)]
    assert [(g.local_rank, g.local_size) for g in got] == [(0, 3), (0, 1), (1, 3), (2, 3), (0, 1)]
    assert [(g.cross_rank, g.cross_size) for g in got] == [(0, 3), (1, 3), (0, 1), (0, 1), (2, 3)]


def test_gpu_mapping_through_inherited_visible_devices():
    assert visible_gpus(["0", "1"], None) == "0,1"
    assert visible_gpus(["1"], "4,5,6") == "5"
    assert visible_gpus([], "4,5") == ""
    with pytest.raises(LaunchError, match=r"address '3'.*CUDA_VISIBLE_DEVICES='4,5'.*indices 0..1"):
        visible_gpus(["3"], "4,5")


@pytest.mark.parametrize("master, kind, slots", [
    ("local", "local", 1),
    ("local[2]", "local", 2),
    ("local[*]", "local", os.cpu_count()),
    ("local[3,2]", "local", 3),  # local[N, maxFailures]
    ("local-cluster[2,1,1024]", "local-cluster", 2),
    ("local-cluster[3, 2, 512]", "local-cluster", 6),
    ("spark://h:7077", "cluster", None),
    ("yarn", "cluster", None),
    ("k8s://https://kube:6443", "cluster", None),
    ("databricks", "cluster", None),
    ("", "cluster", None),  # no master named (spark-submit decides): never taken for local
    ("localhost", "cluster", None),
])
def test_one_rule_says_where_a_master_runs_its_executors(master, kind, slots):
    assert master_kind(master) == kind
    assert local_slots(master) == slots
    assert executors_in_driver_jvm(master) == (kind == "local")


def test_worker_spec_round_trips_through_json_as_frozen_records():
    cfg = resolve(TrainConfig, explicit={"data": "/d", "model_dir": "/m", "workers": 2, "global_batch_size": 32})
    shard = ShardPlan(split="train", workers=2, rows_per_worker=(40, 38), row_groups_per_worker=(2, 2),
                      per_worker_batch=16, steps_per_epoch=2)
    plan = RunPlan(num_classes=4, image_size=32, eval_resize=37, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                   train=shard, validation=None, steps_per_epoch=2, total_steps=4)
    spec = WorkerSpec(config=cfg, plan=plan, attempt=1, ctx=WorkerContext(rank=1, size=2, host="10.0.0.2"),
                      progress=ProgressEndpoint(host="10.0.0.1", port=4000, token="t"), inject_port_conflict_rank=1,
                      ports=(41000, 41001))
    back = from_dict(WorkerSpec, json.loads(json.dumps(to_dict(spec))))
    assert back == spec and isinstance(back.plan.train.rows_per_worker, tuple) and back.ctx.rank == 1


def test_failure_kinds_cross_the_worker_exit_code_by_type():
    assert exit_code("port_conflict") == PORT_CONFLICT_EXIT and exit_kind(PORT_CONFLICT_EXIT) == "port_conflict"
    assert exit_code("backend") == BACKEND_EXIT and exit_kind(BACKEND_EXIT) == "backend"
    assert exit_code("error") is None and exit_kind(1) == "error" and exit_kind(13) == "error"
    assert task_failure(BackendError("backend='horovod': missing"), 0).kind == "backend"
    assert task_failure(WorkerFailedError("rank 1: exited", kind="port_conflict"), 1).kind == "port_conflict"
    assert task_failure(ValueError("Could not start gRPC server"), 0).kind == "error", "the text never decides"


def _spark_error_from_task(exc: Exception, rank: int) -> SparkJobError:
    """What the driver gets: the task's BarrierTaskError (caused by ``exc``) as the text Spark carries back
    inside its own exception, which SparkJobError wraps."""
    import traceback

    try:
        try:
            raise exc
        except Exception as inner:
            raise BarrierTaskError(task_failure(inner, rank)) from inner
    except BarrierTaskError as task_error:
        text = "".join(traceback.format_exception(task_error))
    carried = RuntimeError(f"Job aborted due to stage failure: barrier task failed.\n{text}")
    wrapped = SparkJobError("imagenet-spark train attempt 0: Spark job failed: x")
    wrapped.__cause__ = carried
    return wrapped


@pytest.mark.parametrize("exc, kind", [
    (PortConflictError("rank 1: the port exchanged for TensorFlow was taken"), "port_conflict"),
    (BackendError("rank 0: backend='horovod': cannot connect to executor h. Fix: map"), "backend"),
    (WorkerFailedError("rank 1: training worker exited with code 13\nLast output:\nboom"), "error"),
])
def test_the_driver_reads_the_kind_from_the_record_spark_carried_back(exc, kind):
    failure = failure_of(_spark_error_from_task(exc, rank=1))
    assert failure == TaskFailure(kind=kind, rank=1, message=f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    # raised in the driver's own process (one worker on the driver): the exception's kind, no Spark text
    assert failure_of(exc).kind == kind
    # Spark's own failure (a lost executor): no record, retried as an error
    assert failure_of(SparkJobError("Job aborted due to stage failure: executor lost")).kind == "error"


def test_port_taken_asks_the_socket():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]
        assert port_taken("127.0.0.1", port)
    assert not port_taken("127.0.0.1", port)


def test_ports_the_driver_chooses_are_distinct_and_free():
    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert not any(port_taken("127.0.0.1", port) for port in ports)


class _LocalTask:
    """What a barrier task's context gives in local mode, without ``allGather``: calling it would fail."""

    def resources(self) -> dict[str, object]:
        return {}


def test_driver_chosen_ports_are_used_without_an_exchange(monkeypatch):
    """local[N] with MWMS: the driver chose the ports (spark/barrier.run_attempt), so a task builds every
    endpoint from them and makes no allGather, which would hold the first task to arrive for a second."""
    from imagenet_spark.spark.barrier import _exchange_endpoints

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    endpoints, port, gpus = _exchange_endpoints(_LocalTask(), 1, "127.0.0.1", (41000, 41001))
    assert [(e.rank, e.host, e.port) for e in endpoints] == [(0, "127.0.0.1", 41000), (1, "127.0.0.1", 41001)]
    assert (port, gpus) == (41001, "")


def test_waiting_for_a_listener_returns_once_it_listens_and_gives_up_at_the_deadline():
    """A non-chief MWMS worker waits for the chief's server this way (distribute/backends.py): it must see a
    server that starts listening while it waits, and come back at its deadline when none does."""
    import threading

    port = free_ports(1)[0]
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    opened = threading.Timer(0.3, lambda: (server.bind(("127.0.0.1", port)), server.listen(1)))
    opened.start()
    try:
        assert wait_for_listener("127.0.0.1", port, timeout_s=10)
    finally:
        opened.join()
        server.close()
    assert not wait_for_listener("127.0.0.1", port, timeout_s=0.2)
