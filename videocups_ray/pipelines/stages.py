"""The pseudo-label stages: cues (flow, depth, features), labeling, and the shard row.

Every engine runs exactly these objects, so the local engine (``pipelines/pseudolabel.py``)
and the Ray engine (actors wrapping the same stages) give bit-identical pseudo-labels. A stage
has a cheap constructor from :class:`~videocups_ray.config.Config`, a heavy ``setup(device)``
(weights, OpenCV objects; run inside the actor), ``process(...)`` on a batch, ``teardown()``,
and ``reset()`` where it keeps per-video state. No Ray here.

Frame t of a video is labelled from (DESIGN.md section 4):

- the flow of the pair (t-1, t) (its backward half is t's backward flow) and of the pair
  (t, t+1) (forward flow): :class:`FlowStage` on pairs;
- depth + motion of t from the pair (t, t+1): :class:`DepthStage` (the geometry backend is
  stateful: pairs of one video in order, ``reset()`` between videos). The last frame has no
  pair ahead: :meth:`DepthStage.process_last` (see there);
- features of t (depth-aware for the handmade backend): :class:`FeatureStage`;
- :func:`assemble_cues` glues these into a :class:`FrameCues`; :class:`LabelStage` turns
  ordered cues into final labelled frames; :func:`labelled_to_row` makes the shard row.

Why results do not depend on batching: DIS / RAFT / oracle flow is per pair, the geometry
depth seeds its RANSAC per frame and only carries "last good depth/plane" in frame order, and
features are per frame. :class:`VideoCueRunner` is the reference order of calls.

Pass 1 (semantic centroids) is expressed with mergeable statistics
(:func:`sample_frame_features` per frame, seeded by (seed, video, frame) only;
:func:`kmeans_step` sums per-frame partial statistics in key order), so a distributed
driver reproduces :func:`fit_centroids_from_samples` exactly when it merges in the same order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import logging
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from videocups_ray.config import Config, DepthConfig, FeatureConfig, FlowConfig, LabelingConfig
from videocups_ray.cues import DepthResult, FeatureResult, FlowResult, build_depth, build_features, build_flow
from videocups_ray.cues.base import Estimator
from videocups_ray.cues.depth import GeometryDepth
from videocups_ray.data.types import DataError, Frame
from videocups_ray.labeling import (
    FrameCues,
    LabelledFrame,
    SemanticLabeler,
    VideoTracker,
    init_centroids,
    merge_stats,
    partial_stats,
    update_centroids,
)
from videocups_ray.labeling.semantics import normalize_rows

log = logging.getLogger(__name__)
_warned_last_depth = False


# --------------------------------------------------------------------------- cue stages
class _CueStage(ABC):
    """One cue estimator built from its config section: a cheap constructor, the estimator built
    and set up in ``setup`` (or at the first call, on the configured device)."""

    def __init__(self, section: FlowConfig | DepthConfig | FeatureConfig):
        self.cfg = section
        self.batch_size = section.batch_size
        self._est = None

    @staticmethod
    @abstractmethod
    def _build(section: FlowConfig | DepthConfig | FeatureConfig) -> Estimator:
        """The estimator for this stage's config section (``build_flow`` etc.)."""

    def setup(self, device: str | None = None) -> None:
        self._est = self._build(self.cfg)
        self._est.setup(device or self.cfg.device)

    def _estimator(self) -> Estimator:
        if self._est is None:
            self.setup()
        return self._est


class FlowStage(_CueStage):
    """Forward + backward flow and occlusion of frame pairs (``cfg.cues.flow``)."""

    _build = staticmethod(build_flow)

    def __init__(self, cfg: Config):
        super().__init__(cfg.cues.flow)

    def process(self, frames_t: Sequence[Frame], frames_t1: Sequence[Frame]) -> FlowResult:
        """Pairs ``(frames_t[i], frames_t1[i])`` -> one :class:`FlowResult` batch."""
        est = self._estimator()
        if len(frames_t) != len(frames_t1):
            raise DataError(f"flow stage: {len(frames_t)} frames t but {len(frames_t1)} frames t+1")
        return est(list(frames_t), list(frames_t1))

    def teardown(self) -> None:
        if self._est is not None:
            self._est.teardown()
        self._est = None


