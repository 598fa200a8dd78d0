"""Several live streams at once: :class:`StreamService` and ``run_streams`` (``videocups stream``).

A service labels any number of streams into one shard directory. Other code pushes frames
(``service.push(name, frame)``); ``run_streams`` opens sources itself (camera indices, video
files, URLs OpenCV/FFmpeg opens, folders to watch), one producer thread per source, paced at
``--fps`` for recorded input.

- ``engine="ray"``: the flow/depth/feature actor pools are shared by every stream, each stream
  has its own tracker actor (``pipelines/ray_streaming.py``); rows go from the trackers to the
  shard writer pool as ObjectRefs, committed by this process.
- ``engine="local"``: one process (a laptop); each stream has its own
  :class:`StreamingPseudoLabeler` and the rows go to one :class:`ShardWriter`.

Per stream: a bounded queue with the ``stream.backpressure`` policy (``block`` or ``drop``),
latency (arrival -> first label) and processing time (:class:`StreamRunner`). A stream that
ends or fails does not disturb the others: its error is recorded in its own summary. On
Ctrl-C or at the end of the input, every stream closes its open clip early (its frames become
final) and what was labelled is committed (issue 17 #7).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from videocups_ray import __version__
from videocups_ray.config import Config
from videocups_ray.data.pseudolabels import output_fs
from videocups_ray.data.shards import ShardWriter
from videocups_ray.data.types import DataError, Frame
from videocups_ray.pipelines.streaming import StreamingPseudoLabeler, StreamRunner, open_stream

log = logging.getLogger(__name__)


class StreamService:
    """Label many live streams into ``out`` (see the module docstring). Use as a context manager
    or call :meth:`close`; ``engine="ray"`` needs a running Ray session (``ray_session``)."""

    def __init__(self, cfg: Config, centroids: np.ndarray, out: str | os.PathLike, *,
                 engine: Literal["local", "ray"] = "ray"):
        if engine not in ("local", "ray"):
            raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
        self.cfg, self.centroids, self.out, self.engine = cfg, centroids, os.fspath(out), engine
        self._lock = threading.Lock()
        self._runners: dict[str, StreamRunner] = {}
        self._labelers: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self._stats: dict[str, dict] = {}
        self._closed: dict[str, Any] | None = None  # close()'s result, once closed
        if engine == "ray":
            import ray

            from videocups_ray.pipelines.ray_streaming import SharedPools
            from videocups_ray.pipelines.writer_pool import WriterPool

            self._ray = ray
            self._pool = WriterPool(ray, cfg, self.out)
            self._pool.setup()
            self._shared = SharedPools(ray, cfg)
        else:
            self._writer = ShardWriter(self.out, cfg.shards, cfg.hash(), __version__)

    # ------------------------------------------------------------------ streams
    def open(self, name: str) -> None:
        """Start a stream called ``name`` (its own labeler, queue and statistics)."""
        if name in self._runners:
            raise ValueError(f"stream {name!r} is already open")
        if self.engine == "ray":
            from videocups_ray.pipelines.ray_streaming import RayStreamLabeler

            labeler = RayStreamLabeler(self._ray, self.cfg, self._shared, self.centroids, name, self._sink)
            on_labels = _ignore
        else:
            labeler = StreamingPseudoLabeler(self.cfg, self.centroids)
            on_labels = self._local_sink(labeler)
        sc = self.cfg.stream
        self._labelers[name] = labeler
        self._runners[name] = StreamRunner(labeler, on_labels, max_pending=sc.max_pending, policy=sc.backpressure)

    def push(self, name: str, frame: Frame) -> bool:
        """Offer the stream's next frame; False if dropped (``drop`` policy, queue full)."""
        return self._runners[name].offer(frame)

    def end(self, name: str) -> dict:
        """The stream ended: label what is queued, close its open clip, commit; its summary."""
        runner = self._runners.pop(name)
        labeler = self._labelers.pop(name)
        try:
            stats = runner.close()
            summary = {**stats.summary(), "stream_latency": labeler.latency}
        except Exception as exc:  # noqa: BLE001 - a failed stream is recorded; the others go on
            self.fail(name, exc)
            summary = {**runner.stats.summary(), "error": self.errors[name]}
        finally:
            labeler.close()
        if self.engine == "ray":
            with self._lock:
                for key in getattr(labeler, "keys", []):
                    self._pool.release(key)
                self._pool.commit()
        self._stats[name] = summary
        return summary

    def fail(self, name: str, exc: BaseException) -> None:
        lines = str(exc).strip().splitlines() or [""]
        self.errors[name] = f"{type(exc).__name__}: {lines[-1][:300]}"
        log.warning("stream %s failed: %s (the other streams go on)", name, self.errors[name])

    def close(self) -> dict[str, Any]:
        """End every open stream, commit, release the actors; returns the per-stream summaries.
        Idempotent: a second call (e.g. ``__exit__`` after an explicit close) returns the same."""
        if self._closed is not None:
            return self._closed
        for name in list(self._runners):
            self.end(name)
        if self.engine == "ray":
            counts = self._pool.finish()
            self._pool.kill()
            self._shared.kill()
            written = counts["written"]
        else:
            self._writer.close()
            written = self._writer.summary.written
        self._closed = {"out": self.out, "engine": self.engine, "written": written, "streams": dict(self._stats),
                        "failed": dict(self.errors)}
        return self._closed

    def __enter__(self) -> "StreamService":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ rows
    def _sink(self, key: str, rows_ref) -> None:
        with self._lock:
            self._pool.write(key, rows_ref, True)
            self._pool.drain(keep=self.cfg.ray.write_drain_keep * self.cfg.ray.writer.replicas)

    def _local_sink(self, labeler: StreamingPseudoLabeler):
        def on_labels(lf) -> None:
            if lf.final:
                rows = labeler.take_rows()
                with self._lock:
                    for row in rows:
                        self._writer.add(**row)
        return on_labels


