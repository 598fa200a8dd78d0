"""Cue stages: flow, depth + motion, features (one estimator each), and the per-frame glue.

Frame t of a video is labelled from (DESIGN.md section 4):

- the flow of the pair (t-1, t) (its backward half is t's backward flow) and of the pair
  (t, t+1) (forward flow): :class:`FlowStage` on pairs;
- depth + motion of t from the pair (t, t+1): :class:`DepthStage` (the geometry backend is
  stateful: pairs of one video in order, ``reset()`` between videos). The last frame has no
  pair ahead: :meth:`DepthStage.process_last` (see there);
- features of t (depth-aware for the handmade backend): :class:`FeatureStage`;
- :func:`assemble_cues` glues these into a :class:`FrameCues`.

Why results do not depend on batching: DIS / RAFT / oracle flow is per pair, the geometry
depth seeds its RANSAC per frame and only carries "last good depth/plane" in frame order, and
features are per frame. So the local engine, the Ray corpus engine and the streaming engines
can cut a video into batches differently and still give identical cues. No Ray here.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from videocups_ray.config import CameraConfig, Config, DepthConfig, FeatureConfig, FlowConfig
from videocups_ray.cues import DepthResult, FeatureResult, FlowResult, build_depth, build_features, build_flow
from videocups_ray.cues.base import Estimator
from videocups_ray.cues.depth import GeometryDepth
from videocups_ray.data.types import DataError, Frame
from videocups_ray.labeling import FrameCues
from videocups_ray.stages.base import Resources

log = logging.getLogger(__name__)


def depth_reads_flow(section: DepthConfig) -> bool:
    """Depth backends that read the flow; ``oracle`` and ``simulated`` read only ground truth."""
    return section.backend not in ("oracle", "simulated")


def features_read_depth(section: FeatureConfig) -> bool:
    """Feature backends that read the depth; ``simulated`` reads only ground-truth semantics."""
    return section.backend != "simulated"


class _CueStage(ABC):
    """One cue estimator built from its config section: a cheap constructor, the estimator built
    and set up in ``setup`` (or at the first call, on the configured device)."""

    resources = Resources()  # the Ray engines use ``cfg.ray.<kind>`` (``actors.base.remote_class``)

    def __init__(self, section: FlowConfig | DepthConfig | FeatureConfig, camera: CameraConfig | None = None):
        self.cfg, self.camera = section, camera
        self.batch_size = section.batch_size
        self._est = None

    @staticmethod
    @abstractmethod
    def _build(section: FlowConfig | DepthConfig | FeatureConfig, camera: CameraConfig | None) -> Estimator:
        """The estimator for this stage's config section and the shared camera."""

    def setup(self, device: str | None = None) -> None:
        self._est = self._build(self.cfg, self.camera)
        self._est.setup(device or self.cfg.device)

    def _estimator(self) -> Estimator:
        if self._est is None:
            self.setup()
        return self._est

    def reset(self) -> None:
        """A new video starts (stateless stages: nothing to forget)."""

    def teardown(self) -> None:
        if self._est is not None:
            self._est.teardown()
        self._est = None


class FlowStage(_CueStage):
    """Forward + backward flow and occlusion of frame pairs (``cfg.cues.flow``)."""

    _build = staticmethod(lambda section, camera: build_flow(section))

    def __init__(self, cfg: Config):
        super().__init__(cfg.cues.flow)

    def process(self, frames_t: Sequence[Frame], frames_t1: Sequence[Frame]) -> FlowResult:
        """Pairs ``(frames_t[i], frames_t1[i])`` -> one :class:`FlowResult` batch."""
        est = self._estimator()
        if len(frames_t) != len(frames_t1):
            raise DataError(f"flow stage: {len(frames_t)} frames t but {len(frames_t1)} frames t+1")
        return est(list(frames_t), list(frames_t1))


