"""One actor pool for every stage that keeps a model loaded: generation and interventions.

One actor per GPU (or per `cpus_per_actor` CPUs without GPUs); the driver keeps the queue and hands the next item to
whichever actor is idle, so fast actors take more. An item whose actor dies (a SIGKILL, an OOM, a lost node) or
raises is put back at the front of the queue, preferring an actor that has not failed it yet, until it has used
`1 + max_retries` attempts; then it is reported failed. A killed actor is restarted by Ray (reloading its model) and
probed until it answers; an actor whose constructor failed is dropped; an actor that fails whatever it is given is
dropped too. A `UserError` raised in an actor is the user's to fix: it ends the pool and reaches the driver as is.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import ray

from ldm.errors import UserError
from workflows.ray.session import ensure_ray

PROBE_SECONDS = 0.5  # how often a restarting actor is asked whether it is back


def pool_size(actors: int | None, gpus_per_actor: float, cpus_per_actor: int, items: int) -> tuple[int, dict]:
    """(number of actors, Ray resource options per actor) on the connected cluster, at most one per item."""
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    if gpus > 0:
        n, options = int(gpus // gpus_per_actor), {"num_gpus": gpus_per_actor, "num_cpus": cpus_per_actor}
    else:
        n, options = int(resources.get("CPU", 1) // cpus_per_actor), {"num_gpus": 0, "num_cpus": cpus_per_actor}
    return max(1, min(actors or n, max(items, 1))), options


def error_text(err: Exception) -> str:
    """One line for a failed attempt: the remote exception's type and message, not Ray's whole traceback."""
    cause = getattr(err, "cause", None)
    if isinstance(err, ray.exceptions.RayTaskError) and cause is not None:
        return f"{type(cause).__name__}: {cause}"
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


class ActorPool:
    """Actors of `cls(*args)`, each with `options` (Ray resources) and a `pid()` method for readiness probes.

    `run(items, call, ...)` calls `call(actor, item, attempt)` -> ObjectRef for each item; see the module docstring.
    `close()` kills the actors (also on `with`)."""

    def __init__(self, cls: type, args: Sequence[Any], count: int, options: dict):
        remote = ray.remote(cls).options(max_restarts=-1, max_task_retries=0, **options)
        self.actors = [remote.remote(*args) for _ in range(count)]

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)

    def run(self, items: Sequence[Any], call: Callable[[Any, Any, int], Any], key: Callable[[Any], Hashable],
            max_retries: int, on_done: Callable[[Any, Any], None], on_failed: Callable[[Any, str], None],
            on_tick: Callable[[], None] = lambda: None, tick_seconds: float = 1.0) -> list:
        """Run `items`; returns those never attempted (every actor lost), normally []. `on_done(item, result)` and
        `on_failed(item, error)` run in the driver, one at a time.

        One loop, longer than most functions here on purpose: the queue, the attempts and each actor's state (idle,
        running, restarting, dropped) are shared by every branch, and split apart they would travel as arguments."""
        queue = deque(items)
        attempts = {key(i): 0 for i in items}
        failed_on: dict[Hashable, set[int]] = {key(i): set() for i in items}
        streak = [0] * len(self.actors)  # consecutive failures per actor
        idle = deque(range(len(self.actors)))
        recovering: dict[int, float] = {}  # actor -> time of its next readiness probe (Ray is restarting it)
        running: dict = {}  # ref -> (actor, item), or (actor, None) for a readiness probe

        def take(actor: int):
            for item in queue:  # the first item this actor has not failed yet; else the head (e.g. a single actor)
                if actor not in failed_on[key(item)]:
                    queue.remove(item)
                    return item
            return queue.popleft()

        def retry_or_fail(item, actor: int, err: Exception) -> None:
            attempts[key(item)] += 1
            failed_on[key(item)].add(actor)
            if attempts[key(item)] > max_retries:
                on_failed(item, error_text(err))
            else:
                queue.appendleft(item)

        while queue or any(item is not None for _, item in running.values()):
            while idle and queue:
                a = idle.popleft()
                item = take(a)
                running[call(self.actors[a], item, attempts[key(item)])] = (a, item)
            now = time.monotonic()
            for a, when in list(recovering.items()):
                if when <= now:  # calls to a restarting actor fail at once; probe it until it answers
                    del recovering[a]
                    running[self.actors[a].pid.remote()] = (a, None)
            if not running and not recovering:
                break  # work left but no actor alive
            ready, _ = ray.wait(list(running), num_returns=1, timeout=PROBE_SECONDS if recovering else tick_seconds)
            on_tick()
            for ref in ready:
                a, item = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.ActorDiedError as err:  # gone for good: its constructor failed, or it was killed
                    if item is not None:
                        retry_or_fail(item, a, err)
                    ray.kill(self.actors[a])
                    continue
                except ray.exceptions.RayActorError as err:  # the process died; Ray restarts it
                    if item is not None:
                        retry_or_fail(item, a, err)
                        streak[a] += 1
                    recovering[a] = time.monotonic() + PROBE_SECONDS
                    continue
                except (ray.exceptions.RayTaskError, ray.exceptions.ObjectLostError) as err:  # the call raised
                    if isinstance(getattr(err, "cause", None), UserError):
                        raise err.cause from None  # the user's to fix; no retry can help
                    retry_or_fail(item, a, err)
                    streak[a] += 1
                    if streak[a] > max_retries + 1:
                        ray.kill(self.actors[a])  # it fails whatever it is given: stop feeding it work
                    else:
                        idle.append(a)
                    continue
                if item is not None:
                    streak[a] = 0
                    on_done(item, result)
                idle.append(a)
        return list(queue)


def keyed_runner(actor_cls: type, args_for: Callable[[int | None], Sequence[Any]], settings: Any,
                 address: str | None = None) -> Callable[[list, Callable, Callable], None]:
    """`run(items, on_done, on_failed)` on a pool of `actor_cls` sized by `settings` (its `actors`, `gpus_per_actor`,
    `cpus_per_actor`, `max_retries`): each item goes to `actor.run.remote(item, attempt)`, keyed by `item.key`;
    `args_for(cpu_threads)` are the actors' constructor arguments (a fixed torch thread count on CPU actors, None on
    GPU ones). The intervention and patching stages' runners."""

    def run(items: list, on_done: Callable, on_failed: Callable) -> None:
        ensure_ray(address)
        n, options = pool_size(settings.actors, settings.gpus_per_actor, settings.cpus_per_actor, len(items))
        cpu_threads = None if options["num_gpus"] else settings.cpus_per_actor
        with ActorPool(actor_cls, args_for(cpu_threads), n, options) as pool:
            pool.run(items, lambda actor, item, attempt: actor.run.remote(item, attempt), key=lambda item: item.key,
                     max_retries=settings.max_retries, on_done=on_done, on_failed=on_failed)

    return run