class DepthStage(_CueStage):
    """Depth (m) and motion probability per frame (``cfg.cues.depth``); per-video state."""

    _build = staticmethod(build_depth)

    def __init__(self, cfg: Config):
        super().__init__(cfg.cues.depth)

    def reset(self) -> None:
        """A new video starts (the geometry backend forgets its last depth and road plane)."""
        if self._est is not None:
            self._est.reset()

    def process(self, frames_t: Sequence[Frame], frames_t1: Sequence[Frame], flow: FlowResult,
                K: np.ndarray | None = None) -> DepthResult:
        """Depth of ``frames_t`` from the pairs (t, t+1); pairs of one video, in order."""
        return self._estimator()(list(frames_t), list(frames_t1), flow, K)

    def process_last(self, frame: Frame, prev_frame: Frame, flow_prev: FlowResult,
                     prev_depth: DepthResult) -> DepthResult:
        """Depth of a video's last frame, which has no frame ahead.

        Geometry backend: two-view geometry needs the pair ahead, and the reversed pair
        (t -> t-1) means backward ego-motion, which the forward-driving pose prior fights; so
        frame t-1's depth and motion are carried to t by a nearest-neighbour backward warp
        along t's backward flow (logged once). Other backends (oracle, monodepth) estimate the
        frame on its own.
        """
        global _warned_last_depth
        est = self._estimator()
        if not isinstance(est, GeometryDepth):
            reversed_pair = FlowResult(flow_prev.bw, flow_prev.fw, flow_prev.occlusion_bw, flow_prev.occlusion)
            return est([frame], [prev_frame], reversed_pair, None)
        if not _warned_last_depth:
            log.warning("depth: %s frame %d is the last of its video; geometry depth and motion are "
                        "the previous frame's, warped along the backward flow", frame.video_id,
                        frame.frame_index)
            _warned_last_depth = True
        bw = flow_prev.bw[0]
        h, w = bw.shape[:2]
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
        mx, my = gx + bw[..., 0], gy + bw[..., 1]
        warp = [cv2.remap(np.ascontiguousarray(a[0]), mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
                for a in (prev_depth.depth, prev_depth.motion_prob, prev_depth.valid.astype(np.uint8))]
        return DepthResult(warp[0][None], warp[1][None], (warp[2] > 0)[None] & ~flow_prev.occlusion_bw)


class FeatureStage(_CueStage):
    """Per-pixel features at two scales (``cfg.cues.features``)."""

    _build = staticmethod(build_features)

    def __init__(self, cfg: Config):
        super().__init__(cfg.cues.features)

    def process(self, frames: Sequence[Frame], depth: np.ndarray | None) -> FeatureResult:
        """``(high, low)`` features of ``frames``; ``depth`` is ``N x H x W`` metres or None."""
        est = self._estimator()
        frames = list(frames)
        K = frames[0].extra.get("K") if frames else None
        return est(frames, depth=depth, K=None if K is None else np.asarray(K, np.float64))

    def teardown(self) -> None:
        if self._est is not None:
            self._est.teardown()
        self._est = None


def assemble_cues(frame: Frame, depth: np.ndarray, motion_prob: np.ndarray,
                  features_high: np.ndarray, features_low: np.ndarray | None,
                  flow_prev: FlowResult | None, flow_next: FlowResult | None) -> FrameCues:
    """Frame t's cues: ``flow_prev`` is the pair (t-1, t) (batch of one; its backward half is
    t's backward flow), ``flow_next`` the pair (t, t+1). Arrays are those of frame t alone."""
    fw = occ_fw = bw = occ_bw = None
    if flow_next is not None:
        fw, occ_fw = flow_next.fw[0], flow_next.occlusion[0]
    if flow_prev is not None:
        bw, occ_bw = flow_prev.bw[0], flow_prev.occlusion_bw[0]
    cues = FrameCues(frame.video_id, int(frame.frame_index), np.asarray(depth, np.float32),
                     np.asarray(motion_prob, np.float32), fw, bw, occ_fw, occ_bw,
                     features_high, features_low)
    cues.validate()
    return cues


@dataclass
class CueStages:
    """The three cue stages of one worker, set up together."""

    flow: FlowStage
    depth: DepthStage
    features: FeatureStage

    @classmethod
    def from_config(cls, cfg: Config) -> "CueStages":
        return cls(FlowStage(cfg), DepthStage(cfg), FeatureStage(cfg))

    def setup(self, device: str | None = None) -> None:
        self.flow.setup(device)
        self.depth.setup(device)
        self.features.setup(device)

    def teardown(self) -> None:
        self.flow.teardown()
        self.features.teardown()


class VideoCueRunner:
    """The reference order of stage calls for one video: frames in, :class:`FrameCues` out.

    Frames are processed in chunks of ``batch`` pairs; frame t is emitted once the pair
    (t, t+1) is done (the last frame at the end). Results do not depend on ``batch``.
    """

    def __init__(self, stages: CueStages, batch: int = 4):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.stages, self.batch = stages, batch

    def run(self, frames: Iterable[Frame]) -> Iterator[tuple[Frame, FrameCues]]:
        self.stages.depth.reset()
        pending: list[Frame] = []
        flow_prev: FlowResult | None = None  # pair (t-1, t) for the first pending frame
        last: tuple[Frame, DepthResult] | None = None
        video = None
        for frame in frames:
            if video is None:
                video = frame.video_id
            elif frame.video_id != video:
                raise DataError(f"{frame.video_id} frame {frame.frame_index}: VideoCueRunner got a second "
                                f"video (started with {video!r}); run one video per call")
            pending.append(frame)
            if len(pending) > self.batch:
                out, flow_prev, last = self._chunk(pending, flow_prev)
                yield from out
                pending = pending[-1:]
        if not pending:
            return
        if len(pending) > 1:
            out, flow_prev, last = self._chunk(pending, flow_prev)
            yield from out
            pending = pending[-1:]
        if flow_prev is None or last is None:
            raise DataError(f"video {video!r}: a single frame has no optical flow; pseudo-labels need "
                            "at least 2 frames per video")
        frame = pending[0]
        dr = self.stages.depth.process_last(frame, last[0], flow_prev, last[1])
        fe = self.stages.features.process([frame], dr.depth)
        yield frame, assemble_cues(frame, dr.depth[0], dr.motion_prob[0], fe.high[0], fe.low[0],
                                   flow_prev, None)

    def _chunk(self, pending: list[Frame], flow_prev: FlowResult | None
               ) -> tuple[list[tuple[Frame, FrameCues]], FlowResult, tuple[Frame, DepthResult]]:
        a, b = pending[:-1], pending[1:]
        fr = self.stages.flow.process(a, b)
        dr = self.stages.depth.process(a, b, fr)
        fe = self.stages.features.process(a, dr.depth)
        out = []
        for i, frame in enumerate(a):
            out.append((frame, assemble_cues(frame, dr.depth[i], dr.motion_prob[i], fe.high[i], fe.low[i],
                                             flow_prev, fr.item(i))))
            flow_prev = fr.item(i)
        n = len(a) - 1
        last_depth = DepthResult(dr.depth[n:n + 1], dr.motion_prob[n:n + 1], dr.valid[n:n + 1])
        return out, flow_prev, (a[-1], last_depth)


# --------------------------------------------------------------------------- labeling stage
class LabelStage:
    """Semantic labeler + tracker for one video stream (``emit="clip"``: final frames only)."""

    def __init__(self, cfg: Config, centroids: np.ndarray):
        self.cfg = cfg.labeling
        self.centroids = np.asarray(centroids, np.float32)
        self._tracker: VideoTracker | None = None

    def setup(self, device: str | None = None) -> None:
        labeler = SemanticLabeler(self.centroids, self.cfg)
        self._tracker = VideoTracker(self.cfg, semantics=labeler, emit="clip")

    @property
    def tracker(self) -> VideoTracker:
        if self._tracker is None:
            self.setup()
        assert self._tracker is not None
        return self._tracker

    def push(self, cues: FrameCues) -> list[LabelledFrame]:
        """Next frame of the current video; returns the frames whose clip closed."""
        return self.tracker.push(cues)

    def flush(self) -> list[LabelledFrame]:
        """End of the video: the remaining frames; the stage is ready for the next video."""
        return self.tracker.flush()

    def reset(self) -> None:
        self.tracker.reset()

    def state_dict(self) -> dict:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state)

    def teardown(self) -> None:
        self._tracker = None


