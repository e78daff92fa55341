"""jobs/plumbing/ray_data.py on a real local Ray: commit loops see each block when it is done;
a pool (or a task) no live node can host is named with its resource and the lost node; a
task's own error reaches the driver as itself."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pytest

from jobs.plumbing import ray_data
from jobs.plumbing.config import GenerateConf, PoolConf
from jobs.plumbing.errors import ClusterError, InputError
from jobs.plumbing.ray_data import actor_pool, blocks, outputs, run_task

# How long the second call waits for the driver's sign that the first block arrived; on
# failure the test costs this, on success only as long as the driver takes to get it.
WAIT_S = 60.0


@pytest.mark.usefixtures("ray_local")
def test_outputs_hands_each_block_to_the_driver_when_its_task_ends(tmp_path: Path) -> None:
    # Defined here, so Ray pickles it by value (workers cannot import test modules).
    class SecondWaitsForFirst:
        """The first call returns at once (Ray Data may run either block first); the
        second waits until the driver has marked the first block received."""

        def __init__(self, folder: str) -> None:
            self.claim, self.received = Path(folder, "claim"), Path(folder, "received")

        def __call__(self, rows: pa.Table) -> pa.Table:
            try:
                os.close(os.open(self.claim, os.O_CREAT | os.O_EXCL))
                first = True
            except FileExistsError:
                first = False
            deadline = time.monotonic() + WAIT_S
            while not first and not self.received.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return pa.table({"first": [first], "saw_first": [self.received.exists()]})

    ds = blocks(pa.table({"block": [0, 0, 1, 1]}), 2).map_batches(
        SecondWaitsForFirst,
        fn_constructor_args=(str(tmp_path),),
        batch_size=None,
        batch_format="pyarrow",
        **actor_pool(GenerateConf(num_actors=1, cpus_per_actor=1, max_restarts=0), in_flight=2),
    )
    seen = []
    for batch in outputs(ds):
        seen += batch.to_pylist()
        (tmp_path / "received").touch()
    # The second call ended only after the driver held the first block: a commit follows
    # each block (with Ray Data's default prefetch it timed out: both arrived at the end).
    assert seen == [{"first": True, "saw_first": False}, {"first": False, "saw_first": True}]


def test_a_pool_no_live_node_can_host_names_the_resource_and_the_lost_node(monkeypatch):
    nodes = [
        {"NodeID": "a" * 40, "NodeManagerAddress": "10.0.0.1", "Alive": True,
         "Resources": {"CPU": 8.0}},
        {"NodeID": "b" * 40, "NodeManagerAddress": "10.0.0.2", "Alive": True,
         "Resources": {"CPU": 4.0, "gpu_pool": 1.0}},
    ]  # fmt: skip
    monkeypatch.setattr(ray_data.ray, "nodes", lambda: nodes)
    hosts = ray_data._Hosts(PoolConf(resources={"gpu_pool": 1}))
    assert hosts.missing() is None
    # Lost, as Ray lists a dead node: no resources left, its reason given.
    nodes[1] |= {"Alive": False, "Resources": {}, "DeathReasonMessage": "missed heartbeats"}
    why = hosts.missing()
    assert why is not None and "offers CPU=1, gpu_pool=1" in why
    assert "lost: node bbbbbbbbbbbb (10.0.0.2): missed heartbeats" in why


@pytest.mark.usefixtures("ray_local")
def test_a_task_returns_its_value_and_raises_its_own_error() -> None:
    def answer_or_refuse(value: int) -> int:  # local: Ray pickles it by value
        if value < 0:
            raise InputError(f"value {value} is negative; pass a count")
        return value * 2

    pool = PoolConf(cpus_per_actor=1)
    assert run_task(answer_or_refuse, 21, pool=pool, wait_s=60) == 42
    # The CLI sees the task's InputError itself (exit 2 with its message), not Ray's wrapper.
    with pytest.raises(InputError, match=r"^value -1 is negative; pass a count$") as raised:
        run_task(answer_or_refuse, -1, pool=pool, wait_s=60)
    assert type(raised.value) is InputError


@pytest.mark.usefixtures("ray_local")
def test_a_task_no_live_node_can_host_stops_with_the_resource_named() -> None:
    pool = PoolConf(cpus_per_actor=1, resources={"kar_test_gpu_node": 1})
    with pytest.raises(ClusterError, match=r"offers CPU=1, kar_test_gpu_node=1 .*waited 1 s"):
        run_task(lambda: 1, pool=pool, wait_s=1)
