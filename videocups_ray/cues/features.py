"""Per-pixel features for semantic clustering, at label resolution (1/stride of the image).

Backends (``FeatureConfig.backend``):

- ``handmade`` (default, weight-free): groups of channels, each z-scored over the frame and
  divided by the square root of its size so every group adds the same expected energy to the
  cosine (then scaled by its ``FeatureConfig.weight_*``):

  * colour: CIE Lab per pixel, and its Gaussian context at ``context_sigmas``;
  * texture: log energy of x/y derivatives and the Laplacian at three scales, and its context;
  * position: the image row (driving scenes are layered top to bottom);
  * geometry (zero without depth): log depth, height ``Y`` below the optical centre in metres
    (constant over a level ground, so road is one cluster rather than depth bands), both also
    at region scale, the surface slope (vertical vs horizontal, from how Y and depth change
    down the image) at two scales, and invalid depth (sky);
  * geometric class evidence (issue 13, each its own balanced group, zero unless its
    ``weight_*`` is set; :func:`_evidence`): height above a ground plane fitted to the depth,
    depth-derived surface normals (horizontal road vs vertical facades), sky (no valid depth
    or far clip, towards the top), and the column's distance from the image centre.

  * depth-guided aggregation (``depth_guide_sigma > 0``; DepthG-style fusion of depth into the
    feature correlation, without a learned head): the colour/texture context and the final
    smoothing become joint-bilateral, weighted by ``exp(-(log d_x - log d_y)^2 / 2 s^2)``, so
    a pixel pools appearance from its own surface (road under a car, not the car; a facade,
    not the sky above it) and features of pixels at similar depth correlate (:func:`guided_blur`).

  Per-frame z-scoring (a diagonal whitening) makes exposure and scene-wide colour casts cancel;
  a pixel's vector is then smoothed over ``smooth_sigma`` (semantics is regional, the per-pixel
  texture is noisy) and L2-normalised. All channels are scalars that a horizontal flip only
  mirrors, which the flip-averaged low pass relies on.
- ``dino``: a DINO ViT (``cues.vit``) from a local checkpoint.

Both return a :class:`FeatureResult` with the two passes the semantic step fuses: ``high``
(full resolution) and ``low`` (half resolution, averaged with the horizontal flip).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from videocups_ray.cues import geometry as geo
from videocups_ray.cues.base import Estimator, FeatureResult, FrameBatch, as_images, intrinsics_of
from videocups_ray.data.types import DataError

if TYPE_CHECKING:  # config types only: the pure path imports without pydantic (gpu_check.py)
    from videocups_ray.config import CameraConfig, FeatureConfig


def _default_camera() -> "CameraConfig":
    """The default camera section, imported late: the pure path imports without pydantic."""
    from videocups_ray.config import CameraConfig

    return CameraConfig()

_TEXTURE_CHANNELS = 9  # (dx^2, dy^2, laplacian^2) x 3 scales
_GEOMETRY_CHANNELS = 7
_EVIDENCE_CHANNELS = {"height": 4, "normal": 4, "sky": 3}  # depth-derived class evidence (issue 13)
_NEAR_GROUND_M = 0.3  # metres; height scale of the "on the ground" channel (kerbs are ~0.15 m)
_NO_DEPTH_M = 80.0  # metres assumed where depth is invalid (sky, unmatched pixels)
_EPS_STD = 1e-3  # a channel whose per-frame std is below this is constant: it becomes 0


def uses_evidence(cfg: FeatureConfig) -> bool:
    """Whether the descriptor carries the geometric-evidence channels (any of their weights > 0)."""
    return any(getattr(cfg, f"weight_{p}") > 0 for p in _EVIDENCE_CHANNELS)


def descriptor_channels(context_sigmas: Sequence[float], evidence: bool = False) -> int:
    """Number of channels of :func:`handmade_descriptor` for the given context radii, with or
    without the geometric-evidence channels (:func:`uses_evidence`)."""
    return (3 + _TEXTURE_CHANNELS + (3 + _TEXTURE_CHANNELS) * len(context_sigmas) + 1 + 1 + _GEOMETRY_CHANNELS
            + (sum(_EVIDENCE_CHANNELS.values()) if evidence else 0))


def _check_depth(depth: np.ndarray | None, n: int, h: int, w: int) -> np.ndarray | None:
    if depth is None:
        return None
    depth = np.asarray(depth, dtype=np.float32)
    if depth.shape != (n, h, w):
        raise DataError(f"features: depth of shape {depth.shape} does not match {n} frames of {(h, w)}")
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(x, (0, 0), sigma) if sigma > 0 else x


def guided_blur(x: np.ndarray, guide: np.ndarray | None, sigma: float, range_sigma: float) -> np.ndarray:
    """Joint-bilateral Gaussian of ``x`` (h x w [x c]) guided by ``guide`` (h x w, log depth).

    Piecewise-linear approximation (Durand & Dorsey 2002): the guide's range is cut into levels
    ``range_sigma`` apart; at each level a normalised Gaussian of ``x`` weighted by the range
    kernel, and every pixel linearly interpolates the two levels around its own guide value.
    Cost: one spatial blur of ``c + 1`` channels per level (<= 8, so levels may be wider than ``range_sigma``). ``guide`` None or
    ``range_sigma`` 0: the plain Gaussian.
    """
    if guide is None or not range_sigma > 0 or not sigma > 0:
        return _blur(x, sigma)
    g = guide.astype(np.float32)
    lo, hi = float(g.min()), float(g.max())
    levels = int(min(8, max(2, np.ceil((hi - lo) / range_sigma) + 1)))
    step = max((hi - lo) / (levels - 1), 1e-6)
    x3 = x.reshape(*x.shape[:2], -1).astype(np.float32)
    out = np.zeros_like(x3)
    for c in lo + step * np.arange(levels, dtype=np.float32):
        w = np.exp(-0.5 * ((g - c) / range_sigma) ** 2).astype(np.float32)
        num = _blur(x3 * w[..., None], sigma).reshape(x3.shape)
        den = _blur(w, sigma)
        tent = np.maximum(0.0, 1.0 - np.abs(g - c) / step).astype(np.float32)
        out += (tent / np.maximum(den, 1e-6))[..., None] * num
    return out.reshape(x.shape)


def _with_context(x: np.ndarray, sigmas: Sequence[float], guide: np.ndarray | None = None,
                  range_sigma: float = 0.0) -> np.ndarray:
    """``x`` (h x w x c) blurred at every radius (depth-guided when ``guide`` is given and
    ``range_sigma > 0``), concatenated on the channel axis (h x w x c*len)."""
    if not sigmas:
        return np.zeros((*x.shape[:2], 0), np.float32)
    return np.concatenate([guided_blur(x, guide, s, range_sigma).reshape(*x.shape[:2], -1) for s in sigmas],
                          axis=-1)


def _log_depth_guide(depth: np.ndarray | None, out_hw: tuple[int, int], max_depth: float) -> np.ndarray | None:
    """Log depth pooled to ``out_hw`` (invalid = ``max_depth``): the range guide of :func:`guided_blur`."""
    if depth is None:
        return None
    h, w = out_hw
    d = cv2.resize(depth, (w, h), interpolation=cv2.INTER_AREA)
    return np.log(np.clip(np.where(d > 0, d, max_depth), 0.5, max_depth)).astype(np.float32)


def _colour(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    h, w = out_hw
    small = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(small.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def _texture(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Log energy of Gaussian-derivative and Laplacian responses, pooled to ``out_hw``.

    Scales: the input resolution (sigma 1) and twice the output resolution (sigma 1 and 2), so
    the cost stays bounded at any stride.
    """
    h, w = out_hw
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    grey2 = cv2.resize(grey, (2 * w, 2 * h), interpolation=cv2.INTER_AREA)
    tex = []
    for src, sigma in ((grey, 1.0), (grey2, 1.0), (grey2, 2.0)):
        g = _blur(src, sigma)
        gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3)
        lap = cv2.Laplacian(g, cv2.CV_32F, ksize=3)
        for r in (gx * gx, gy * gy, lap * lap):
            tex.append(np.log(1e-4 + cv2.resize(r, (w, h), interpolation=cv2.INTER_AREA)))
    return np.stack(tex, axis=-1)


