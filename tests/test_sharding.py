"""Shard planning from row-group sizes: equal steps for every worker whatever the row groups."""

import pytest

from imagenet_spark.data.schema import DatasetError
from imagenet_spark.data.sharding import plan_shards


def test_uneven_row_groups_give_equal_steps_from_the_smallest_shard():
    rows = [8, 8, 3, 8, 8, 8, 5, 8, 1]  # short last groups of files, as the partition job writes them
    plan = plan_shards(rows, workers=2, per_worker_batch=4, split="train")
    assert plan.rows_per_worker == (8 + 3 + 8 + 5 + 1, 8 + 8 + 8 + 8)
    assert plan.row_groups_per_worker == (5, 4)
    assert plan.steps_per_epoch == 25 // 4 == 6
    assert plan.total_rows == sum(rows)


def test_eval_plan_covers_the_largest_shard():
    plan = plan_shards([8, 8, 3], workers=2, per_worker_batch=4, split="validation", drop_remainder=False)
    assert plan.rows_per_worker == (11, 8) and plan.steps_per_epoch == 3


def test_too_few_row_groups_names_the_numbers_and_the_fix():
    with pytest.raises(DatasetError, match=r"validation: 3 row groups for 4 workers.*at most 3 workers.*"
                                           r"rows_per_row_group=1"):
        plan_shards([8, 8, 3], workers=4, per_worker_batch=2, split="validation")


def test_batch_larger_than_a_shard_names_the_fix():
    with pytest.raises(DatasetError, match=r"smallest worker shard has 3 images.*at most 6"):
        plan_shards([3, 8], workers=2, per_worker_batch=4, split="train")
