"""Progress of the Ray corpus engine: frames/s, ETA and per-stage utilisation (tqdm), kept apart
from the scheduler (``pipelines/ray_pseudolabel.py``) so the driver's bookkeeping reads on its own."""

from __future__ import annotations

import logging
import time

from videocups_ray.actors.base import StreamStateLost
from videocups_ray.data.types import DataError
from videocups_ray.pipelines.ray_runtime import get_each

log = logging.getLogger(__name__)


class Progress:
    """Frames/s, ETA (tqdm) and per-stage utilisation (busy seconds / wall / replicas)."""

    def __init__(self, total: int, replicas: dict[str, int], enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc="pseudolabel[ray]", unit="frame", disable=not enabled)
        self.replicas, self.busy = replicas, {k: 0.0 for k in replicas}
        self._refs: dict[str, list] = {k: [] for k in replicas}
        self.t0, self._last = time.perf_counter(), 0.0
        self.failed_calls = 0

    def add_busy_ref(self, kind: str, ref) -> None:
        self._refs[kind].append(ref)

    def add_busy(self, kind: str, seconds: float) -> None:
        self.busy[kind] += seconds

    def in_flight(self, kind: str) -> int:
        """Calls of ``kind`` not seen finished at the last :meth:`collect` (the pool's backlog)."""
        return len(self._refs[kind])

    def update(self, ray, frames: int) -> None:
        self.bar.update(frames)
        now = time.perf_counter()
        if now - self._last < 1.0:
            return
        self._last = now
        self.collect(ray, timeout=0)
        self.bar.set_postfix_str(" ".join(f"{k}={u:.0%}" for k, u in self.utilisation().items()))

    def collect(self, ray, timeout: float | None = 0) -> None:
        """Add the busy seconds of finished calls. A failed call has none: its error is handled
        where its result is used (chunk redone or video skipped), so here it is only counted;
        anything but a task or actor failure is a bug and is logged with its traceback."""
        from ray.exceptions import RayActorError, RayTaskError

        for kind, refs in self._refs.items():
            if not refs:
                continue
            ready, rest = ray.wait(refs, num_returns=len(refs), timeout=timeout, fetch_local=True)
            for got in get_each(ray, ready):
                if isinstance(got, (RayTaskError, RayActorError, DataError, StreamStateLost)):
                    self.failed_calls += 1
                elif isinstance(got, BaseException):  # not expected: shown, not swallowed; progress is advisory
                    log.error("progress: busy time of a %s call could not be read", kind, exc_info=got)
                else:
                    self.busy[kind] += float(got)
            self._refs[kind] = rest

    def utilisation(self) -> dict[str, float]:
        wall = max(time.perf_counter() - self.t0, 1e-9)
        return {k: self.busy[k] / wall / max(self.replicas[k], 1) for k in self.busy}

    def close(self) -> None:
        self.bar.close()
