"""Depth + motion-probability estimators.

Backends (``DepthConfig.backend``):

- ``geometry`` (default, weight-free): ego-motion by RANSAC essential matrix on the flow
  correspondences, depth of static pixels by triangulation, metric scale from a road plane
  fitted to triangulated points in the lower image (its distance is the configured camera
  height), motion probability from the Sampson residual and from "seen through the road"
  parallax (objects moving along the epipolar lines), moving objects placed on the ground
  plane under their lowest pixel (contact point).
- ``monodepth``: a Monodepth2/DynamoDepth-layout network from a local checkpoint
  (see ``cues.monodepth``).
- ``oracle``: SynthDrive ground truth (``Frame.depth``, ``Frame.extra["motion"]``).

The geometry backend is stateful per video (last good depth and ground plane, for a stopped
camera): call ``reset()`` between videos, and give it the pairs of one video in order.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import cv2
import numpy as np
from scipy import ndimage

from videocups_ray.cues import geometry as geo
from videocups_ray.cues.base import (
    DepthResult,
    Estimator,
    FlowResult,
    FrameBatch,
    as_frames,
    as_images,
    intrinsics_of,
)
from videocups_ray.data.types import DataError

if TYPE_CHECKING:  # config types only: the pure path imports without pydantic (gpu_check.py)
    from videocups_ray.config import CameraConfig, DepthConfig


def _default_camera() -> "CameraConfig":
    """The default camera section, imported late: the pure path imports without pydantic."""
    from videocups_ray.config import CameraConfig

    return CameraConfig()

log = logging.getLogger(__name__)

_SAMPLE_STEP = 4  # px between sampled correspondences for RANSAC
_MAX_SAMPLES = 3000  # correspondences given to findEssentialMat
_REFINE_POINTS = 1000  # correspondences in the robust pose refinement
_MIN_COMPONENT = 30  # px; smaller moving blobs keep their triangulated / filled depth
_ROAD_TOL = 0.1  # relative; |depth / road-plane depth - 1| below this is road
_CONTACT_JUMP = 0.15  # log-depth step between vertical neighbours that ends a surface
_CONTACT_GAP = 12  # rows; unmeasured pixels crossed between an upright surface and its road contact
_CONTACT_FREE = 1.15  # depth / contact depth ratio (either way) still taken as static (bumpers, clearance)


def median5(x: np.ndarray) -> np.ndarray:
    """5x5 median of a float32 map, equal to ``scipy.ndimage.median_filter(x, size=5)`` (mode
    "reflect") value for value: OpenCV's median on a border-reflected copy (``BORDER_REFLECT`` is
    scipy's "reflect"). scipy runs a generic rank filter, ~40x slower (bench_local_engine.py)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    padded = cv2.copyMakeBorder(x, 2, 2, 2, 2, cv2.BORDER_REFLECT)
    return cv2.medianBlur(padded, 5)[2:-2, 2:-2]


def _check_flow(flow: FlowResult, n: int, hw: tuple[int, int]) -> None:
    if flow.fw.shape != (n, *hw, 2) or flow.occlusion.shape != (n, *hw):
        raise DataError(f"depth: flow of shape {flow.fw.shape} (occlusion {flow.occlusion.shape})"
                        f" does not match {n} frames of {hw}")
    if not np.isfinite(flow.fw).all():
        raise DataError("depth: forward flow contains NaN or Inf")


