"""Cue actors: thin Ray-free wrappers of the cue stages of ``pipelines/stages.py``.

The Ray engine must give the local engine's pseudo-labels bit for bit, so these actors call
exactly :class:`FlowStage`, :class:`DepthStage` and :class:`FeatureStage`, with the same frame
pairs in the same per-video order as :class:`~videocups_ray.pipelines.stages.VideoCueRunner`.

A unit of work is a :class:`PairBatch`: the frame pairs ``(frames_t[i], frames_t1[i])`` of one
stream, or, with ``last=True``, the final frame of a video, which has no pair ahead. Results
travel as ObjectRefs from actor to actor (the driver passes refs along and never fetches cues).
Every ``process`` returns ``(result, busy_seconds)`` so the driver can report utilisation
without asking a busy actor.

Flow and features are stateless: any replica takes any batch, and Ray replays a batch on a
restarted actor. Depth carries per-video state (the geometry backend's last depth and road
plane), so each stream is pinned to one depth actor, which keeps one state per stream and
checks the batch sequence: a restarted actor has lost the state and says so
(:class:`StreamStateLost`) instead of computing different depths.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np

from videocups_ray.actors.base import FailureInjector, FailurePlan, StreamStateLost
from videocups_ray.config import Config, LabelingConfig
from videocups_ray.cues import DepthResult, FeatureResult, FlowResult
from videocups_ray.data.types import DataError, Frame
from videocups_ray.labeling import KMeansStats, partial_stats
from videocups_ray.pipelines.stages import DepthStage, FeatureStage, FlowStage, sample_frame_features


@dataclass
class PairBatch:
    """Frame pairs of one stream; ``last=True``: ``frames_t`` is a video's final frame alone."""

    stream: str
    seq: int  # position of this batch in its stream, from 0
    frames_t: list[Frame]
    frames_t1: list[Frame] = field(default_factory=list)
    last: bool = False

    def __post_init__(self) -> None:
        if self.last and (len(self.frames_t) != 1 or self.frames_t1):
            raise DataError(f"stream {self.stream} batch {self.seq}: a last-frame batch holds one frame, no pair")
        if not self.last and len(self.frames_t) != len(self.frames_t1):
            raise DataError(f"stream {self.stream} batch {self.seq}: {len(self.frames_t)} frames t, "
                            f"{len(self.frames_t1)} frames t+1")
        if not self.frames_t:
            raise DataError(f"stream {self.stream} batch {self.seq}: empty batch")


class _CueActor:
    kind = "cue"
    stage_cls: type[FlowStage] | type[DepthStage] | type[FeatureStage]

    def __init__(self, cfg: Config, device: str | None = None, failures: tuple[FailurePlan, ...] = ()):
        self._cfg, self._device = cfg, device
        self._stage = None
        self._fail = FailureInjector(self.kind, failures)

    def ready(self) -> bool:
        """Round trip used to wait for the actor (and its ``setup``) to be up."""
        return self._stage is not None

    def setup(self) -> bool:
        """Build the stage and load its weights on this actor's device."""
        self._stage = self.stage_cls(self._cfg)
        self._stage.setup(self._device)
        return True

    def teardown(self) -> None:
        if self._stage is not None and hasattr(self._stage, "teardown"):
            self._stage.teardown()
        self._stage = None


class FlowActor(_CueActor):
    """Forward + backward flow of a :class:`PairBatch` (stateless, batched)."""

    kind = "flow"
    stage_cls = FlowStage

    def process(self, batch: PairBatch) -> tuple[FlowResult | None, float]:
        self._fail.tick()
        if self._stage is None:
            self.setup()
        t = time.perf_counter()
        out = None if batch.last else self._stage.process(batch.frames_t, batch.frames_t1)
        return out, time.perf_counter() - t


@dataclass
class _DepthStream:
    stage: DepthStage
    next_seq: int = 0
    prev: tuple[Frame, FlowResult, DepthResult] | None = None  # last frame of the last batch


