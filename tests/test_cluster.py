"""Pure launcher helpers: TF_CONFIG, host grouping, GPU mapping, address parsing."""

import json

import pytest

from imagenet_spark.distribute.cluster import (Endpoint, LaunchError, host_layout, join_host_port, split_host_port,
                                               tf_config, visible_gpus)


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