class GeometryDepth(Estimator):
    """Weight-free depth and motion probability from flow and intrinsics (see module doc)."""

    name = "geometry"

    def __init__(self, cfg: DepthConfig, camera: CameraConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.camera = camera if camera is not None else _default_camera()
        self.requires_gpu = False
        self.memory_bytes = 256 * 1024**2
        self._warned: set[str] = set()
        self.reset()

    @classmethod
    def from_config(cls, cfg: DepthConfig, camera: CameraConfig | None = None) -> "GeometryDepth":
        return cls(cfg, camera)

    def reset(self) -> None:
        self._last_depth: np.ndarray | None = None
        self._last_plane: geo.Plane | None = None
        self._rays_key: tuple | None = None
        self._rays: np.ndarray | None = None
        self.last_pose: geo.Pose | None = None

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("geometry depth fallback (%s): %s", kind, message)

    def _rays_for(self, h: int, w: int, K: np.ndarray) -> np.ndarray:
        key = (h, w, K.tobytes())
        if key != self._rays_key:
            self._rays, self._rays_key = geo.pixel_rays(h, w, K), key
        assert self._rays is not None
        return self._rays

    def __call__(self, frames_t: FrameBatch, frames_t1: FrameBatch | None, flow: FlowResult,
                 K: np.ndarray | None = None) -> DepthResult:
        """Depth and motion probability of frames t, from the flow t->t+1 (``frames_t1`` unused)."""
        self._ensure_setup()
        img = as_images(frames_t, "frames_t")
        n, h, w = img.shape[:3]
        _check_flow(flow, n, (h, w))
        Km = intrinsics_of(frames_t, h, w, self.camera.focal, self.camera.focal_scale, K)
        out = [self.estimate(flow.fw[i], flow.occlusion[i], Km) for i in range(n)]
        return DepthResult(*(np.stack(x) for x in zip(*out)))

    # ------------------------------------------------------------------ one frame
    def estimate(self, fw: np.ndarray, occ: np.ndarray, K: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(depth m, motion probability, measured mask) of one frame from its forward flow."""
        cfg = self.cfg
        h, w = fw.shape[:2]
        rays = self._rays_for(h, w, K)
        rng = np.random.default_rng(0)
        p0, p1 = geo.sample_correspondences(fw, occ, _SAMPLE_STEP, _MAX_SAMPLES, rng)
        pose = None
        if len(p0) and float(np.median(np.linalg.norm(p1 - p0, axis=1))) >= cfg.min_parallax:
            ransac = geo.estimate_pose(p0, p1, K, cfg.ransac_threshold)
            starts = [geo.Pose(np.eye(3), np.array([0.0, 0.0, -1.0]), 0)] + ([ransac] if ransac else [])
            sub = rng.choice(len(p0), min(len(p0), _REFINE_POINTS), replace=False)
            pose = geo.refine_pose(p0[sub], p1[sub], K, starts, cfg.ransac_threshold, cfg.translation_prior_deg)
        if pose is None:
            return self._no_parallax(fw, occ, rays, K, "no reliable ego-motion (stopped camera or too few matches)")
        z, parallax, sampson = geo.triangulate(rays, fw, K, pose)
        if float(np.median(parallax[~occ])) < cfg.min_parallax if (~occ).any() else True:
            return self._no_parallax(fw, occ, rays, K, "rotation only, no translational parallax")
        self.last_pose = pose

        sig2 = cfg.motion_sigma**2
        p_epi = sampson**2 / (sampson**2 + sig2)
        reliable = ~occ & (parallax >= cfg.min_parallax) & (z > 0) & np.isfinite(z)

        plane_rel = self._fit_plane(z, rays, reliable & (p_epi < 0.5), rng)
        if plane_rel is not None:
            scale = self.camera.camera_height / plane_rel.height
            plane = geo.Plane(n=plane_rel.n, height=self.camera.camera_height)
        else:
            plane = self._last_plane or geo.Plane(n=np.array([0.0, 1.0, 0.0]), height=self.camera.camera_height)
            zp_prior = geo.plane_depth(rays, plane)
            cand = reliable & (p_epi < 0.5) & np.isfinite(zp_prior) & (zp_prior < cfg.max_depth)
            if cand.sum() < 20:
                return self._no_parallax(fw, occ, rays, K, "no ground points to fix the scale")
            self._warn_once("plane", "road-plane fit failed; scale from the previous/level ground plane")
            scale = float(np.median(zp_prior[cand] / z[cand]))
        zp = geo.plane_depth(rays, plane)
        depth = z * scale

        # parallax a static point would have if it lay on the road along this ray: much more
        # than measured means "further than the road", i.e. moving along the epipolar line
        zp_rel = np.where(np.isfinite(zp), zp / scale, 0.0)
        expected = self._expected_parallax(rays, K, pose, zp_rel)
        usable = ~occ & np.isfinite(zp) & (expected >= 2 * cfg.min_parallax)
        ratio = expected / np.maximum(parallax, 1e-3)
        p_far = np.clip(0.5 * (ratio - 1.0) / (cfg.below_ground_ratio - 1.0), 0.0, 1.0)
        p_far = np.where(usable, p_far, 0.0)
        behind = ~occ & (parallax >= 2 * cfg.min_parallax) & (z <= 0)
        prob = np.maximum(np.maximum(p_epi, p_far), behind.astype(np.float32))
        if cfg.contact_ratio is not None:
            prob = np.maximum(prob, self._contact_motion(np.where(reliable, z * scale, 0.0), zp, reliable, parallax))
        prob = median5(prob)

        measured = reliable & (prob < 0.5)
        depth = self._fill(np.where(measured, depth, 0.0), measured)
        # triangulation from noisy flow has a heavy tail: a median over a neighbourhood keeps
        # edges and removes isolated far/near outliers (measured on bench_cues.py)
        depth = cv2.medianBlur(np.clip(depth, cfg.min_depth, cfg.max_depth).astype(np.float32), 5)
        depth = cv2.medianBlur(depth, 5)
        depth = self._place_moving(depth, prob > 0.5, zp)
        depth = np.clip(depth, cfg.min_depth, cfg.max_depth).astype(np.float32)
        self._last_depth, self._last_plane = depth.copy(), plane
        return depth, prob.astype(np.float32), measured

    def _fit_plane(self, z: np.ndarray, rays: np.ndarray, static: np.ndarray,
                   rng: np.random.Generator) -> geo.Plane | None:
        """Plane through static triangulated points of the lower-central image (the road ahead)."""
        cfg = self.cfg
        h, w = z.shape
        cy, cx = h / 2.0, w / 2.0
        v, u = np.mgrid[0:h, 0:w]
        cand = static & (v > cy + cfg.plane_rows_below * h) & (np.abs(u - cx) < cfg.plane_half_width * w)
        idx = np.flatnonzero(cand)
        if len(idx) > cfg.plane_max_points:
            idx = rng.choice(idx, cfg.plane_max_points, replace=False)
        pts = (z.reshape(-1)[idx, None] * rays.reshape(-1, 3)[idx]).astype(np.float64)
        return geo.fit_ground_plane(pts, rng, iters=cfg.plane_ransac_iters, rel_threshold=cfg.plane_inlier_tol,
                                    min_vertical=cfg.plane_min_vertical, min_inlier_fraction=cfg.plane_min_inliers)

    def _contact_motion(self, depth: np.ndarray, zp: np.ndarray, reliable: np.ndarray,
                        parallax: np.ndarray) -> np.ndarray:
        """Motion probability from the ground contact of upright surfaces.

        A thing moving along the ego direction (oncoming or same-lane car, person walking along
        the sidewalk) moves along its epipolar lines, so the Sampson residual cannot see it; but
        its triangulated depth is scaled by ego / (ego - own) speed. A static upright surface
        stands on the road, so in each column its depth equals the road-plane depth where it
        meets the road; walking up from that contact (stopping at a depth jump, i.e. at another
        surface behind it) any other ratio means independent motion. Triangulated depth is only
        as good as the parallax (relative error ~ flow noise / parallax), so the evidence fades
        out below ``16 * min_parallax`` and the ratio map is median-filtered.
        """
        cfg = self.cfg
        h, w = depth.shape
        logd = np.log(np.maximum(cv2.medianBlur(depth.astype(np.float32), 5), 1e-3))
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = depth / zp
        road = reliable & np.isfinite(zp) & (np.abs(rel - 1.0) < _ROAD_TOL)
        upright = reliable & ~road
        log_zp = np.log(np.where(np.isfinite(zp) & (zp > 0), zp, 1.0)).astype(np.float32)
        log_contact = np.full(w, np.nan, np.float32)
        prev = np.full(w, np.nan, np.float32)
        gap = np.zeros(w, np.int32)  # unreliable rows crossed since the last measured pixel
        ratio = np.zeros((h, w), np.float32)
        for v in range(h - 1, -1, -1):  # bottom-up scan, vectorised over columns
            on_road, up = road[v], upright[v]
            # a depth jump starts another surface; occluded pixels (e.g. the road an oncoming
            # car is about to cover) are crossed for up to _CONTACT_GAP rows
            jump = np.abs(logd[v] - prev) > _CONTACT_JUMP
            keep = (up & ~jump) | (~on_road & ~up & (gap < _CONTACT_GAP))
            log_contact = np.where(on_road, log_zp[v], np.where(keep, log_contact, np.nan))
            ratio[v] = np.where(up & np.isfinite(log_contact), logd[v] - log_contact, 0.0)
            prev = np.where(up, logd[v], np.where(on_road, np.nan, prev))
            gap = np.where(on_road | up, 0, gap + 1)
        ratio = cv2.medianBlur(cv2.medianBlur(np.abs(ratio), 5), 5)
        lo, hi = np.log(_CONTACT_FREE), np.log(cfg.contact_ratio or 1.4)
        trust = np.clip((parallax - 8 * cfg.min_parallax) / (8 * cfg.min_parallax), 0.0, 1.0)
        return (trust * np.clip(0.5 * (ratio - lo) / max(hi - lo, 1e-6), 0.0, 1.0)).astype(np.float32)

    @staticmethod
    def _expected_parallax(rays: np.ndarray, K: np.ndarray, pose: geo.Pose, z_rel: np.ndarray) -> np.ndarray:
        a = rays @ pose.R.T
        moved = a * z_rel[..., None] + pose.t
        pm = moved @ K.T
        pr = a @ K.T
        zm = np.where(pm[..., 2] > 1e-6, pm[..., 2], np.nan)
        d = pm[..., :2] / zm[..., None] - pr[..., :2] / pr[..., 2:]
        out = np.linalg.norm(d, axis=-1)
        return np.where(np.isfinite(out) & (z_rel > 0), out, 0.0).astype(np.float32)

    @staticmethod
    def _fill(depth: np.ndarray, measured: np.ndarray) -> np.ndarray:
        """Unmeasured pixels take the depth of the nearest measured pixel."""
        if measured.all():
            return depth
        if not measured.any():
            return depth
        idx = ndimage.distance_transform_edt(~measured, return_distances=False, return_indices=True)
        return depth[idx[0], idx[1]]

    def _place_moving(self, depth: np.ndarray, moving: np.ndarray, zp: np.ndarray) -> np.ndarray:
        """Each moving blob gets the road-plane depth under its lowest pixel (contact point)."""
        if not moving.any():
            return depth
        moving = ndimage.binary_opening(moving, structure=np.ones((3, 3), bool))
        labels, count = ndimage.label(moving, structure=np.ones((3, 3), bool))
        if count == 0:
            return depth
        h, w = depth.shape
        v, u = np.mgrid[0:h, 0:w]
        ids = np.arange(1, count + 1)
        sizes = ndimage.sum_labels(np.ones_like(depth), labels, ids)
        bottom = ndimage.maximum(v, labels, ids).astype(int)
        col = np.round(ndimage.mean(u, labels, ids)).astype(int)
        contact = zp[np.clip(bottom + 1, 0, h - 1), np.clip(col, 0, w - 1)]
        ok = (sizes >= _MIN_COMPONENT) & np.isfinite(contact)
        lut = np.zeros(count + 1, np.float32)
        lut[ids[ok]] = contact[ok]
        placed = lut[labels]
        return np.where(placed > 0, placed, depth)

    def _no_parallax(self, fw: np.ndarray, occ: np.ndarray, rays: np.ndarray, K: np.ndarray,
                     why: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stopped camera: static depth from the last good frame (or the ground-plane prior);
        anything that moves in the image moves by itself."""
        cfg = self.cfg
        h, w = fw.shape[:2]
        plane = self._last_plane or geo.Plane(n=np.array([0.0, 1.0, 0.0]), height=self.camera.camera_height)
        zp = geo.plane_depth(rays, plane)
        if self._last_depth is not None and self._last_depth.shape == (h, w):
            self._warn_once("stopped-last", f"{why}; keeping the last good depth")
            depth = self._last_depth.copy()
        else:
            self._warn_once("stopped-prior", f"{why}; no earlier depth, using the ground-plane prior")
            depth = np.where(np.isfinite(zp), zp, cfg.max_depth).astype(np.float32)
        r = np.linalg.norm(fw, axis=-1)
        prob = (r**2 / (r**2 + cfg.motion_sigma**2)).astype(np.float32)
        prob = median5(prob)
        depth = self._place_moving(depth, prob > 0.5, zp)
        depth = np.clip(depth, cfg.min_depth, cfg.max_depth).astype(np.float32)
        return depth, prob, np.zeros((h, w), bool)


class OracleDepth(Estimator):
    """Ground-truth depth and independent-motion mask from SynthDrive ``Frame`` objects.

    Pixels without valid depth (sky, 0 or NaN) get ``max_depth``; motion probability is the
    binary ground-truth mask as float.
    """

    name = "oracle"

    def __init__(self, cfg: DepthConfig) -> None:
        super().__init__()
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: DepthConfig) -> "OracleDepth":
        return cls(cfg)

    def __call__(self, frames_t: FrameBatch, frames_t1: FrameBatch | None = None,
                 flow: FlowResult | None = None, K: np.ndarray | None = None) -> DepthResult:
        self._ensure_setup()
        frames = as_frames(frames_t, "frames_t", "oracle depth")
        depth, prob, valid = [], [], []
        for f in frames:
            if f.depth is None or "motion" not in f.extra:
                raise DataError(f"oracle depth: {f.video_id} frame {f.frame_index} lacks depth or extra['motion']")
            d = np.asarray(f.depth, dtype=np.float32)
            ok = np.isfinite(d) & (d > 0)
            depth.append(np.where(ok, np.clip(d, self.cfg.min_depth, self.cfg.max_depth), self.cfg.max_depth))
            prob.append(np.asarray(f.extra["motion"], dtype=bool).astype(np.float32))
            valid.append(ok)
        return DepthResult(np.stack(depth).astype(np.float32), np.stack(prob), np.stack(valid))


def build_depth(cfg: DepthConfig, camera: CameraConfig | None = None) -> Estimator:
    """The depth estimator named by ``cfg.backend`` (not yet set up); ``camera``: the shared
    camera section (default values when None)."""
    if cfg.backend == "geometry":
        return GeometryDepth.from_config(cfg, camera)
    if cfg.backend == "oracle":
        return OracleDepth.from_config(cfg)
    if cfg.backend == "monodepth":
        from videocups_ray.cues.monodepth import MonoDepth

        return MonoDepth.from_config(cfg)
    if cfg.backend == "simulated":
        from videocups_ray.cues.simulated import SimulatedDepth

        return SimulatedDepth.from_config(cfg)
    raise ValueError(f"unknown depth backend {cfg.backend!r}; known: geometry, monodepth, oracle, simulated")