def _geometry(depth: np.ndarray, out_hw: tuple[int, int], K: np.ndarray, region_sigma: float) -> np.ndarray:
    """Depth-derived channels (see module doc) at ``out_hw``; ``K`` is for the depth's resolution."""
    h, w = out_hw
    H, W = depth.shape
    d = cv2.resize(depth, (w, h), interpolation=cv2.INTER_AREA)
    invalid = ~(d > 0)
    d = np.where(invalid, _NO_DEPTH_M, d).astype(np.float32)
    fy = float(K[1, 1]) * h / H
    cy = (float(K[1, 2]) + 0.5) * h / H - 0.5
    rows = np.arange(h, dtype=np.float32)[:, None]
    y_m = ((rows - cy) / fy * d).astype(np.float32)  # metres below the optical centre
    log_d = np.log(np.maximum(d, 0.5))
    # slope: 0 where Y changes and depth does not down the image (vertical surface), pi/2 where
    # depth changes and Y does not (horizontal surface)
    dy_dv = cv2.Sobel(_blur(y_m, 1.5), cv2.CV_32F, 0, 1, ksize=3)
    dz_dv = cv2.Sobel(_blur(d, 1.5), cv2.CV_32F, 0, 1, ksize=3)
    slope = np.arctan2(np.abs(dz_dv), np.abs(dy_dv) + 1e-6)
    channels = [log_d, np.tanh(y_m / 2.0), _blur(log_d, region_sigma), np.tanh(_blur(y_m, region_sigma) / 2.0),
                _blur(slope, 1.0), _blur(slope, region_sigma), invalid.astype(np.float32)]
    return np.stack(channels, axis=-1)


