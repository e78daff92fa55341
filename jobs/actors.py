"""Ray plumbing shared by the GPU stages: start/join Ray, build an actor pool, stream batches.

generate and encode both run "one model per actor, batches in, rows out";
this module is that loop once, with a progress bar and results yielded as
they finish so the driver can commit them to Delta in chunks.
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


def actor_pool(actor_cls: type, pool: PoolConf, *args: Any) -> ActorPool:
    """`pool.num_actors` instances of the (undecorated) class, each reserving its CPUs/GPUs."""
    remote_cls = ray.remote(actor_cls).options(
        num_cpus=pool.cpus_per_actor, num_gpus=pool.gpus_per_actor
    )
    return ActorPool([remote_cls.remote(*args) for _ in range(pool.num_actors)])


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
