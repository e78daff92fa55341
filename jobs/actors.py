"""Ray plumbing shared by the GPU stages: start/join Ray, build actors, stream batches.

generate and encode both run "one model per actor, batches in, rows out";
this module is that loop once, with a progress bar and results yielded as
they finish so the driver can commit them to Delta in chunks. Actors are
restarted by Ray when they die (node lost, engine crash) and the batch they
held is retried, up to `max_restarts` times, so one dead engine does not end
a long run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ray
from ray.util import ActorPool
from tqdm import tqdm

from jobs.config import PoolConf, RayConf

log = logging.getLogger(__name__)


def ensure_ray(conf: RayConf) -> None:
    """Start a local Ray (or join `conf.address`) once per process."""
    if ray.is_initialized():
        return
    ray.init(
        address=conf.address,
        num_cpus=conf.num_cpus if conf.address is None else None,
        include_dashboard=False,
        log_to_driver=True,
        logging_level=logging.WARNING,
    )
    log.info("ray ready: %s", ray.cluster_resources())


def start_actors(actor_cls: type, pool: PoolConf, *args: Any) -> list[Any]:
    """`pool.num_actors` instances of the (undecorated) class, each reserving its CPUs/GPUs."""
    remote_cls = ray.remote(actor_cls).options(
        num_cpus=pool.cpus_per_actor,
        num_gpus=pool.gpus_per_actor,
        max_restarts=pool.max_restarts,
        max_task_retries=pool.max_restarts,
    )
    return [remote_cls.remote(*args) for _ in range(pool.num_actors)]


def actor_pool(actor_cls: type, pool: PoolConf, *args: Any) -> ActorPool:
    """The actors of `start_actors` as a Ray ActorPool (one batch per idle actor)."""
    return ActorPool(start_actors(actor_cls, pool, *args))


def map_unordered(
    pool: ActorPool,
    method: Callable[[Any, Any], Any],
    batches: Iterable[Any],
    *,
    total: int,
    desc: str,
    unit: str = "batch",
) -> Iterator[Any]:
    """Run `method(actor, batch)` for each batch across the pool, yielding results as they land."""
    with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True) as bar:
        for result in pool.map_unordered(method, batches):
            bar.update(1)
            yield result


def pull_unordered(
    actors: list[Any],
    method: Callable[[Any, Any], ray.ObjectRef],
    batches: Iterable[Any],
    *,
    in_flight: int,
    total: int,
    desc: str,
    unit: str = "batch",
) -> Iterator[Any]:
    """Like map_unordered, but each actor keeps `in_flight` batches queued.

    An actor gets its next batch the moment one of its own finishes, so a slow
    batch holds back only its actor, and with in_flight >= 2 an engine starts
    its next batch while the driver is still handling the last one's results.
    """
    queue = iter(batches)
    owner: dict[ray.ObjectRef, Any] = {}

    def feed(actor: Any) -> None:
        for batch in queue:
            owner[method(actor, batch)] = actor
            return

    for actor in actors:
        for _ in range(in_flight):
            feed(actor)
    with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True) as bar:
        while owner:
            [ref], _ = ray.wait(list(owner), num_returns=1)
            actor = owner.pop(ref)
            result = ray.get(ref)
            feed(actor)
            bar.update(1)
            yield result
