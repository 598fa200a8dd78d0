"""Per-pixel features for semantic clustering, at label resolution (1/stride of the image).

Backends (``FeatureConfig.backend``):

- ``handmade`` (default, weight-free): colour in CIE Lab, local texture energy (Gaussian
  derivative and Laplacian-of-Gaussian responses at three scales), image height, log depth and
  the surface orientation computed from depth; each group has a fixed offset and weight so a
  feature means the same thing in every frame, and the vector is L2-normalised.
- ``dino``: a DINO ViT (``cues.vit``) from a local checkpoint.

Both return a :class:`FeatureResult` with the two passes the semantic step fuses: ``high``
(full resolution) and ``low`` (half resolution, averaged with the horizontal flip).
"""

from __future__ import annotations

import cv2
import numpy as np

from videocups_ray.config import FeatureConfig
from videocups_ray.cues.base import Estimator, FeatureResult, FrameBatch, as_images, default_intrinsics
from videocups_ray.data.types import DataError

# weights of the descriptor groups (chosen on SynthDrive seeds the tests do not use, see
# benchmarks/bench_cues.py); larger = that cue dominates the cosine distance
_W_COLOUR = 1.0
_W_TEXTURE = 0.6
_W_HEIGHT = 1.0
_W_DEPTH = 0.6
_W_NORMAL = 1.0
_NO_DEPTH_LOG = np.log(80.0)  # log-metres used when no depth is given (far)


def _check_depth(depth: np.ndarray | None, n: int, h: int, w: int) -> np.ndarray | None:
    if depth is None:
        return None
    depth = np.asarray(depth, dtype=np.float32)
    if depth.shape != (n, h, w):
        raise DataError(f"features: depth of shape {depth.shape} does not match {n} frames of {(h, w)}")
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)