def labelled_to_row(labelled: LabelledFrame, image: np.ndarray) -> dict:
    """Keyword arguments of :meth:`ShardWriter.add` for one final frame.

    ``semantic`` is the pseudo-class of every pixel, ``ignore`` the unreliable pixels (DESIGN.md
    section 4 step 7) as a separate mask, ``instance`` the track ID (0 none). Neither the
    ignore label nor the thing/stuff split is burnt in: the split needs the whole corpus, and
    the reader decides (training voids the ignore mask; evaluation scores every pixel's class;
    bench_pseudolabels.py --quick measured voiding the occlusion mask at -7 STQ points with
    oracle cues on SynthDrive, as the sky and the image border are "occluded" for the flow).
    """
    if not labelled.final:
        raise DataError(f"{labelled.name}: only final frames go to shards (got a provisional one)")
    if image.shape[:2] != labelled.semantic.shape:
        raise DataError(f"{labelled.name}: image {image.shape[:2]} and labels {labelled.semantic.shape} differ")
    row = {"video_id": labelled.video_id, "frame_index": int(labelled.frame_index), "image": image,
           "semantic": labelled.semantic.astype(np.uint8), "instance": labelled.instance.astype(np.int32),
           "ignore": labelled.ignore.astype(bool)}
    if labelled.depth is not None:  # labeling.write_depth_cue: the shards' optional depth column
        row["depth"] = labelled.depth
    return row


