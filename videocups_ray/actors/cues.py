"""Cue actors: thin Ray-free wrappers of the cue stages of ``videocups_ray/stages``.

The Ray engines must give the local engine's pseudo-labels bit for bit, so these actors call
exactly :class:`FlowStage`, :class:`DepthStage` and :class:`FeatureStage` on the same
:class:`PairBatch` es the local engine cuts (``stages.scheduler.PairBatcher``), and the depth
actor keeps one :class:`~videocups_ray.stages.scheduler.DepthStream` per stream, as the local
engine does. Batches arrive as ObjectRefs made by reader actors (the driver never holds a
frame); results travel as ObjectRefs from actor to actor. Every ``process`` returns
``(result, busy_seconds)`` so the driver can report utilisation without asking a busy actor.

Flow and features are stateless: any replica takes any batch, and Ray replays a batch on a
restarted actor. Depth carries per-stream state, so each stream is pinned to one depth actor;
a restarted actor has lost the state and says so (:class:`StreamStateLost`) instead of
computing different depths.
"""

from __future__ import annotations

import time

import numpy as np

from videocups_ray.actors.base import FailureInjector, FailurePlan, StreamStateLost
from videocups_ray.config import Config, LabelingConfig
from videocups_ray.cues import DepthResult, FeatureResult, FlowResult
from videocups_ray.labeling import KMeansStats, partial_stats
from videocups_ray.stages import DepthStage, DepthStream, FeatureStage, FlowStage, PairBatch
from videocups_ray.stages.centroids import Sample, sample_batch
from videocups_ray.stages.payload import merge_batch


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

    def process(self, batch: PairBatch, gt: PairBatch | None = None) -> tuple[FlowResult | None, float]:
        """``gt``: the batch's ground-truth part, where the backend reads it (``stages.payload``)."""
        self._fail.tick()
        if self._stage is None:
            self.setup()
        t = time.perf_counter()
        batch = merge_batch(batch, gt)
        out = None if batch.last else self._stage.process(batch.frames_t, batch.frames_t1)
        return out, time.perf_counter() - t


class DepthActor(_CueActor):
    """Depth + motion probability; one :class:`DepthStream` per stream, batches in order."""

    kind = "depth"
    stage_cls = DepthStage

    def __init__(self, cfg: Config, device: str | None = None, failures: tuple[FailurePlan, ...] = ()):
        super().__init__(cfg, device, failures)
        self._streams: dict[str, DepthStream] = {}

    def drop(self, stream: str) -> None:
        """Forget a stream (it ended without a last-frame batch, or was abandoned)."""
        self._streams.pop(stream, None)

    end_stream = drop

    def process(self, batch: PairBatch, flow: FlowResult | None,
                gt: PairBatch | None = None) -> tuple[DepthResult, float]:
        """``flow`` is None when the backend does not read it (then depth runs next to flow)."""
        self._fail.tick()
        if self._stage is None:
            self.setup()
        t = time.perf_counter()
        batch = merge_batch(batch, gt)
        st = self._streams.get(batch.stream)
        if st is None:
            if batch.seq != 0:
                raise StreamStateLost(f"depth actor has no state for stream {batch.stream} at batch "
                                      f"{batch.seq} (actor restarted?)")
            st = self._streams[batch.stream] = DepthStream(self._stage.fork(), batch.stream)
        out = st.process(batch, flow)
        if batch.last:
            del self._streams[batch.stream]
        return out, time.perf_counter() - t


class FeatureActor(_CueActor):
    """Per-pixel features (stateless, batched); also pass 1's sampling and k-means statistics."""

    kind = "features"
    stage_cls = FeatureStage

    def process(self, batch: PairBatch, depth: DepthResult | None,
                gt: PairBatch | None = None) -> tuple[FeatureResult, float]:
        """``depth`` is None when the backend does not read it (then features run next to flow)."""
        self._fail.tick()
        if self._stage is None:
            self.setup()
        t = time.perf_counter()
        batch = merge_batch(batch, gt)
        out = self._stage.process(batch.frames_t, None if depth is None else depth.depth)
        return out, time.perf_counter() - t

    def sample(self, batch: PairBatch, depth: DepthResult | None, labeling: LabelingConfig, seed: int,
               gt: PairBatch | None = None) -> list[Sample]:
        """Pass 1: features of the batch, then each frame's seeded k-means sample, with its key."""
        feats, _ = self.process(batch, depth, gt)
        return sample_batch(batch, feats, labeling, seed)

    @staticmethod
    def partial_stats(blocks: list[np.ndarray], centroids: np.ndarray) -> list[KMeansStats]:
        """Per-block k-means statistics; the driver merges all blocks in key order."""
        return [partial_stats(b, centroids) for b in blocks]