class DepthStage(_CueStage):
    """Depth (m) and motion probability per frame (``cfg.cues.depth``); per-video state."""

    _build = staticmethod(build_depth)

    def __init__(self, cfg: Config):
        super().__init__(cfg.cues.depth, cfg.camera)
        self._warned_last = False

    @property
    def reads_flow(self) -> bool:
        """Whether the backend uses the flow (``oracle`` / ``simulated`` read ground truth only), so
        the Ray engines can run depth next to flow instead of after it."""
        return depth_reads_flow(self.cfg)

    def reset(self) -> None:
        """A new video starts (the geometry backend forgets its last depth and road plane)."""
        if self._est is not None:
            self._est.reset()

    def state_dict(self) -> dict:
        """The per-video carry-over (``_last_*`` attributes of the estimator), copied."""
        est = self._estimator()
        return {k: copy.deepcopy(v) for k, v in vars(est).items() if k.startswith("_last")}

    def load_state_dict(self, state: dict) -> None:
        est = self._estimator()
        for k, v in state.items():
            if not k.startswith("_last"):
                raise DataError(f"depth stage state: unexpected key {k!r}")
            setattr(est, k, copy.deepcopy(v))

    def fork(self) -> "DepthStage":
        """A stage for another stream: shares the heavy parts (weights) but not the state."""
        stage = copy.copy(self)
        stage._est = copy.copy(self._estimator())
        stage.reset()
        return stage

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
        est = self._estimator()
        if not isinstance(est, GeometryDepth):
            reversed_pair = None if flow_prev is None else \
                FlowResult(flow_prev.bw, flow_prev.fw, flow_prev.occlusion_bw, flow_prev.occlusion)
            return est([frame], [prev_frame], reversed_pair, None)
        if not self._warned_last:
            log.warning("depth: %s frame %d is the last of its video; geometry depth and motion are "
                        "the previous frame's, warped along the backward flow", frame.video_id,
                        frame.frame_index)
            self._warned_last = True
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
        super().__init__(cfg.cues.features, cfg.camera)

    @property
    def reads_depth(self) -> bool:
        """Whether the backend uses the depth (the handmade features are depth-aware)."""
        return features_read_depth(self.cfg)

    def process(self, frames: Sequence[Frame], depth: np.ndarray | None) -> FeatureResult:
        """``(high, low)`` features of ``frames``; ``depth`` is ``N x H x W`` metres or None."""
        est = self._estimator()
        frames = list(frames)
        K = frames[0].extra.get("K") if frames else None
        return est(frames, depth=depth, K=None if K is None else np.asarray(K, np.float64))


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
        self.depth.teardown()
        self.features.teardown()




class _Memo:
    """One cue stage with its results remembered by the keys of the frames it was given."""

    def __init__(self, stage, memo: dict, kind: str):
        self._stage, self._memo, self._kind = stage, memo, kind
        self.batch_size = stage.batch_size

    def __getattr__(self, name):
        return getattr(self._stage, name)

    @staticmethod
    def _keys(frames) -> tuple:
        return tuple((str(f.video_id), int(f.frame_index)) for f in frames)

    def _call(self, key: tuple, fn, *args):
        full = (self._kind, fn.__name__) + key
        if full not in self._memo:
            self._memo[full] = fn(*args)
        return self._memo[full]

    def process(self, *args, **kwargs):
        frames = [a for a in args if isinstance(a, (list, tuple))]
        key = tuple(self._keys(f) for f in frames if f and isinstance(f[0], Frame))
        return self._call(key, self._stage.process, *args, **kwargs) if not kwargs else self._stage.process(*args, **kwargs)

    def process_last(self, frame: Frame, prev_frame: Frame, flow_prev, prev_depth):
        return self._call(self._keys([frame, prev_frame]), self._stage.process_last, frame, prev_frame, flow_prev, prev_depth)


class CachedCueStages(CueStages):
    """Cue stages whose results are remembered per batch of frames (benchmarks that label the
    same corpus with many labeling variants compute the cues once). The engines cut batches
    identically on every run, so every lookup after the first run hits."""

    def __init__(self, stages: CueStages):
        memo: dict = {}
        super().__init__(_Memo(stages.flow, memo, "flow"), _Memo(stages.depth, memo, "depth"),
                         _Memo(stages.features, memo, "features"))
        self._inner = stages

    def setup(self, device: str | None = None) -> None:
        self._inner.setup(device)

    def teardown(self) -> None:
        self._inner.teardown()
