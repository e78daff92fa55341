"""Ray plumbing shared by the model stages: start or join Ray, and run a model over a
Ray Dataset on an actor pool.

generate and encode both run "one model per actor, batches in, files out": Ray Data's
streaming executor reads the input in parallel, keeps each actor fed (backpressure),
restarts an actor that died (node lost, engine crash, OOM) and retries the batch it
held. Workers write their output as Parquet parts (jobs/plumbing/tables.py) and hand back one
small row per part, so the driver only commits.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pyarrow as pa
import ray
import ray.data
import ray.exceptions

from jobs.plumbing.config import PoolConf, RayConf
from jobs.plumbing.errors import ClusterError

log = logging.getLogger(__name__)

T = TypeVar("T")


# A local Ray gets this many logical CPUs beyond the cores: Ray Data's light tasks (reads,
# shuffles, the driver-side commit loop's inputs) must be schedulable beside model actors
# that reserve every core, or the stream stalls. On a cluster, leave room in the pool sizes.
_DATA_CPUS = 2


def ensure_ray(conf: RayConf) -> None:
    """Start a local Ray (or join `conf.address`) once per process."""
    if ray.is_initialized():
        return
    local_cpus = (conf.num_cpus or os.cpu_count() or 1) + _DATA_CPUS
    ray.init(
        address=conf.address,
        num_cpus=local_cpus if conf.address is None else None,
        include_dashboard=False,
        log_to_driver=True,
        logging_level=logging.WARNING,
    )
    context = ray.data.DataContext.get_current()
    # Our stages log what they did; Ray Data's per-operator progress bars stay on for
    # interactive runs (they go to stderr) but its verbose execution plan does not.
    context.print_on_execution_start = False
    log.info("ray ready: %s", ray.cluster_resources())


def blocks(table: pa.Table, rows: int) -> ray.data.Dataset:
    """A small in-driver table (the Arrow path of a stage) as a Dataset of `rows`-row blocks.

    Split here rather than by a Ray Data repartition: that is a task, and a task needs a CPU
    that a model pool reserving every CPU of the cluster would never free.
    """
    return ray.data.from_arrow(
        [table.slice(start, rows) for start in range(0, table.num_rows, rows)] or [table]
    )


def actor_pool(pool: PoolConf, in_flight: int = 1) -> dict[str, Any]:
    """`map_batches` arguments for a fixed pool of `pool.num_actors` model actors.

    Each actor reserves its CPUs/GPUs; a dead actor is restarted and its batch retried up
    to `pool.max_restarts` times, so one dead engine does not end a long run.
    """
    return {
        "compute": ray.data.ActorPoolStrategy(
            size=pool.num_actors, max_tasks_in_flight_per_actor=in_flight
        ),
        "num_cpus": pool.cpus_per_actor,
        "num_gpus": pool.gpus_per_actor or None,
        "resources": pool.resources or None,
        "max_restarts": pool.max_restarts,
        "max_task_retries": pool.max_restarts,
    }


def outputs(
    ds: ray.data.Dataset, pool: PoolConf | None = None, wait_s: float | None = None
) -> Iterator[pa.Table]:
    """`ds`'s output blocks in the driver as each task finishes them, for the commit loops.

    No prefetch: with Ray Data's default (one batch ahead) a finished block waits in the
    iterator until the next one is ready too, so each commit would lag a whole block (a
    run of two blocks committed both at its end, and a kill lost two blocks, not one).
    With `pool` and `wait_s`, a lost node (a spot node reclaimed) is a ClusterError that
    names it and the resource no live node offers: when Ray Data gives up on an actor that
    cannot be reached, or when no live node has offered what one actor needs for `wait_s`
    seconds (instead of waiting for it forever).
    """
    if pool is None or not wait_s:
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)
        return
    hosts = _Hosts(pool)
    with _unschedulable_watch(hosts, wait_s):
        try:
            yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)
        except ray.exceptions.RayActorError:
            why = hosts.lost(wait_s)
            if why is None:
                raise  # the actor died for its own reasons (a bug, OOM): keep the traceback
            raise ClusterError(f"an actor of the pool was lost: {why}. {_RERUN}") from None


def run_task(fn: Callable[..., T], *args: Any, pool: PoolConf, wait_s: float) -> T:
    """`fn(*args)` in one Ray worker that reserves what `pool` names (its CPUs, GPUs and
    custom resources: the node with the GPU, not the driver's), and its result.

    A worker lost mid-task (its node reclaimed) is retried up to `pool.max_restarts`
    times; a task no live node can host for `wait_s` seconds is a ClusterError naming the
    resource, as for a pool (checked between waits of 2 s: no signal needed here). An
    error raised by `fn` is raised here as itself (not wrapped in Ray's RayTaskError), so
    the CLI's error handling sees the same exceptions as before.
    """
    task = ray.remote(fn).options(
        num_cpus=pool.cpus_per_actor,
        num_gpus=pool.gpus_per_actor or None,
        resources=pool.resources or None,
        max_retries=pool.max_restarts,
    )
    ref = task.remote(*args)
    waiting = _Unschedulable(_Hosts(pool), wait_s)
    try:
        while not ray.wait([ref], timeout=2.0)[0]:
            why = waiting.check()
            if why is not None:
                raise ClusterError(f"{why}. {_RERUN}")
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, Exception) and not isinstance(e.cause, ray.exceptions.RayError):
            raise e.cause from None
        raise
    except BaseException:
        ray.cancel(ref, force=True)  # not left queued (or running) behind a stopped stage
        raise


_RERUN = (
    "Start a node that offers it (or change the pool's resources) and rerun: what was "
    "committed stays, the rest is redone"
)


class _Hosts:
    """The nodes that can host one of a pool's actors, remembered from when they were alive:
    Ray lists a dead node with no resources, and the message should name the one lost."""

    def __init__(self, pool: PoolConf) -> None:
        self.needs = {"CPU": pool.cpus_per_actor, "GPU": pool.gpus_per_actor, **pool.resources}
        self.known: dict[str, str] = {}
        self.lost_nodes: list[str] = []  # known hosts Ray lists as dead, as of `missing`
        self.missing()

    def _offers(self, node: dict) -> bool:
        return all(node["Resources"].get(k, 0) >= v for k, v in self.needs.items() if v)

    def missing(self) -> str | None:
        """Why no live node can host one actor (None when one can): the resource it needs,
        and the nodes that could and are dead, with Ray's reason."""
        nodes = ray.nodes()
        hosts = {n["NodeID"]: n for n in nodes if n["Alive"] and self._offers(n)}
        self.known |= {i: f"{i[:12]} ({n['NodeManagerAddress']})" for i, n in hosts.items()}
        if hosts:
            return None
        wanted = ", ".join(f"{k}={v:g}" for k, v in self.needs.items() if v)
        dead = {n["NodeID"]: n.get("DeathReasonMessage") or "dead" for n in nodes if not n["Alive"]}
        self.lost_nodes = [f"{name}: {dead[i]}" for i, name in self.known.items() if i in dead]
        gone = f"; lost: node {', '.join(self.lost_nodes)}" if self.lost_nodes else ""
        return f"no live Ray node offers {wanted} (what one worker needs){gone}"

    def lost(self, wait_s: float) -> str | None:
        """`missing`, once Ray has marked the lost node dead (its health checks take seconds,
        at most `wait_s` here); None if a live node can host an actor after all."""
        deadline = time.monotonic() + wait_s
        while True:
            why = self.missing()
            if (why is not None and self.lost_nodes) or time.monotonic() > deadline:
                return why
            time.sleep(1.0)


class _Unschedulable:
    """How long no live node has been able to host one worker of a pool."""

    def __init__(self, hosts: _Hosts, wait_s: float) -> None:
        self.hosts, self.wait_s, self.since = hosts, wait_s, None

    def check(self) -> str | None:
        """Why the pool cannot run, once that has held for `wait_s`; None before."""
        why = self.hosts.missing()
        self.since = None if why is None else self.since or time.monotonic()
        if self.since is None or time.monotonic() - self.since < self.wait_s:
            return None
        return f"{why}; waited {self.wait_s:g} s (ray.unschedulable_wait_s)"


@contextmanager
def _unschedulable_watch(hosts: _Hosts, wait_s: float) -> Iterator[None]:
    """Raise ClusterError in this (the main) thread once the pool has been unschedulable
    for `wait_s`: a watcher thread polls the cluster's nodes and signals (SIGUSR1) the main
    thread, whose handler raises; Ray Data has no call to stop an iteration from outside."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stop, reason = threading.Event(), []
    waiting = _Unschedulable(hosts, wait_s)

    def watch() -> None:
        while not stop.wait(2.0):
            why = waiting.check()
            if why is not None:
                reason.append(why)
                os.kill(os.getpid(), signal.SIGUSR1)
                return

    def stop_here(*_: object) -> None:
        raise ClusterError(f"{reason[0]}. {_RERUN}")

    previous = signal.signal(signal.SIGUSR1, stop_here)
    watcher = threading.Thread(target=watch, name="kar-pool-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        signal.signal(signal.SIGUSR1, previous)