class DepthActor(_CueActor):
    """Depth + motion probability; one state per stream, batches of a stream in order."""

    kind = "depth"
    stage_cls = DepthStage

    def __init__(self, cfg: Config, device: str | None = None, failures: tuple[FailurePlan, ...] = ()):
        super().__init__(cfg, device, failures)
        self._streams: dict[str, _DepthStream] = {}

    def _new_stream_stage(self) -> DepthStage:
        """A per-stream stage sharing the template's heavy parts (weights) but not its state.

        Shallow copies: ``reset()`` rebinds the per-video attributes on the copy only.
        """
        stage = copy.copy(self._stage)
        stage._est = copy.copy(self._stage._est)  # noqa: SLF001 (DepthStage owns one estimator)
        stage.reset()
        return stage

    def drop(self, stream: str) -> None:
        """Forget a stream (its chunk was abandoned and will be redone under a new name)."""
        self._streams.pop(stream, None)

    def process(self, batch: PairBatch, flow: FlowResult | None) -> tuple[DepthResult, float]:
        self._fail.tick()
        if self._stage is None:
            self.setup()
        t = time.perf_counter()
        st = self._streams.get(batch.stream)
        if st is None:
            if batch.seq != 0:
                raise StreamStateLost(f"depth actor has no state for stream {batch.stream} at batch "
                                      f"{batch.seq} (actor restarted?)")
            st = self._streams[batch.stream] = _DepthStream(self._new_stream_stage())
        if batch.seq != st.next_seq:
            raise StreamStateLost(f"depth: stream {batch.stream} got batch {batch.seq}, expected {st.next_seq}")
        st.next_seq += 1
        if batch.last:
            if st.prev is None:
                raise DataError(f"{batch.stream}: a single frame has no optical flow; pseudo-labels need "
                                "at least 2 frames per video")
            prev_frame, flow_prev, prev_depth = st.prev
            out = st.stage.process_last(batch.frames_t[0], prev_frame, flow_prev, prev_depth)
            del self._streams[batch.stream]
            return out, time.perf_counter() - t
        if flow is None:
            raise DataError(f"depth: stream {batch.stream} batch {batch.seq} has no flow")
        out = st.stage.process(batch.frames_t, batch.frames_t1, flow)
        n = len(batch.frames_t) - 1
        st.prev = (batch.frames_t[n], flow.item(n),
                   DepthResult(out.depth[n:n + 1], out.motion_prob[n:n + 1], out.valid[n:n + 1]))
        return out, time.perf_counter() - t

    def end_stream(self, stream: str) -> None:
        """A stream that ends without a last-frame batch (a chunk cut before the video's end)."""
        self._streams.pop(stream, None)


class FeatureActor(_CueActor):
    """Per-pixel features (stateless, batched); also pass 1's sampling and k-means statistics."""

    kind = "features"
    stage_cls = FeatureStage

    def process(self, batch: PairBatch, depth: DepthResult) -> tuple[FeatureResult, float]:
        self._fail.tick()
        if self._stage is None:
            self.setup()
        t = time.perf_counter()
        out = self._stage.process(batch.frames_t, depth.depth)
        return out, time.perf_counter() - t

    def sample(self, batch: PairBatch, depth: DepthResult, labeling: LabelingConfig, seed: int
               ) -> list[tuple[tuple[str, int], np.ndarray]]:
        """Pass 1: features of the batch, then each frame's seeded k-means sample, with its key."""
        feats, _ = self.process(batch, depth)
        out = []
        for i, f in enumerate(batch.frames_t):
            key = (str(f.video_id), int(f.frame_index))
            out.append((key, sample_frame_features(*key, feats.high[i], labeling, seed)))
        return out

    @staticmethod
    def partial_stats(blocks: list[np.ndarray], centroids: np.ndarray) -> list[KMeansStats]:
        """Per-block k-means statistics; the driver merges all blocks in key order."""
        return [partial_stats(b, centroids) for b in blocks]