def _normals(depth: np.ndarray, focal: float) -> np.ndarray:
    """Unit surface normals (camera frame, H x W x 3) from a depth map by central differences."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    x = (u - (w - 1) / 2) / focal * depth
    y = (v - (h - 1) / 2) / focal * depth
    pts = np.stack([x, y, depth], axis=-1).astype(np.float32)
    du = cv2.Sobel(pts, cv2.CV_32F, 1, 0, ksize=3)
    dv = cv2.Sobel(pts, cv2.CV_32F, 0, 1, ksize=3)
    n = np.cross(du, dv)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(norm > 1e-9, n / np.maximum(norm, 1e-9), 0.0)
    return n * np.where(n[..., 2:3] > 0, -1.0, 1.0)  # face the camera


def handmade_descriptor(image: np.ndarray, depth: np.ndarray | None, out_hw: tuple[int, int],
                        focal: float) -> np.ndarray:
    """``C x h x w`` float32 descriptor of one RGB uint8 image (see module doc), L2-normalised."""
    h, w = out_hw
    H, W = image.shape[:2]
    small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    colour = np.stack([(lab[..., 0] - 50.0) / 50.0, lab[..., 1] / 40.0, lab[..., 2] / 40.0], axis=-1)

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    tex = []
    for sigma in (1.0, 2.0, 4.0):
        g = cv2.GaussianBlur(grey, (0, 0), sigma)
        gx = np.abs(cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3))
        gy = np.abs(cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3))
        lap = np.abs(cv2.Laplacian(g, cv2.CV_32F, ksize=3))
        for r in (gx, gy, lap):
            energy = cv2.resize(cv2.GaussianBlur(r, (0, 0), 2.0 * sigma), (w, h), interpolation=cv2.INTER_AREA)
            tex.append(np.log1p(20.0 * energy) - 0.5)
    texture = np.stack(tex, axis=-1) / np.sqrt(len(tex) / 3.0)

    rows = (np.arange(h, dtype=np.float32) + 0.5) / h
    height = np.broadcast_to(((rows - 0.5) * 2.0)[:, None, None], (h, w, 1))

    if depth is not None:
        d_small = cv2.resize(depth, (w, h), interpolation=cv2.INTER_NEAREST)
        logd = np.where(d_small > 0, np.log(np.maximum(d_small, 1e-3)), _NO_DEPTH_LOG)
        depth_f = ((logd - 2.5) / 1.5)[..., None]
        normal = _normals(np.where(d_small > 0, d_small, 80.0).astype(np.float32), focal * w / W)
    else:
        depth_f = np.zeros((h, w, 1), np.float32)
        normal = np.zeros((h, w, 3), np.float32)

    feat = np.concatenate([
        _W_COLOUR * colour, _W_TEXTURE * texture, _W_HEIGHT * height, _W_DEPTH * depth_f, _W_NORMAL * normal,
    ], axis=-1).astype(np.float32)
    norm = np.linalg.norm(feat, axis=-1, keepdims=True)
    feat = feat / np.maximum(norm, 1e-6)
    return np.ascontiguousarray(feat.transpose(2, 0, 1))


def _l2n(x: np.ndarray, axis: int = 1) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-6)).astype(np.float32)


class HandmadeFeatures(Estimator):
    """Weight-free per-pixel descriptor (see module doc). ``C = 17``.

    An all-black frame gives finite features (colour and height only), never NaN.
    """

    name = "handmade"
    channels = 17

    def __init__(self, cfg: FeatureConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.requires_gpu = False
        self.memory_bytes = 256 * 1024**2

    @classmethod
    def from_config(cls, cfg: FeatureConfig) -> "HandmadeFeatures":
        return cls(cfg)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        s = self.cfg.stride
        return max(1, height // s), max(1, width // s)

    def __call__(self, frames: FrameBatch, depth: np.ndarray | None = None,
                 K: np.ndarray | None = None) -> FeatureResult:
        self._ensure_setup()
        img = as_images(frames, "frames")
        n, H, W = img.shape[:3]
        depth = _check_depth(depth, n, H, W)
        out_hw = self.output_size(H, W)
        focal = float(K[0, 0]) if K is not None else default_intrinsics(H, W, None, self.cfg.focal_scale)[0, 0]
        high, low = [], []
        for i in range(n):
            d = None if depth is None else depth[i]
            high.append(handmade_descriptor(img[i], d, out_hw, focal))
            half_hw = (max(1, H // 2), max(1, W // 2))
            small = cv2.resize(img[i], half_hw[::-1], interpolation=cv2.INTER_AREA)
            d_small = None if d is None else cv2.resize(d, half_hw[::-1], interpolation=cv2.INTER_NEAREST)
            low_hw = (max(1, out_hw[0] // 2), max(1, out_hw[1] // 2))
            a = handmade_descriptor(small, d_small, low_hw, focal / 2)
            b = handmade_descriptor(small[:, ::-1].copy(), None if d_small is None else d_small[:, ::-1].copy(),
                                    low_hw, focal / 2)
            b = b[:, :, ::-1].copy()
            b[-3] *= -1  # the normal's x component changes sign under a horizontal flip
            avg = (a + b) / 2
            low.append(cv2.resize(avg.transpose(1, 2, 0), out_hw[::-1], interpolation=cv2.INTER_LINEAR)
                       .reshape(out_hw[0], out_hw[1], -1).transpose(2, 0, 1))
        return FeatureResult(high=_l2n(np.stack(high)), low=_l2n(np.stack(low)))


def build_features(cfg: FeatureConfig) -> Estimator:
    """The feature estimator named by ``cfg.backend`` (not yet set up)."""
    if cfg.backend == "handmade":
        return HandmadeFeatures.from_config(cfg)
    if cfg.backend == "dino":
        from videocups_ray.cues.vit import DinoFeatures

        return DinoFeatures.from_config(cfg)
    raise ValueError(f"unknown feature backend {cfg.backend!r}; known: handmade, dino")
