"""The one per-video scheduler: frame pairs -> cues -> labeling -> shard rows.

Every engine cuts a stream into the same :class:`PairBatch` es (:class:`PairBatcher`) and runs
each batch through the same per-stream objects:

- :class:`DepthStream`: the stateful depth of one stream (batches in order, the previous
  batch's last frame carried for a video's final frame, which has no pair ahead);
- :class:`LabelStream`: the tracker end of one stream: frame t's cues assembled with the
  backward flow of the previous pair, pushed through the tracker, final frames turned into
  rows; with a :class:`ChunkSpec` only the owned frames become rows, and the instance maps of
  the overlap (head/tail) are kept for stitching track IDs across chunks.

:func:`run_chunk` is the whole loop in one process (the local engine). The Ray corpus engine
places flow/depth/features in actor pools and a :class:`LabelStream` in a tracker actor; the
Ray streaming engine does the same with batches of one pair. Because the cut into batches and
the per-stream state machines are these objects, the three engines' shards are bit-identical
by construction (``tests/test_engines_identical.py``). No Ray here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from videocups_ray.cues import DepthResult, FeatureResult, FlowResult
from videocups_ray.data.types import DataError, Frame
from videocups_ray.labeling import FrameCues, LabelledFrame, ThingStuffStats
from videocups_ray.stages.base import PairBatch, StreamStateLost
from videocups_ray.stages.cues import CueStages, DepthStage, assemble_cues
from videocups_ray.stages.label import LabelStage, labelled_to_row


@dataclass(frozen=True)
class ChunkSpec:
    """Frames ``[start, stop)`` of ``video_id`` are owned (written); ``overlap`` head frames
    and the frames in ``[stop, stop + tail)`` feed ID stitching with the neighbours.
    ``stop=None``: an open-ended live stream (every frame is owned)."""

    video_id: str
    start: int
    stop: int | None
    tail: int = 0
    overlap: int = 0

    def read_range(self, num_frames: int) -> tuple[int, int, bool]:
        """``(start, stop, with_last)`` of the frames to decode for this chunk: the owned and
        tail frames, plus one lookahead frame for the last pair's flow unless the chunk ends
        the video (then the final frame gets a last-frame batch)."""
        stop = num_frames if self.stop is None else self.stop
        end = stop + self.tail
        with_last = end >= num_frames
        return self.start, (num_frames if with_last else end + 1), with_last

    def num_batches(self, num_frames: int, batch_pairs: int) -> int:
        start, stop, with_last = self.read_range(num_frames)
        return count_batches(stop - start - 1, batch_pairs, with_last)


# --------------------------------------------------------------------------- batching
class PairBatcher:
    """Consecutive frames of one stream -> batches of ``batch_pairs`` pairs sharing a frame.

    Push-based so a live stream and a file cut batches the same way; :func:`pair_batches` is the
    iterator form. Frame indices must be consecutive (the tracker needs every frame).
    """

    def __init__(self, stream: str, batch_pairs: int):
        if batch_pairs < 1:
            raise ValueError(f"batch_pairs must be >= 1, got {batch_pairs}")
        self.stream, self.batch_pairs = stream, batch_pairs
        self.pending: list[Frame] = []
        self.seq = 0

    def push(self, frame: Frame) -> list[PairBatch]:
        if self.pending:
            prev = self.pending[-1]
            if frame.video_id != prev.video_id or frame.frame_index != prev.frame_index + 1:
                raise DataError(f"{frame.video_id} frame {frame.frame_index}: stream {self.stream} needs "
                                f"consecutive frames of one video (previous: {prev.video_id} frame "
                                f"{prev.frame_index}); start a new stream after a gap")
        self.pending.append(frame)
        if len(self.pending) > self.batch_pairs:
            return [self._cut()]
        return []

    def end(self, with_last: bool = True) -> list[PairBatch]:
        """The stream ends: the remaining pairs, then (``with_last``) the last-frame batch;
        without it the final frame is only the t+1 of the last pair (a chunk's lookahead)."""
        out = [self._cut()] if len(self.pending) > 1 else []
        if with_last and self.pending:
            if self.seq == 0:
                raise DataError(f"stream {self.stream}: a single frame has no optical flow; pseudo-labels "
                                "need at least 2 frames per video")
            out.append(PairBatch(self.stream, self.seq, self.pending, [], last=True))
            self.seq += 1
        self.pending = []
        return out

    def _cut(self) -> PairBatch:
        batch = PairBatch(self.stream, self.seq, self.pending[:-1], self.pending[1:])
        self.seq += 1
        self.pending = self.pending[-1:]
        return batch


def pair_batches(stream: str, frames: Iterable[Frame], batch_pairs: int, with_last: bool) -> Iterator[PairBatch]:
    """:class:`PairBatcher` over an iterable (see there)."""
    batcher = PairBatcher(stream, batch_pairs)
    for frame in frames:
        yield from batcher.push(frame)
    yield from batcher.end(with_last)


def count_batches(num_pairs: int, batch_pairs: int, with_last: bool) -> int:
    """How many batches :class:`PairBatcher` cuts from ``num_pairs`` pairs."""
    return -(-num_pairs // batch_pairs) + int(with_last)


# --------------------------------------------------------------------------- per-stream state
def batch_cues(batch: PairBatch, flow: FlowResult | None, depth: DepthResult, feats: FeatureResult,
               flow_prev: FlowResult | None) -> tuple[list[FrameCues], FlowResult | None]:
    """The :class:`FrameCues` of each frame t of a batch; ``flow_prev`` is the pair (t-1, t) of
    the batch's first frame (from the previous batch). Returns the cues and the next ``flow_prev``."""
    out = []
    for i, frame in enumerate(batch.frames_t):
        flow_next = None if batch.last else flow.item(i)
        out.append(assemble_cues(frame, depth.depth[i], depth.motion_prob[i], feats.high[i], feats.low[i],
                                 flow_prev, flow_next))
        flow_prev = flow_next
    return out, flow_prev


class DepthStream:
    """Depth + motion of one stream: batches in ``seq`` order on one :class:`DepthStage`."""

    def __init__(self, stage: DepthStage, name: str):
        self.stage, self.name = stage, name
        self.next_seq = 0
        self.prev: tuple[Frame, FlowResult, DepthResult] | None = None  # last frame of the last batch
        stage.reset()

    def process(self, batch: PairBatch, flow: FlowResult | None) -> DepthResult:
        if batch.seq != self.next_seq:
            raise StreamStateLost(f"depth: stream {batch.stream} got batch {batch.seq}, expected {self.next_seq}")
        self.next_seq += 1
        if batch.last:
            if self.prev is None:
                raise DataError(f"{batch.stream}: a single frame has no optical flow; pseudo-labels need "
                                "at least 2 frames per video")
            prev_frame, flow_prev, prev_depth = self.prev
            return self.stage.process_last(batch.frames_t[0], prev_frame, flow_prev, prev_depth)
        if flow is None and self.stage.reads_flow:
            raise DataError(f"depth: stream {batch.stream} batch {batch.seq} has no flow")
        out = self.stage.process(batch.frames_t, batch.frames_t1, flow)
        n = len(batch.frames_t) - 1
        self.prev = (batch.frames_t[n], None if flow is None else flow.item(n),
                     DepthResult(out.depth[n:n + 1], out.motion_prob[n:n + 1], out.valid[n:n + 1]))
        return out


@dataclass
class ChunkResult:
    """What a finished stream hands to the driver: stitching maps, track IDs, statistics."""

    rows: int
    stats: ThingStuffStats
    head: dict[int, np.ndarray] = field(default_factory=dict)
    tail: dict[int, np.ndarray] = field(default_factory=dict)
    ids: list[int] = field(default_factory=list)


class LabelStream:
    """The tracker end of one stream (see the module docstring); one stream per LabelStage."""

    def __init__(self, label: LabelStage, chunk: ChunkSpec, name: str):
        self.label, self.chunk, self.name = label, chunk, name
        label.reset()
        self.flow_prev: FlowResult | None = None
        self.images: dict[int, np.ndarray] = {}  # frame_index -> image until its final label
        self.head: dict[int, np.ndarray] = {}
        self.tail: dict[int, np.ndarray] = {}
        self.stats = ThingStuffStats(label.cfg.num_clusters)
        self.ids: set[int] = set()
        self.rows: list[dict] = []  # final rows not yet taken
        self.count = 0
        self.done = False

    def process(self, batch: PairBatch, flow: FlowResult | None, depth: DepthResult,
                feats: FeatureResult) -> list[LabelledFrame]:
        """One batch, in order; returns every labelled frame (provisional ones too when the
        tracker emits them); final owned frames also go to :meth:`take_rows`."""
        out: list[LabelledFrame] = []
        cues, self.flow_prev = batch_cues(batch, flow, depth, feats, self.flow_prev)
        for frame, c in zip(batch.frames_t, cues):
            self.images[int(frame.frame_index)] = frame.image
            out += self._emit(self.label.push(c))
        return out

    def finish(self) -> list[LabelledFrame]:
        """End of the stream: close the open clip (early, when the stream stops mid-clip)."""
        out = self._emit(self.label.flush())
        if self.images:
            raise DataError(f"stream {self.name}: frames {sorted(self.images)} were never labelled")
        self.done = True
        return out

    def take_rows(self) -> list[dict]:
        rows, self.rows = self.rows, []
        return rows

    def result(self) -> ChunkResult:
        return ChunkResult(self.count, self.stats, self.head, self.tail, sorted(self.ids))

    def _emit(self, labelled: list[LabelledFrame]) -> list[LabelledFrame]:
        c = self.chunk
        for lf in labelled:
            if not lf.final:
                continue
            idx = int(lf.frame_index)
            image = self.images.pop(idx)
            if c.stop is not None and idx >= c.stop:
                self.tail[idx] = lf.instance.copy()
                continue
            if idx < c.start:
                raise DataError(f"stream {self.name}: frame {idx} is before the chunk start {c.start}")
            if idx < c.start + c.overlap:
                self.head[idx] = lf.instance.copy()
            row = labelled_to_row(lf, image)
            self.ids.update(int(i) for i in np.unique(row["instance"]) if i != 0)
            self.stats.add(row["semantic"], row["instance"], row["ignore"], where=f"{lf.video_id} frame {idx}")
            self.rows.append(row)
            self.count += 1
        return labelled


# --------------------------------------------------------------------------- one process
def run_chunk(stages: CueStages, label: LabelStage, frames: Iterable[Frame], chunk: ChunkSpec,
              num_frames: int, batch_pairs: int, on_rows: Callable[[list[dict]], None]) -> ChunkResult:
    """The reference loop in one process: ``frames`` are the decoded frames of
    ``chunk.read_range(num_frames)``; final owned rows go to ``on_rows`` batch by batch."""
    _, _, with_last = chunk.read_range(num_frames)
    stream = f"{chunk.video_id}@{chunk.start}"
    depth = DepthStream(stages.depth, stream)
    ls = LabelStream(label, chunk, stream)
    for batch in pair_batches(stream, frames, batch_pairs, with_last):
        flow = None if batch.last else stages.flow.process(batch.frames_t, batch.frames_t1)
        dr = depth.process(batch, flow)
        fe = stages.features.process(batch.frames_t, dr.depth)
        ls.process(batch, flow, dr, fe)
        on_rows(ls.take_rows())
    ls.finish()
    on_rows(ls.take_rows())
    return ls.result()


def video_cues(stages: CueStages, frames: Iterable[Frame], batch_pairs: int) -> Iterator[tuple[Frame, FrameCues]]:
    """``(frame, cues)`` of a whole video in order, cut into batches as every engine cuts them
    (benchmarks that study labeling on fixed cues, tests of batching independence)."""
    frames = list(frames)
    stream = f"{frames[0].video_id}@0" if frames else "empty"
    depth = DepthStream(stages.depth, stream)
    flow_prev = None
    for batch in pair_batches(stream, frames, batch_pairs, with_last=True):
        flow = None if batch.last else stages.flow.process(batch.frames_t, batch.frames_t1)
        dr = depth.process(batch, flow)
        fe = stages.features.process(batch.frames_t, dr.depth)
        cues, flow_prev = batch_cues(batch, flow, dr, fe, flow_prev)
        yield from zip(batch.frames_t, cues)
