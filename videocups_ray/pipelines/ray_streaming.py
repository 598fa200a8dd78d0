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
"""

from __future__ import annotations

import logging
import threading
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
            out += self._submit(batch)
        return out

    def _submit(self, batch: PairBatch) -> list[LabelEvent]:
        ref = self.ray.put(batch)
        flow, depth, feats = submit_cues(self.shared.pools, ref, self._depth, None)
        rows_ref, info_ref = self.tracker.process.options(num_returns=2).remote(
            ref, flow, depth, feats, self._chunk, None)
        return self._events(rows_ref, self.ray.get(info_ref))

    def _events(self, rows_ref, info: dict) -> list[LabelEvent]:
        vid = self._chunk.video_id
        if info["rows"]:
            self.sink(self._batcher.stream, rows_ref)
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
                out += self._submit(batch)
            rows_ref, info_ref = self.tracker.finish.options(num_returns=2).remote(self._batcher.stream,
                                                                                  self._batcher.seq)
            out += self._events(rows_ref, self.ray.get(info_ref))
        self._depth.drop.remote(self._batcher.stream)
        self._batcher = self._chunk = self._depth = None
        return out

    def close(self) -> None:
        self.ray.kill(self.tracker, no_restart=True)
