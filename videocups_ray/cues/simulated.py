"""``backend: simulated``: a load generator standing in for GPU cue models, for benchmarks and tests.

It exists to measure orchestration (scheduling, batching, backpressure, scaling over many
replicas and nodes) on machines without GPUs and with few cores. Never a default, never a
labeling method: its numbers say nothing about pseudo-label quality.

- **Cost without CPU.** Each call sleeps ``cost_ms`` per frame pair (flow) or frame (depth,
  features), the way a GPU kernel leaves its host thread idle. So 2 cores can host 16 "GPU"
  replicas, and what remains visible is the system's own overhead and serial points.
- **Deterministic, checkable output.** The cues are SynthDrive's ground truth ("oracle cues",
  as the ``oracle`` backends give them): ground-truth flow with its validity as occlusion,
  ground-truth depth and independent-motion mask, and features made from the ground-truth
  semantic classes. Labels made from them can be checked against the ground truth, and the same
  frames give the same cues on every replica and node. Frames without that ground truth (real
  video) are an error naming the frame, as for the oracle backends.

Features: a one-hot of the frame's semantic class (``SIMULATED_CLASSES`` channels: the 19
Cityscapes train IDs and void) at ``1/stride`` resolution, plus a small fixed noise seeded by the
video and frame (``feature_noise``) so k-means with more clusters than classes has distinct points
to split; both passes (``high``, ``low``) are the same array. L2-normalised like every feature.
"""

from __future__ import annotations

import time
import zlib

import cv2
import numpy as np

from videocups_ray.config import DepthConfig, FeatureConfig, FlowConfig
from videocups_ray.cues.base import (
    DepthResult,
    Estimator,
    FeatureResult,
    FlowResult,
    FrameBatch,
    as_frames,
)
from videocups_ray.cues.depth import OracleDepth
from videocups_ray.cues.flow import OracleFlow
from videocups_ray.data.types import DataError

SIMULATED_CLASSES = 20  # Cityscapes train IDs 0..18, and void (255) as channel 19
FEATURE_NOISE = 0.05  # std of the seeded noise added to the one-hot features (before L2 norm)


def spend(cost_ms: float, units: int) -> float:
    """Sleep ``cost_ms`` per unit of work (no CPU used); returns the seconds slept."""
    seconds = max(0.0, cost_ms) * units / 1000.0
    if seconds > 0:
        time.sleep(seconds)
    return seconds


class SimulatedFlow(Estimator):
    """Ground-truth flow after sleeping ``cost_ms`` per frame pair."""

    name = "simulated"

    def __init__(self, cost_ms: float) -> None:
        super().__init__()
        if not cost_ms >= 0:
            raise ValueError(f"SimulatedFlow: cost_ms must be >= 0, got {cost_ms}")
        self.cost_ms = float(cost_ms)
        self._oracle = OracleFlow()

    @classmethod
    def from_config(cls, cfg: FlowConfig) -> "SimulatedFlow":
        return cls(cfg.cost_ms)

    def __call__(self, frames_t: FrameBatch, frames_t1: FrameBatch) -> FlowResult:
        self._ensure_setup()
        out = self._oracle(frames_t, frames_t1)  # checks the frames before any time is spent
        spend(self.cost_ms, len(out))
        return out


class SimulatedDepth(Estimator):
    """Ground-truth depth and motion mask after sleeping ``cost_ms`` per frame."""

    name = "simulated"

    def __init__(self, cfg: DepthConfig) -> None:
        super().__init__()
        self.cost_ms = float(cfg.cost_ms)
        self._oracle = OracleDepth(cfg)

    @classmethod
    def from_config(cls, cfg: DepthConfig) -> "SimulatedDepth":
        return cls(cfg)

    def __call__(self, frames_t: FrameBatch, frames_t1: FrameBatch | None = None,
                 flow: FlowResult | None = None, K: np.ndarray | None = None) -> DepthResult:
        self._ensure_setup()
        out = self._oracle(frames_t)
        spend(self.cost_ms, out.depth.shape[0])
        return out


def semantic_features(semantic: np.ndarray, out_hw: tuple[int, int], seed: int,
                      noise: float = FEATURE_NOISE) -> np.ndarray:
    """``SIMULATED_CLASSES x h x w`` float32: one-hot semantic class (area-pooled to ``out_hw``)
    plus seeded Gaussian noise, L2-normalised per pixel. ``semantic`` is uint8 with 255 = void."""
    sem = np.asarray(semantic)
    idx = np.where(sem == 255, SIMULATED_CLASSES - 1, sem).astype(np.int64)
    if idx.min() < 0 or idx.max() >= SIMULATED_CLASSES:
        raise DataError(f"simulated features: semantic class {int(idx.max())} outside 0..18 and 255")
    onehot = np.zeros(sem.shape + (SIMULATED_CLASSES,), np.float32)
    np.put_along_axis(onehot, idx[..., None], 1.0, axis=-1)
    pooled = cv2.resize(onehot, out_hw[::-1], interpolation=cv2.INTER_AREA).reshape(*out_hw, SIMULATED_CLASSES)
    pooled += np.random.default_rng(seed).normal(0.0, noise, pooled.shape).astype(np.float32)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-6)
    return np.ascontiguousarray(pooled.transpose(2, 0, 1))


class SimulatedFeatures(Estimator):
    """Features from the ground-truth semantics after sleeping ``cost_ms`` per frame."""

    name = "simulated"

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cost_ms = float(cfg.cost_ms)
        self.channels = SIMULATED_CLASSES

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> "SimulatedFeatures":
        return cls(cfg)

    def __call__(self, frames: FrameBatch, depth: np.ndarray | None = None,
                 K: np.ndarray | None = None) -> FeatureResult:
        self._ensure_setup()
        fs = as_frames(frames, "frames", "simulated features")
        out = []
        for f in fs:
            if f.semantic is None:
                raise DataError(f"simulated features: {f.video_id} frame {f.frame_index} has no "
                                "ground-truth semantics (the simulated backend needs SynthDrive frames)")
            h, w = f.shape
            seed = zlib.crc32(f"{f.video_id}/{f.frame_index}".encode())
            out.append(semantic_features(f.semantic, (max(1, h // self.cfg.stride), max(1, w // self.cfg.stride)), seed))
        high = np.stack(out)
        spend(self.cost_ms, len(fs))
        return FeatureResult(high=high, low=high.copy())