def _evidence(depth: np.ndarray, out_hw: tuple[int, int], K: np.ndarray, region_sigma: float,
              max_depth: float) -> dict[str, np.ndarray]:
    """Class evidence from the scene's geometry (issue 13), each part ``h x w x c``:

    - ``height``: metres above a ground plane fitted (RANSAC, near-level normal) to the lower
      half's back-projected points, as ``tanh(h / 2)`` and "on the ground" ``exp(-(h / 0.3)^2)``
      (road and sidewalk vs cars, poles, facades), each also at region scale. Without a plane
      the camera's own level plane through the 90th percentile of Y is used.
    - ``normal``: depth-derived surface normals: how horizontal (``|n . ground|``: road 1,
      facades 0) and how sideways-facing (``|n_x|``: facades along the road), pixel and region.
    - ``sky``: no valid depth or depth at the far clip (no parallax), that mask at region scale,
      and the mask weighted towards the top of the frame.
    ``K`` is for the depth's resolution; depth is pooled to ``out_hw`` by area.
    """
    h, w = out_hw
    H, W = depth.shape
    d = cv2.resize(depth, (w, h), interpolation=cv2.INTER_AREA)
    far = ~(d > 0) | (d >= 0.95 * max_depth)
    Ks = K.astype(np.float64).copy()
    Ks[0, :] *= w / W
    Ks[1, :] *= h / H
    pts = geo.back_project(np.where(d > 0, d, max_depth).astype(np.float32), Ks)
    low = pts[h // 2:][~far[h // 2:]]
    plane = None
    if len(low) >= 20:
        sub = low[np.random.default_rng(0).choice(len(low), min(len(low), 2000), replace=False)]
        plane = geo.fit_ground_plane(sub.astype(np.float64), np.random.default_rng(1))
    if plane is None:
        ys = low[:, 1] if len(low) else np.zeros(1, np.float32)
        plane = geo.Plane(n=np.array([0.0, 1.0, 0.0]), height=float(np.percentile(ys, 90)) or 1.0)
    n_g = np.asarray(plane.n, np.float32)
    height = np.where(far, 0.0, plane.height - pts @ n_g).astype(np.float32)
    tanh_h = np.tanh(height / 2.0)
    ground = np.where(far, 0.0, np.exp(-(height / _NEAR_GROUND_M) ** 2)).astype(np.float32)
    normals = geo.surface_normals(pts, 1.5)
    horiz = np.where(far, 0.0, np.abs(normals @ n_g)).astype(np.float32)
    side = np.where(far, 0.0, np.abs(normals[..., 0])).astype(np.float32)
    sky = far.astype(np.float32)
    top = np.broadcast_to((1.0 - (np.arange(h, dtype=np.float32) + 0.5) / h)[:, None], (h, w))
    return {
        "height": np.stack([tanh_h, _blur(tanh_h, region_sigma), ground, _blur(ground, region_sigma)], -1),
        "normal": np.stack([horiz, _blur(horiz, region_sigma), side, _blur(side, region_sigma)], -1),
        "sky": np.stack([sky, _blur(sky, region_sigma), sky * top], -1),
    }


def _balanced(x: np.ndarray, weight: float) -> np.ndarray:
    """Z-score every channel over the frame, then scale the group to ``weight`` expected norm."""
    flat = x.reshape(-1, x.shape[-1])
    mean, std = flat.mean(axis=0), flat.std(axis=0)
    # a (near-)constant channel carries nothing: exactly 0, or rounding noise would be blown up
    scale = np.where(std > _EPS_STD, weight / np.sqrt(max(x.shape[-1], 1)) / np.maximum(std, _EPS_STD), 0.0)
    return (x - mean) * scale.astype(np.float32)


def handmade_descriptor(image: np.ndarray, depth: np.ndarray | None, out_hw: tuple[int, int],
                        K: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """``C x h x w`` float32 descriptor of one RGB uint8 image (see module doc), L2-normalised.

    ``depth`` is metres (0 = invalid) or None, at any resolution; ``K`` is for the depth's resolution
    (it is pooled to ``out_hw`` by area).
    ``C = descriptor_channels(cfg.context_sigmas, uses_evidence(cfg))`` whether or not depth is given.
    """
    h, w = out_hw
    sig = tuple(cfg.context_sigmas)
    colour = _colour(image, out_hw)
    texture = _texture(image, out_hw)
    rows = ((np.arange(h, dtype=np.float32) + 0.5) / h - 0.5) * 2.0
    position = np.broadcast_to(rows[:, None, None], (h, w, 1))
    # distance from the vertical centre line (flip-invariant): kerbs, facades and vegetation
    # line the sides of a road scene
    cols = np.abs(((np.arange(w, dtype=np.float32) + 0.5) / w - 0.5) * 2.0)
    column = np.broadcast_to(cols[None, :, None], (h, w, 1))
    guide = _log_depth_guide(depth, out_hw, cfg.max_depth) if cfg.depth_guide_sigma > 0 else None
    rs = cfg.depth_guide_sigma
    groups = [(colour, cfg.weight_colour), (_with_context(colour, sig, guide, rs), cfg.weight_colour),
              (texture, cfg.weight_texture), (_with_context(texture, sig, guide, rs), cfg.weight_texture),
              (position, cfg.weight_position), (column, cfg.weight_column)]
    if depth is not None:
        region = max(sig) if sig else 4.0
        groups.append((_geometry(depth, out_hw, K, region), cfg.weight_geometry))
        if uses_evidence(cfg):  # all off: no channels at all (k-means and labeling cost scale with C)
            ev = _evidence(depth, out_hw, K, region, cfg.max_depth)
            groups += [(ev[p], getattr(cfg, f"weight_{p}")) for p in _EVIDENCE_CHANNELS]
    parts = [_balanced(x.astype(np.float32), wt) for x, wt in groups if x.shape[-1]]
    if depth is None:
        extra = sum(_EVIDENCE_CHANNELS.values()) if uses_evidence(cfg) else 0
        parts.append(np.zeros((h, w, _GEOMETRY_CHANNELS + extra), np.float32))
    feat = guided_blur(np.concatenate(parts, axis=-1).astype(np.float32), guide, cfg.smooth_sigma, rs)
    feat = feat.reshape(h, w, -1)
    feat /= np.maximum(np.linalg.norm(feat, axis=-1, keepdims=True), 1e-6)
    return np.ascontiguousarray(feat.transpose(2, 0, 1))


def _l2n(x: np.ndarray, axis: int = 1) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-6)).astype(np.float32)


