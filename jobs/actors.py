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
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ray
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


def pull_unordered(
    actors: list[Any],
    method: Callable[[Any, Any], ray.ObjectRef],
    batches: Iterable[Any],
    *,
    in_flight: int,
    total: int,
    desc: str,
    unit: str = "batch",
) -> Iterator[tuple[int, Any]]:
    """(index of the batch, `method(actor, batch)`'s result) for each batch, as they land.

    Each actor keeps `in_flight` batches queued and gets its next one the moment
    one of its own finishes, so a slow batch holds back only its actor, and with
    in_flight >= 2 an engine starts its next batch while the driver is still
    handling the last one's results.
    """
    queue = enumerate(batches)
    owner: dict[ray.ObjectRef, tuple[Any, int]] = {}

    def feed(actor: Any) -> None:
        for i, batch in queue:
            owner[method(actor, batch)] = (actor, i)
            return

    for actor in actors:
        for _ in range(in_flight):
            feed(actor)
    with tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True) as bar:
        while owner:
            [ref], _ = ray.wait(list(owner), num_returns=1)
            actor, i = owner.pop(ref)
            result = ray.get(ref)
            feed(actor)
            bar.update(1)
            yield i, result


class ActorStage:
    """One stage's actor pool: started and loaded on enter, killed on exit (error or not).

    Killing on exit frees the CPUs/GPUs at once for the next stage in the same
    process, and `start_seconds` (actors created and their models loaded) is
    what the stage reports as engine start.
    """

    def __init__(self, ray_conf: RayConf, actor_cls: type, pool: PoolConf, *args: Any) -> None:
        self.ray_conf, self.actor_cls, self.pool, self.args = ray_conf, actor_cls, pool, args
        self.actors: list[Any] = []
        self.start_seconds = 0.0

    def __enter__(self) -> ActorStage:
        ensure_ray(self.ray_conf)
        started = time.monotonic()
        self.actors = start_actors(self.actor_cls, self.pool, *self.args)
        try:
            # An actor is ready once its __init__ (the model load) has returned.
            ray.get([actor.__ray_ready__.remote() for actor in self.actors])
        except BaseException:
            self._kill()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def __exit__(self, *exc: object) -> None:
        self._kill()

    def _kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []

    def map_ranges(
        self,
        call: Callable[[Any, list[Any]], ray.ObjectRef],
        items: list[Any],
        ranges: list[tuple[int, int]],
        *,
        in_flight: int,
        desc: str,
    ) -> Iterator[tuple[int, int, Any]]:
        """(start, stop, `call(actor, items[start:stop])`'s result) per range, as they land."""
        batches = (items[a:b] for a, b in ranges)
        for i, result in pull_unordered(
            self.actors, call, batches, in_flight=in_flight, total=len(ranges), desc=desc
        ):
            yield *ranges[i], result
