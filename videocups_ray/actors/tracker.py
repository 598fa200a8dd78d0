"""TrackerActor: the stateful end of a stream, hosting a :class:`LabelStream` of the scheduler.

One actor serves one stream (a video, a chunk of a long one, or a live stream) at a time.
Batches arrive with their sequence number; Ray gives no ordering guarantee across actors (the
cue results of batch 5 may be ready before those of batch 4), so the actor keeps a reorder
buffer and feeds :class:`~videocups_ray.stages.scheduler.LabelStream` strictly in order: the
same object the local engine drives in a loop, hence the same rows. Rows of the owned frames
come back to the driver as an ObjectRef it hands to a writer (never fetched); the chunk's
stitching maps and statistics come back when the stream is done.

A restarted actor has lost its tracker state; it answers :class:`StreamStateLost` and the
driver redoes the chunk (the writer drops frames it already holds, so nothing is written
twice).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from videocups_ray.actors.base import FailureInjector, FailurePlan, StreamStateLost
from videocups_ray.config import Config
from videocups_ray.cues import DepthResult, FeatureResult, FlowResult
from videocups_ray.stages import ChunkSpec, LabelStage, LabelStream, PairBatch

__all__ = ["ChunkSpec", "TrackerActor"]


@dataclass
class _Stream:
    labels: LabelStream
    final_seq: int | None  # None: a live stream, ended by :meth:`TrackerActor.finish`
    next_seq: int = 0
    buffer: dict[int, tuple] = field(default_factory=dict)  # seq -> args, waiting for its turn


class TrackerActor:
    """Ordered, stateful labeling of one stream at a time (see the module docstring)."""

    kind = "tracker"

    def __init__(self, cfg: Config, centroids: np.ndarray, failures: tuple[FailurePlan, ...] = (),
                 emit: str = "clip"):
        self._cfg, self._emit = cfg, emit  # emit="online": live streams also get provisional labels
        self._centroids = np.asarray(centroids, np.float32)
        self._label: LabelStage | None = None
        self._stream: _Stream | None = None
        self._fail = FailureInjector(self.kind, failures)

    def setup(self) -> bool:
        self._label = LabelStage(self._cfg, self._centroids, emit=self._emit)
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
                feats: FeatureResult, chunk: ChunkSpec, final_seq: int | None) -> tuple[list[dict], dict]:
        """Take batch ``batch.seq`` of the stream; returns (finished rows, info).

        ``final_seq`` is the stream's last batch number: once it has been processed the open
        clip is closed and ``info["done"]`` is True with the chunk's :class:`ChunkResult`
        (``info["result"]``). ``None``: an open-ended live stream (see :meth:`finish`).
        """
        self._fail.tick()
        if self._label is None:
            self.setup()
        t = time.perf_counter()
        st = self._stream_for(batch.stream, chunk, final_seq)
        if batch.seq < st.next_seq or batch.seq in st.buffer:
            raise StreamStateLost(f"tracker: stream {batch.stream} got batch {batch.seq} twice")
        st.buffer[batch.seq] = (batch, flow, depth, feats)
        provisional: list[int] = []
        while st.next_seq in st.buffer:
            labelled = st.labels.process(*st.buffer.pop(st.next_seq))
            provisional += [int(lf.frame_index) for lf in labelled if not lf.final]
            st.next_seq += 1
            if final_seq is not None and st.next_seq > final_seq:
                st.labels.finish()
        if final_seq is not None and batch.seq == final_seq and not st.labels.done:
            # Calls of one caller reach an actor in submission order, so when the last batch is
            # here every earlier one has been too: a gap means an earlier incarnation took it.
            missing = sorted(set(range(final_seq + 1)) - set(st.buffer) - set(range(st.next_seq)))
            self._stream = None
            raise StreamStateLost(f"tracker: stream {batch.stream} is missing batches {missing[:8]} "
                                  "(actor restarted?); the chunk must be redone")
        return self._reply(st, t, provisional)

    def finish(self, stream: str, seq: int) -> tuple[list[dict], dict]:
        """End a live stream after its batch ``seq - 1``: close the open clip early, return the rows."""
        t = time.perf_counter()
        st = self._stream
        if st is None or st.labels.name != stream or st.next_seq != seq:
            raise StreamStateLost(f"tracker: cannot finish stream {stream} at batch {seq} "
                                  f"(holding {None if st is None else (st.labels.name, st.next_seq)})")
        st.labels.finish()
        return self._reply(st, t)

    def drop(self, stream: str) -> None:
        if self._stream is not None and self._stream.labels.name == stream:
            self._stream = None

    # ------------------------------------------------------------------ helpers
    def _reply(self, st: _Stream, t: float, provisional: list[int] = ()) -> tuple[list[dict], dict]:
        rows = st.labels.take_rows()
        info = {"stream": st.labels.name, "rows": len(rows), "busy_s": time.perf_counter() - t,
                "frames": [r["frame_index"] for r in rows], "provisional": list(provisional),
                "done": st.labels.done}
        if st.labels.done:
            info["result"] = st.labels.result()
            self._stream = None
        return rows, info

    def _stream_for(self, name: str, chunk: ChunkSpec, final_seq: int | None) -> _Stream:
        """The stream's state; a new stream name resets the tracker (one stream at a time)."""
        st = self._stream
        if st is not None and st.labels.name == name:
            return st
        self._stream = _Stream(LabelStream(self._label, chunk, name), final_seq)
        return self._stream