class HandmadeFeatures(Estimator):
    """Weight-free per-pixel descriptor (see module doc); ``channels`` depends on ``context_sigmas``
    (45 channels for the default two radii, 56 with the geometric evidence on).

    An all-black frame gives finite features (image row only), never NaN.
    """

    name = "handmade"

    def __init__(self, cfg: FeatureConfig, camera: CameraConfig | None = None) -> None:
        super().__init__()
        self.camera = camera if camera is not None else _default_camera()
        bad = [s for s in cfg.context_sigmas if not s > 0]
        if bad:
            raise ValueError(f"FeatureConfig.context_sigmas must be positive feature-map pixels, got {bad}")
        self.cfg = cfg
        self.channels = descriptor_channels(cfg.context_sigmas, uses_evidence(cfg))
        self.requires_gpu = False
        self.memory_bytes = 256 * 1024**2

    @classmethod
    def from_config(cls, cfg: FeatureConfig, camera: CameraConfig | None = None) -> "HandmadeFeatures":
        return cls(cfg, camera)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        s = self.cfg.stride
        return max(1, height // s), max(1, width // s)

    def __call__(self, frames: FrameBatch, depth: np.ndarray | None = None,
                 K: np.ndarray | None = None) -> FeatureResult:
        self._ensure_setup()
        img = as_images(frames, "frames")
        n, H, W = img.shape[:3]
        depth = _check_depth(depth, n, H, W)
        K = intrinsics_of(frames, H, W, self.camera.focal, self.camera.focal_scale, K)
        out_hw = self.output_size(H, W)
        half_hw = (max(1, H // 2), max(1, W // 2))
        low_hw = (max(1, out_hw[0] // 2), max(1, out_hw[1] // 2))
        K_flip = K.copy()
        K_flip[0, 2] = W - 1 - K[0, 2]
        high, low = [], []
        for i in range(n):
            d = None if depth is None else depth[i]
            high.append(handmade_descriptor(img[i], d, out_hw, K, self.cfg))
            # the low pass sees a half-resolution image; depth stays at full resolution (with its
            # K), since the descriptor pools it by area itself and nearest halving is not mirror-symmetric
            small = cv2.resize(img[i], half_hw[::-1], interpolation=cv2.INTER_AREA)
            a = handmade_descriptor(small, d, low_hw, K, self.cfg)
            # every channel is a flip-invariant scalar field, so mirroring back is all it takes
            b = handmade_descriptor(small[:, ::-1].copy(), None if d is None else d[:, ::-1].copy(),
                                    low_hw, K_flip, self.cfg)[:, :, ::-1]
            avg = ((a + b) / 2).transpose(1, 2, 0)
            low.append(cv2.resize(avg, out_hw[::-1], interpolation=cv2.INTER_LINEAR)
                       .reshape(out_hw[0], out_hw[1], -1).transpose(2, 0, 1))
        return FeatureResult(high=_l2n(np.stack(high)), low=_l2n(np.stack(low)))


def build_features(cfg: FeatureConfig, camera: CameraConfig | None = None) -> Estimator:
    """The feature estimator named by ``cfg.backend`` (not yet set up); ``camera``: the shared
    camera section (default values when None)."""
    if cfg.backend == "handmade":
        return HandmadeFeatures.from_config(cfg, camera)
    if cfg.backend == "dino":
        from videocups_ray.cues.vit import DinoFeatures

        return DinoFeatures.from_config(cfg)
    if cfg.backend == "simulated":
        from videocups_ray.cues.simulated import SimulatedFeatures

        return SimulatedFeatures.from_config(cfg)
    raise ValueError(f"unknown feature backend {cfg.backend!r}; known: handmade, dino, simulated")
