"""The estimator interface shared by flow, depth and feature backends, and input checks.

Every estimator is built cheaply from its config section, loads its weights once in
``setup(device)`` (inside the actor that owns it) and is then called on a batch of frames.
It declares ``requires_gpu`` and ``memory_bytes`` as data so the actor layer can place it
without running it.

Frames reach an estimator as an ``N x H x W x 3`` uint8 RGB array or as a sequence of
:class:`~videocups_ray.data.types.Frame` (the oracle backends need the ``Frame`` objects,
because that is where the SynthDrive ground truth lives).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from videocups_ray.data.types import DataError, Frame

FrameBatch = np.ndarray | Sequence[Frame]


class Estimator:
    """Base of every cue estimator.

    Subclasses set ``requires_gpu`` / ``memory_bytes`` in ``__init__`` and do their heavy
    work (weights, compiled objects) in ``setup``. Calling before ``setup`` runs ``setup("cpu")``
    implicitly for weight-free backends only; learned backends raise.
    """

    name: str = "estimator"
    requires_gpu: bool = False
    memory_bytes: int = 0

    def __init__(self) -> None:
        self.device: str | None = None

    def setup(self, device: str = "cpu") -> None:
        """Load weights / build heavy state on ``device``; idempotent."""
        self.device = device

    def teardown(self) -> None:
        """Release heavy state; ``setup`` may be called again afterwards."""
        self.device = None

    def reset(self) -> None:
        """Forget per-video state (a new video starts). Stateless estimators do nothing."""

    def _ensure_setup(self) -> None:
        if self.device is None:
            self.setup("cpu")


@dataclass
class FlowResult:
    """Forward (t->t+1) and backward (t+1->t) flow in pixels, and their occlusion masks.

    ``fw``/``bw`` are float32 ``N x H x W x 2`` (x, y); ``occlusion`` (bool ``N x H x W``) is
    True where a pixel of frame t has no reliable correspondence in t+1; ``occlusion_bw`` the
    same for pixels of frame t+1 looking back to t.
    """

    fw: np.ndarray
    bw: np.ndarray
    occlusion: np.ndarray
    occlusion_bw: np.ndarray

    def __len__(self) -> int:
        return int(self.fw.shape[0])

    def item(self, i: int) -> "FlowResult":
        """The i-th pair as a batch of one."""
        return FlowResult(self.fw[i : i + 1], self.bw[i : i + 1], self.occlusion[i : i + 1],
                          self.occlusion_bw[i : i + 1])


@dataclass
class DepthResult:
    """``depth``: float32 ``N x H x W`` z-depth in metres (> 0, clipped at the configured max);
    ``motion_prob``: float32 ``N x H x W`` in [0, 1], probability a pixel moves independently
    of the camera; ``valid``: bool ``N x H x W``, False where the depth is a fill-in
    (no parallax, no correspondence) rather than a measurement."""

    depth: np.ndarray
    motion_prob: np.ndarray
    valid: np.ndarray


@dataclass
class FeatureResult:
    """Per-pixel features at label resolution, float32 ``N x C x h x w``, L2-normalised over C.

    ``high``: the full-resolution pass (``P_high``, sliding crops for ViTs); ``low``: the
    half-resolution whole-image pass averaged with its horizontal flip (``P_low``).
    """

    high: np.ndarray
    low: np.ndarray

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in ("high", "low"):
            raise KeyError(f"feature pass {key!r} does not exist; use 'high' or 'low'")
        return self.high if key == "high" else self.low


def as_images(batch: FrameBatch, what: str = "frames") -> np.ndarray:
    """Return ``batch`` as a contiguous ``N x H x W x 3`` uint8 array, checking it.

    Raises :class:`DataError` naming the offending frame for: an empty batch, frames of
    different sizes, a wrong dtype or channel count, or non-finite values in a float input.
    """
    if isinstance(batch, np.ndarray):
        arr = batch
        names = [f"{what}[{i}]" for i in range(arr.shape[0])] if arr.ndim == 4 else []
    else:
        frames = list(batch)
        if not frames:
            raise DataError(f"{what}: empty batch")
        names = []
        for i, f in enumerate(frames):
            if not isinstance(f, Frame):
                raise DataError(f"{what}[{i}]: expected a Frame or an NxHxWx3 array, got {type(f).__name__}")
            names.append(f"{f.video_id} frame {f.frame_index}")
        shapes = {f.image.shape for f in frames}
        if len(shapes) > 1:
            listing = ", ".join(f"{n}: {f.image.shape}" for n, f in zip(names, frames))
            raise DataError(f"{what}: frames of different sizes in one batch ({listing})")
        arr = np.stack([f.image for f in frames])
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise DataError(f"{what}: expected N x H x W x 3 RGB, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise DataError(f"{what}: empty batch")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.number):
            raise DataError(f"{what}: dtype {arr.dtype} is not numeric")
        bad = ~np.isfinite(arr).reshape(arr.shape[0], -1).all(axis=1)
        if bad.any():
            raise DataError(f"{names[int(np.argmax(bad))]}: image contains NaN or Inf")
        if arr.min() < 0 or arr.max() > 255:
            raise DataError(f"{what}: values outside [0, 255] in a {arr.dtype} image")
        arr = np.rint(arr).astype(np.uint8)
    return np.ascontiguousarray(arr)


def check_pair(images_t: np.ndarray, images_t1: np.ndarray) -> None:
    """Frames t and t+1 must pair up one to one, with equal sizes."""
    if images_t.shape != images_t1.shape:
        raise DataError(
            f"frame pairs do not match: frames_t has shape {images_t.shape}, frames_t1 {images_t1.shape}"
            " (flow needs a next frame of the same size for every frame; a single-frame video has no flow)"
        )


def as_frames(batch: FrameBatch, what: str, backend: str) -> list[Frame]:
    """Oracle backends need the ``Frame`` objects (ground truth lives there)."""
    if isinstance(batch, np.ndarray):
        raise DataError(f"{backend}: {what} must be Frame objects carrying ground truth, got an array")
    frames = list(batch)
    as_images(frames, what)
    return frames


def default_intrinsics(height: int, width: int, focal: float | None, focal_scale: float) -> np.ndarray:
    """A pinhole K with the principal point at the image centre.

    ``focal`` in pixels wins when given; otherwise ``focal_scale * width`` (SynthDrive's convention).
    """
    f = float(focal) if focal else float(focal_scale) * width
    return np.array([[f, 0.0, (width - 1) / 2.0], [0.0, f, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def intrinsics_of(batch: FrameBatch, height: int, width: int, focal: float | None,
                  focal_scale: float, K: np.ndarray | None = None) -> np.ndarray:
    """K for a batch: the explicit ``K`` if passed, else ``Frame.extra["K"]``, else the default."""
    if K is not None:
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise DataError(f"intrinsics K must be a finite 3x3 with positive focal lengths, got {K!r}")
        return K
    if not isinstance(batch, np.ndarray):
        frames = list(batch)
        if frames and "K" in frames[0].extra:
            return intrinsics_of(frames, height, width, focal, focal_scale, frames[0].extra["K"])
    return default_intrinsics(height, width, focal, focal_scale)
