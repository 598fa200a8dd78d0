"""Live streams on the actor graph: the Ray labeler of one stream (``engine="ray"`` streaming).

Every live stream shares the flow, depth and feature actor pools of the service
(``pipelines/stream_service.py``) and gets its own :class:`TrackerActor` (``emit="online"``:
provisional labels when t+2 arrives, final ones when a clip closes). A stream is cut into
batches of one pair by the shared :class:`~videocups_ray.stages.scheduler.PairBatcher`, its
depth runs as one :class:`DepthStream` on a depth actor, and its tracker hosts one
:class:`LabelStream` with an open-ended chunk: the scheduler objects of the corpus engines,
so final rows are bit-identical to theirs on the same frames.

:class:`RayStreamLabeler` has the ``push(frame)`` / ``end()`` shape of
:class:`~videocups_ray.pipelines.streaming.StreamingPseudoLabeler`, so the same
:class:`~videocups_ray.pipelines.streaming.StreamRunner` (bounded queue, ``block``/``drop``,
latency and processing time) drives either. It returns :class:`LabelEvent` s (frame ids, not
label maps: the maps stay in the object store and go straight to a shard writer as a rows ref).
A stream whose tracker dies fails alone: its runner re-raises the error to its own producer;
the other streams and the shared pools carry on.

Pipelined: ``push`` submits a frame's cue calls and its tracker call and returns without
waiting for them; up to ``stream.max_frames_in_flight`` frames of a stream are in flight at
once, so the cue latency of consecutive frames overlaps (and flow, depth and features of one
frame run at the same time where the backends do not read each other's results,
``CueWiring``). The tracker actor takes a stream's batches in submission order, so replies
come back in order: ``push`` and ``poll`` hand over every reply that is ready, ``push``
waits for the oldest only when the stream has too many in flight, and ``end`` waits for all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from videocups_ray.actors.tracker import TrackerActor
from videocups_ray.actors.base import remote_class
from videocups_ray.config import Config
from videocups_ray.data.types import Frame
from videocups_ray.pipelines.ray_pseudolabel import Pools, add_cue_pools, submit_cues
from videocups_ray.stages import ChunkSpec, PairBatch, PairBatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelEvent:
    """Frame ``frame_index`` of ``video_id`` got a label (``final``: its clip closed)."""

    video_id: str
    frame_index: int
    final: bool


RowsSink = Callable[[str, object], None]  # (stream key, ObjectRef of rows) -> hand to a writer


class SharedPools:
    """The cue actor pools every live stream shares, and a depth actor per stream (round robin)."""

    def __init__(self, ray, cfg: Config):
        self.ray, self.cfg = ray, cfg
        self.pools = Pools([], [], [], [], [], None)
        add_cue_pools(ray, self.pools, cfg)
        self._lock = threading.Lock()
        self._n = 0

    def depth_for_new_stream(self):
        with self._lock:
            self._n += 1
            return self.pools.depth[self._n % len(self.pools.depth)]

    def kill(self) -> None:
        for a in self.pools.flow + self.pools.depth + self.pools.features:
            self.ray.kill(a, no_restart=True)


class RayStreamLabeler:
    """``push(frame) -> [LabelEvent]`` for one live stream on the shared pools (module doc)."""

    def __init__(self, ray, cfg: Config, shared: SharedPools, centroids, name: str, sink: RowsSink):
        self.ray, self.cfg, self.shared, self.name, self.sink = ray, cfg, shared, name, sink
        cls = remote_class(TrackerActor, cfg.ray, "tracker", restartable=False, max_restarts=0)
        self.tracker = cls.remote(cfg, centroids, (), "online")
        ray.get(self.tracker.setup.remote())
        self.latency = "exact"  # provisional labels come from the tracker when t+2 arrives
        self._batcher: PairBatcher | None = None
        self._chunk: ChunkSpec | None = None
        self._depth = None
        self.keys: list[str] = []  # one per segment (a new video id or a gap starts one)
        self.max_in_flight, self.poll_s = cfg.stream.max_frames_in_flight, cfg.stream.poll_s
        self._inflight: deque = deque()  # (segment key, video id, rows ref, info ref, submit time), in order
        self.processing_s: list[float] = []  # submit -> tracker reply, per batch (one frame each)

    @property
    def pending(self) -> int:
        """Batches submitted and not yet answered (the stream runner polls while there are any)."""
        return len(self._inflight)

    def push(self, frame: Frame) -> list[LabelEvent]:
        out: list[LabelEvent] = []
        if self._batcher is not None and frame.video_id != self._chunk.video_id:
            out += self.end()
        if self._batcher is None:
            stream = f"{self.name}:{frame.video_id}@{frame.frame_index}"
            self._batcher = PairBatcher(stream, 1)
            self._chunk = ChunkSpec(str(frame.video_id), int(frame.frame_index), None)
            self._depth = self.shared.depth_for_new_stream()
            self.keys.append(stream)
        for batch in self._batcher.push(frame):
            self._submit(batch)
        return out + self._collect(self.max_in_flight - 1)

    def _submit(self, batch: PairBatch) -> None:
        pools = self.shared.pools
        parts = [self.ray.put(p) for p in pools.wiring.plan.split(batch)]
        flow, depth, feats = submit_cues(pools, parts, self._depth, None)
        rows_ref, info_ref = self.tracker.process.options(num_returns=2).remote(
            parts[0], flow, depth, feats, self._chunk, None)
        self._inflight.append((self._batcher.stream, self._chunk.video_id, rows_ref, info_ref, time.perf_counter()))

    def _collect(self, keep: int, timeout: float = 0.0) -> list[LabelEvent]:
        """Replies in submission order: each one that is ready (the first waited for up to
        ``timeout`` s), and the oldest ones waited for until at most ``keep`` are in flight."""
        out: list[LabelEvent] = []
        while self._inflight:
            key, vid, rows_ref, info_ref, t0 = self._inflight[0]
            if len(self._inflight) <= keep:
                ready, _ = self.ray.wait([info_ref], timeout=timeout)
                if not ready:
                    break
            timeout = 0.0
            info = self.ray.get(info_ref)  # a dead tracker raises here: this stream fails alone
            self._inflight.popleft()
            self.processing_s.append(time.perf_counter() - t0)
            out += self._events(key, vid, rows_ref, info)
        return out

    def poll(self, timeout: float) -> list[LabelEvent]:
        """The replies that are ready, waiting up to ``timeout`` s for the oldest."""
        return self._collect(len(self._inflight), timeout)

    def take_processing(self) -> list[float]:
        out, self.processing_s = self.processing_s, []
        return out

    def _events(self, key: str, vid: str, rows_ref, info: dict) -> list[LabelEvent]:
        if info["rows"]:
            self.sink(key, rows_ref)
        return ([LabelEvent(vid, i, False) for i in info["provisional"]]
                + [LabelEvent(vid, i, True) for i in info["frames"]])

    def end(self) -> list[LabelEvent]:
        """The stream ended or was interrupted: last frame, open clip closed early, rows sent."""
        if self._batcher is None:
            return []
        out: list[LabelEvent] = []
        if self._batcher.seq == 0:
            log.warning("stream %s ended after a single frame; it has no optical flow and gets no labels", self.name)
        else:
            for batch in self._batcher.end(with_last=True):
                self._submit(batch)
            out += self._collect(0)
            rows_ref, info_ref = self.tracker.finish.options(num_returns=2).remote(self._batcher.stream,
                                                                                  self._batcher.seq)
            out += self._events(self._batcher.stream, self._chunk.video_id, rows_ref, self.ray.get(info_ref))
        self._depth.drop.remote(self._batcher.stream)
        self._batcher = self._chunk = self._depth = None
        return out

    def close(self) -> None:
        self.ray.kill(self.tracker, no_restart=True)