# --------------------------------------------------------------------------- pass 1: centroids
def fit_positions(num_frames: int, per_video: int) -> list[int]:
    """Evenly spaced frame positions of a video used for the centroid fit (each with t+1)."""
    if num_frames < 2:
        return []
    count = min(per_video, num_frames - 1)
    return sorted(set(np.linspace(0, num_frames - 2, count).round().astype(int).tolist()))


def sample_frame_features(video_id: str, frame_index: int, features_high: np.ndarray,
                          cfg: LabelingConfig, seed: int = 0) -> np.ndarray:
    """``kmeans_samples_per_frame`` unit feature rows of one frame, seeded by (seed, video,
    frame) only, so any worker drawing them gets the same rows."""
    c = features_high.shape[0]
    flat = features_high.reshape(c, -1)
    rng = np.random.default_rng([seed, zlib.crc32(str(video_id).encode()), int(frame_index)])
    n = min(cfg.kmeans_samples_per_frame, flat.shape[1])
    idx = np.sort(rng.choice(flat.shape[1], size=n, replace=False))
    rows = np.ascontiguousarray(flat[:, idx].T, dtype=np.float64)
    keep = np.linalg.norm(rows, axis=1) > 0
    return normalize_rows(rows[keep], f"{video_id} frame {frame_index} features")


def kmeans_step(centroids: np.ndarray, samples: Sequence[np.ndarray]) -> tuple[np.ndarray, float]:
    """One Lloyd step over per-frame sample blocks (statistics merged in the given order)."""
    stats = merge_stats([partial_stats(s, centroids) for s in samples])
    cents, _ = update_centroids(centroids, stats)
    return cents, stats.inertia


def fit_centroids_from_samples(samples: Sequence[np.ndarray], cfg: LabelingConfig,
                               seed: int = 0) -> np.ndarray:
    """k-means++ on all samples (in the given order), then ``kmeans_iters`` Lloyd steps."""
    if not samples:
        raise DataError("centroid fit: no frames were sampled (every video has fewer than 2 frames?)")
    cents = init_centroids(np.concatenate(samples), cfg.num_clusters, seed)
    for _ in range(cfg.kmeans_iters):
        cents, _ = kmeans_step(cents, samples)
    return cents.astype(np.float32)


def fit_centroids(videos: Iterable[Sequence[Frame]], stages: CueStages, cfg: Config,
                  seed: int = 0) -> np.ndarray:
    """Pass 1, single process: for each video's sampled pairs (list of ``(frame_t, frame_t1)``
    given as 2-frame sequences), flow -> depth -> features -> samples; then the fit.

    ``videos`` yields, per video, the sampled frames *and their successors* interleaved:
    ``[f_a, f_a+1, f_b, f_b+1, ...]`` (see :func:`fit_positions`).
    """
    samples: list[tuple[tuple[str, int], np.ndarray]] = []
    for frames in videos:
        frames = list(frames)
        if len(frames) % 2:
            raise DataError("fit_centroids: each video must give (frame t, frame t+1) pairs")
        stages.depth.reset()
        a, b = frames[0::2], frames[1::2]
        for s in range(0, len(a), stages.flow.batch_size):
            fr = stages.flow.process(a[s:s + stages.flow.batch_size], b[s:s + stages.flow.batch_size])
            dr = stages.depth.process(a[s:s + stages.flow.batch_size], b[s:s + stages.flow.batch_size], fr)
            fe = stages.features.process(a[s:s + stages.flow.batch_size], dr.depth)
            for i, f in enumerate(a[s:s + stages.flow.batch_size]):
                key = (str(f.video_id), int(f.frame_index))
                samples.append((key, sample_frame_features(*key, fe.high[i], cfg.labeling, seed)))
    samples.sort(key=lambda kv: kv[0])
    return fit_centroids_from_samples([s for _, s in samples], cfg.labeling, seed)
