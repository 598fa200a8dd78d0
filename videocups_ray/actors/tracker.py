"""TrackerActor: the stateful end of a stream, wrapping :class:`LabelStage` (``VideoTracker``).

One actor serves one live stream (a video, or a chunk of a long one) at a time. Batches
arrive with their sequence number; Ray gives no ordering guarantee across actors (the cue
results of batch 5 may be ready before those of batch 4), so the actor keeps a reorder buffer
and feeds the tracker strictly in frame order. Per frame it assembles :class:`FrameCues` with
:func:`assemble_cues` exactly as :class:`VideoCueRunner` does (the backward flow of t is the
pair (t-1, t) of the previous batch), pushes them through the tracker (region growing on the
kernels' Numba CPU / CuPy GPU dispatch, semantic assignment, tracking, vote, clip alignment)
and returns the finished frames as shard rows.

Chunks: a stream may cover frames ``[start, stop)`` of a video plus ``tail`` extra frames
(the overlap with the next chunk). Only ``[start, stop)`` are emitted as rows; the instance
maps of the first ``overlap`` owned frames (``head``) and of the tail frames are returned so
the driver can stitch track IDs across the boundary by IoU.

A restarted actor has lost its tracker state; it answers :class:`StreamStateLost` and the
driver redoes the chunk (the writer drops frames it already holds, so nothing is written
twice).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from videocups_ray.actors.base import FailureInjector, FailurePlan, StreamStateLost
from videocups_ray.actors.cues import PairBatch
from videocups_ray.config import Config
from videocups_ray.cues import DepthResult, FeatureResult, FlowResult
from videocups_ray.data.types import DataError
from videocups_ray.labeling import LabelledFrame, ThingStuffStats
from videocups_ray.pipelines.stages import LabelStage, assemble_cues, labelled_to_row


@dataclass
class ChunkSpec:
    """Frames ``[start, stop)`` of ``video_id`` are owned (written); ``overlap`` head frames
    and the frames in ``[stop, stop + tail)`` feed ID stitching with the neighbours."""

    video_id: str
    start: int
    stop: int
    tail: int = 0
    overlap: int = 0


@dataclass
class _Stream:
    name: str
    chunk: ChunkSpec
    next_seq: int = 0
    buffer: dict[int, tuple] = field(default_factory=dict)  # seq -> args, waiting for its turn
    flow_prev: FlowResult | None = None
    images: dict[int, np.ndarray] = field(default_factory=dict)  # frame_index -> image until labelled
    head: dict[int, np.ndarray] = field(default_factory=dict)
    tail: dict[int, np.ndarray] = field(default_factory=dict)
    stats: ThingStuffStats | None = None
    ids: set[int] = field(default_factory=set)  # track IDs in the owned rows
    rows: int = 0
    done: bool = False


class TrackerActor:
    """Ordered, stateful labeling of one stream at a time (see the module docstring)."""

    kind = "tracker"

    def __init__(self, cfg: Config, centroids: np.ndarray, failures: tuple[FailurePlan, ...] = ()):
        self._cfg = cfg
        self._centroids = np.asarray(centroids, np.float32)
        self._label: LabelStage | None = None
        self._stream: _Stream | None = None
        self._fail = FailureInjector(self.kind, failures)

    def setup(self) -> bool:
        self._label = LabelStage(self._cfg, self._centroids)
        self._label.setup()
        return True

    def ready(self) -> bool:
        return self._label is not None

    def teardown(self) -> None:
        if self._label is not None:
            self._label.teardown()
        self._label, self._stream = None, None

    # ------------------------------------------------------------------ public step
    def process(self, batch: PairBatch, flow: FlowResult | None, depth: DepthResult,
                feats: FeatureResult, chunk: ChunkSpec, final_seq: int) -> tuple[list[dict], dict]:
        """Take batch ``batch.seq`` of the stream; returns (finished rows, info).

        ``final_seq`` is the stream's last batch number: once it has been processed the
        tracker is flushed and ``info["done"]`` is True with the chunk's statistics.
        """
        self._fail.tick()
        if self._label is None:
            self.setup()
        t = time.perf_counter()
        st = self._stream_for(batch, chunk)
        if batch.seq < st.next_seq or batch.seq in st.buffer:
            raise StreamStateLost(f"tracker: stream {batch.stream} got batch {batch.seq} twice")
        st.buffer[batch.seq] = (batch, flow, depth, feats)
        rows: list[dict] = []
        while st.next_seq in st.buffer:
            b, f, d, fe = st.buffer.pop(st.next_seq)
            rows += self._step(st, b, f, d, fe)
            st.next_seq += 1
            if st.next_seq > final_seq:
                rows += self._finish(st)
        if batch.seq == final_seq and not st.done:
            # Calls of one caller reach an actor in submission order, so when the last batch is
            # here every earlier one has been too: a gap means an earlier incarnation took it.
            missing = sorted(set(range(final_seq + 1)) - set(st.buffer) - set(range(st.next_seq)))
            self._stream = None
            raise StreamStateLost(f"tracker: stream {batch.stream} is missing batches {missing[:8]} "
                                  "(actor restarted?); the chunk must be redone")
        info = {"stream": st.name, "rows": len(rows), "busy_s": time.perf_counter() - t,
                "frames": [r["frame_index"] for r in rows], "done": st.done}
        if st.done:
            info.update(stats=st.stats.state_dict(), head=st.head, tail=st.tail, ids=sorted(st.ids))
            self._stream = None
        return rows, info

    def drop(self, stream: str) -> None:
        if self._stream is not None and self._stream.name == stream:
            self._stream = None

    # ------------------------------------------------------------------ helpers
    def _stream_for(self, batch: PairBatch, chunk: ChunkSpec) -> _Stream:
        """The stream's state; a new stream name resets the tracker (one stream at a time)."""
        st = self._stream
        if st is not None and st.name == batch.stream:
            return st
        self._label.reset()
        self._stream = _Stream(batch.stream, chunk, stats=ThingStuffStats(self._cfg.labeling.num_clusters))
        return self._stream

    def _step(self, st: _Stream, batch: PairBatch, flow: FlowResult | None, depth: DepthResult,
              feats: FeatureResult) -> list[dict]:
        out: list[dict] = []
        for i, frame in enumerate(batch.frames_t):
            flow_next = None if batch.last else flow.item(i)
            cues = assemble_cues(frame, depth.depth[i], depth.motion_prob[i], feats.high[i], feats.low[i],
                                 st.flow_prev, flow_next)
            st.flow_prev = flow_next
            st.images[int(frame.frame_index)] = frame.image
            out += self._emit(st, self._label.push(cues))
        return out

    def _finish(self, st: _Stream) -> list[dict]:
        rows = self._emit(st, self._label.flush())
        if st.images:
            raise DataError(f"stream {st.name}: frames {sorted(st.images)} were never labelled")
        st.done = True
        return rows

    def _emit(self, st: _Stream, labelled: list[LabelledFrame]) -> list[dict]:
        c = st.chunk
        out = []
        for lf in labelled:
            idx = int(lf.frame_index)
            image = st.images.pop(idx)
            if idx >= c.stop:
                st.tail[idx] = lf.instance.copy()
                continue
            if idx < c.start:
                raise DataError(f"stream {st.name}: frame {idx} is before the chunk start {c.start}")
            if idx < c.start + c.overlap:
                st.head[idx] = lf.instance.copy()
            row = labelled_to_row(lf, image)
            st.ids.update(int(i) for i in np.unique(row["instance"]) if i != 0)
            st.stats.add(row["semantic"], row["instance"], row["ignore"], where=f"{lf.video_id} frame {idx}")
            out.append(row)
        st.rows += len(out)
        return out