def _ignore(_event) -> None:
    """Ray streams: rows already went to a writer as a ref; events only feed the statistics."""


# --------------------------------------------------------------------------- sources
def stream_name(source: str | int, taken: Iterable[str]) -> str:
    base = f"camera{source}" if isinstance(source, int) or str(source).isdigit() else \
        (os.path.basename(str(source).rstrip("/")) or "stream")
    name, k = base, 1
    while name in set(taken):
        k += 1
        name = f"{base}-{k}"
    return name


def _produce(service: StreamService, name: str, frames, fps: float | None, max_frames: int | None,
             stop: threading.Event) -> None:
    """One source's thread: frames into the service (paced at ``fps``), until end or stop."""
    t0, n = time.perf_counter(), 0
    try:
        for frame in frames:
            if stop.is_set() or (max_frames is not None and n >= max_frames):
                break
            if fps:
                time.sleep(max(0.0, t0 + n / fps - time.perf_counter()))
            service.push(name, frame)
            n += 1
            if n == 1:  # the stream is live (Ray up, actors ready): a sign for operators and tests
                log.info("stream %s: first frame in after %.1f s", name, time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - this stream fails alone (recorded), the others go on
        service.fail(name, exc)


def run_streams(cfg: Config, sources: list[str | int], out: str | os.PathLike, *,
                engine: Literal["local", "ray"] = "ray", centroids: np.ndarray | str | None = None,
                fps: float | None = None, max_frames: int | None = None,
                idle_timeout_s: float = 5.0) -> dict[str, Any]:
    """Label several live sources at once into shards under ``out``; returns the summaries."""
    from videocups_ray.labeling import load_centroids

    if not sources:
        raise DataError("stream: no source given")
    output_fs(out)  # an unusable --out is one line, before any source is opened
    opened = {}
    for src in sources:
        opened[stream_name(src, opened)] = open_stream(src, idle_timeout_s=idle_timeout_s)
    if isinstance(centroids, (str, os.PathLike)):
        centroids = load_centroids(centroids, cfg.labeling.num_clusters)
    if centroids is None:
        centroids, head = _warmup(cfg, next(iter(opened.values())))
        first = next(iter(opened))
        opened[first] = _chain(head, opened[first])
    t0 = time.perf_counter()
    if engine == "ray":
        from videocups_ray.pipelines.ray_runtime import ray_session

        with ray_session(cfg.ray):
            summary = _serve(cfg, centroids, out, engine, opened, fps, max_frames)
    else:
        summary = _serve(cfg, centroids, out, engine, opened, fps, max_frames)
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _serve(cfg, centroids, out, engine, opened, fps, max_frames) -> dict[str, Any]:
    service = StreamService(cfg, centroids, out, engine=engine)
    stop = threading.Event()
    interrupted = False
    try:
        for name in opened:
            service.open(name)
        threads = [threading.Thread(target=_produce, args=(service, name, frames, fps, max_frames, stop),
                                    name=f"stream-{name}", daemon=True) for name, frames in opened.items()]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(timeout=0.2)
        except KeyboardInterrupt:
            interrupted = True
            stop.set()
            log.warning("stream: interrupted; closing every open clip early and committing it")
            for t in threads:
                t.join()
    finally:
        summary = service.close()
    summary["interrupted"] = interrupted
    return summary


def feed_streams(service: StreamService, sources: dict[str, Iterable[Frame]], fps: float | None) -> dict[str, Any]:
    """Open one stream per source, push its frames from its own thread (paced at ``fps``), wait
    for every source to end, close the service; its summary (benchmarks, scripts)."""
    stop = threading.Event()
    for name in sources:
        service.open(name)
    threads = [threading.Thread(target=_produce, args=(service, name, frames, fps, None, stop), name=f"stream-{name}",
                                daemon=True) for name, frames in sources.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return service.close()


def _chain(head: list[Frame], rest):
    yield from head
    yield from rest


def _warmup(cfg: Config, frames) -> tuple[np.ndarray, list[Frame]]:
    """Centroids fitted on the first frames of the first stream (no centroids given)."""
    from videocups_ray.pipelines.streaming import warmup_centroids
    from videocups_ray.stages import CueStages

    head = []
    for f in frames:
        head.append(f)
        if len(head) >= 2 * cfg.labeling.kmeans_frames_per_video:
            break
    stages = CueStages.from_config(cfg)
    stages.setup()
    try:
        return warmup_centroids(cfg, head, stages), head
    finally:
        stages.teardown()
