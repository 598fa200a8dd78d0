"""Cue actor pools that grow while work backs up and shrink when idle (``ray.<kind>.max_replicas``).

Ray Data's autoscaling actor pools (``ActorPoolStrategy(min_size, max_size)``) add an actor when
the tasks queued per actor pass a threshold and remove actors that sit idle; Ray's cluster
autoscaler then adds or removes the nodes those actors need. The corpus engine schedules its own
actors (``pipelines/ray_pseudolabel.py``), so it does the pool half itself, here, with the same
signal: the driver knows how many calls of each pool are in flight.

- **Grow**: when a pool's calls in flight per actor exceed ``ray.autoscale_backlog``, one more
  actor is requested (one pending per pool at a time, like an upscaling speed of one). It joins
  the round-robin once its ``setup`` has finished, so no call waits on an actor that is still
  loading, and a request the cluster cannot place yet (no free GPU: the cluster autoscaler is
  adding a node) simply stays pending.
- **Shrink**: when fewer calls than actors have been in flight for ``ray.autoscale_idle_s``, the
  newest actor leaves the round-robin and exits after the calls already queued on it
  (``__ray_terminate__``, Ray's graceful actor exit), never below ``replicas``.

Only the stateless pools scale (flow, features): a depth actor holds per-stream state, so its
pool size is the number of streams it serves and stays as configured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from videocups_ray.config import RayConfig

log = logging.getLogger(__name__)

SCALABLE = ("flow", "features")


@dataclass
class _PoolState:
    pending: Any = None  # (actor, setup ref) while a new actor loads
    idle_since: float | None = None
    peak: int = 0
    events: list = field(default_factory=list)  # (seconds since start, "request" | "grow" | "shrink", size after)


class PoolAutoscaler:
    """Resizes ``pools.<kind>`` lists in place; call :meth:`step` from the scheduler loop.

    ``new_actor(kind)`` creates one actor (not yet set up); ``in_flight(kind)`` counts the pool's
    calls not yet finished. ``clock`` is injectable so the policy is testable without Ray.
    """

    def __init__(self, ray, pools, cfg: RayConfig, new_actor: Callable[[str], Any],
                 in_flight: Callable[[str], int], *, clock: Callable[[], float] = time.monotonic):
        self.ray, self.pools, self.cfg = ray, pools, cfg
        self.new_actor, self.in_flight, self.clock = new_actor, in_flight, clock
        self.kinds = [k for k in SCALABLE if getattr(cfg, k).max_replicas > getattr(cfg, k).replicas]
        self.t0 = self._last_step = clock()
        self.state = {k: _PoolState(peak=len(getattr(pools, k))) for k in self.kinds}

    def due(self, interval_s: float = 0.5) -> bool:
        """Whether ``interval_s`` has passed since the last :meth:`step` (the loop asks often)."""
        return self.clock() - self._last_step >= interval_s

    @staticmethod
    def wanted(cfg: RayConfig) -> bool:
        """Whether any pool of ``cfg`` may grow (``max_replicas`` above ``replicas``)."""
        return any(getattr(cfg, k).max_replicas > getattr(cfg, k).replicas for k in SCALABLE)

    def step(self) -> None:
        now = self._last_step = self.clock()
        for kind in self.kinds:
            self._admit(kind, now)
            pool, st, res = getattr(self.pools, kind), self.state[kind], getattr(self.cfg, kind)
            busy = self.in_flight(kind)
            if busy > self.cfg.autoscale_backlog * len(pool) and st.pending is None \
                    and len(pool) < res.max_replicas:
                actor = self.new_actor(kind)
                st.pending = (actor, actor.setup.remote())
                st.events.append((round(now - self.t0, 2), "request", len(pool) + 1))
                log.info("%s pool: %d calls in flight on %d actors; adding one", kind, busy, len(pool))
            if busy < len(pool) and len(pool) > res.replicas:
                st.idle_since = now if st.idle_since is None else st.idle_since
                if now - st.idle_since >= self.cfg.autoscale_idle_s:
                    actor = pool.pop()
                    actor.__ray_terminate__.remote()  # after the calls already queued on it
                    st.idle_since = None
                    st.events.append((round(now - self.t0, 2), "shrink", len(pool)))
                    log.info("%s pool: idle for %.1f s; down to %d actors", kind, self.cfg.autoscale_idle_s, len(pool))
            else:
                st.idle_since = None

    def _admit(self, kind: str, now: float) -> None:
        st = self.state[kind]
        if st.pending is None:
            return
        actor, ref = st.pending
        ready, _ = self.ray.wait([ref], timeout=0)
        if not ready:
            return
        self.ray.get(ref)  # a failed setup is an error, as for the first actors
        pool = getattr(self.pools, kind)
        pool.append(actor)
        st.pending, st.peak = None, max(st.peak, len(pool))
        st.events.append((round(now - self.t0, 2), "grow", len(pool)))

    def close(self) -> None:
        """Kill actors still loading (their pool never used them)."""
        for st in self.state.values():
            if st.pending is not None:
                self.ray.kill(st.pending[0], no_restart=True)
                st.pending = None

    def summary(self) -> dict[str, dict]:
        """Per scaled pool: peak size and its events (seconds since the start, what, pool size after);
        a "request" and the "grow" after it are the time to scale (actor placed, started, set up)."""
        return {k: {"peak": st.peak, "final": len(getattr(self.pools, k)), "events": st.events}
                for k, st in self.state.items()}
