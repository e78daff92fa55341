"""The Spark session: shuffle partitions follow the cluster unless the config sets them."""

from __future__ import annotations

import pytest

from jobs.plumbing.spark import SHUFFLE_PARTITIONS, shuffle_partitions


def test_shuffle_partitions_are_three_per_task_slot_and_at_least_eight():
    assert [shuffle_partitions(n) for n in (1, 2, 3, 400)] == [8, 8, 9, 1200]


@pytest.mark.engines
def test_the_session_sizes_its_shuffles_by_its_task_slots(spark):
    slots = spark.sparkContext.defaultParallelism  # local[2]: 2
    assert spark.conf.get(SHUFFLE_PARTITIONS) == str(shuffle_partitions(slots))
