"""Two-view geometry from dense flow: ego-motion, triangulated depth, epipolar residual.

Pure numpy / OpenCV functions used by the weight-free depth backend (``cues.depth``).
Conventions: pixel coordinates (u, v) with v down; camera coordinates x right, y down, z
forward; the pose (R, t) maps a point of camera t to camera t+1, ``X1 = R X0 + t`` (OpenCV's
``recoverPose``), with ``|t| = 1`` until the metric scale is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Pose:
    R: np.ndarray  # 3x3 rotation, camera t -> camera t+1
    t: np.ndarray  # 3-vector, unit length (scale unknown)
    inliers: int  # RANSAC inliers among the sampled correspondences


@dataclass
class Plane:
    """Ground plane ``n . X = height`` in camera coordinates (n unit, pointing down)."""

    n: np.ndarray
    height: float


def pixel_rays(height: int, width: int, K: np.ndarray) -> np.ndarray:
    """``H x W x 3`` normalised rays ``K^-1 (u, v, 1)`` (z = 1)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    Kinv = np.linalg.inv(K)
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    return pix @ Kinv.T


def sample_correspondences(flow: np.ndarray, occluded: np.ndarray, step: int,
                           max_points: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Grid samples of non-occluded pixels whose flow lands inside the image: (pts0, pts1) Nx2."""
    h, w = flow.shape[:2]
    v, u = np.mgrid[step // 2 : h : step, step // 2 : w : step]
    f = flow[v, u]
    u1, v1 = u + f[..., 0], v + f[..., 1]
    keep = ~occluded[v, u] & (u1 >= 0) & (u1 <= w - 1) & (v1 >= 0) & (v1 <= h - 1)
    p0 = np.stack([u[keep], v[keep]], axis=-1).astype(np.float64)
    p1 = np.stack([u1[keep], v1[keep]], axis=-1).astype(np.float64)
    if len(p0) > max_points:
        idx = rng.choice(len(p0), max_points, replace=False)
        p0, p1 = p0[idx], p1[idx]
    return p0, p1


def estimate_pose(p0: np.ndarray, p1: np.ndarray, K: np.ndarray, threshold: float,
                  min_inliers: int = 30) -> Pose | None:
    """RANSAC essential matrix + cheirality (``cv2.findEssentialMat`` / ``recoverPose``).

    None when there are too few correspondences or inliers for a trustworthy pose.
    """
    if len(p0) < max(min_inliers, 8):
        return None
    cv2.setRNGSeed(0)  # RANSAC is deterministic given the input
    E, mask = cv2.findEssentialMat(p0, p1, K, method=cv2.RANSAC, prob=0.999, threshold=threshold)
    if E is None or E.shape != (3, 3):
        return None  # several solutions (degenerate input) come stacked as 3k x 3
    n_in, R, t, mask = cv2.recoverPose(E, p0, p1, K, mask=mask)
    if n_in < min_inliers:
        return None
    t = t.reshape(3)
    return Pose(R=R, t=t / max(np.linalg.norm(t), 1e-12), inliers=int(n_in))


def rotational_flow(rays: np.ndarray, K: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Image motion of points at infinity under rotation R: ``H x W x 2`` pixels."""
    a = rays @ R.T
    proj = a @ K.T
    uv1 = proj[..., :2] / np.where(np.abs(proj[..., 2:]) < 1e-9, 1e-9, proj[..., 2:])
    uv0 = rays @ K.T
    return (uv1 - uv0[..., :2]).astype(np.float32)


def triangulate(rays: np.ndarray, flow: np.ndarray, K: np.ndarray, pose: Pose
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel depth (units of |t|), translational parallax (px) and Sampson residual (px).

    Depth solves ``Z0 R x0 + t = Z1 x1`` in least squares (cross product with x1); the parallax
    is the flow left after removing the rotation, which fixes how well Z0 is conditioned.
    """
    h, w = flow.shape[:2]
    Kinv = np.linalg.inv(K)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    p1 = np.stack([u + flow[..., 0], v + flow[..., 1], np.ones_like(u)], axis=-1)
    x1 = p1 @ Kinv.T
    a = rays @ pose.R.T
    c_a = np.cross(x1, a)
    c_t = np.cross(x1, pose.t[None, None, :])
    denom = np.einsum("hwc,hwc->hw", c_a, c_a)
    z = -np.einsum("hwc,hwc->hw", c_a, c_t) / np.maximum(denom, 1e-18)
    parallax = np.linalg.norm(flow - rotational_flow(rays, K, pose.R), axis=-1)
    tx = np.array([[0, -pose.t[2], pose.t[1]], [pose.t[2], 0, -pose.t[0]], [-pose.t[1], pose.t[0], 0]])
    Fm = Kinv.T @ tx @ pose.R @ Kinv
    p0 = np.stack([u, v, np.ones_like(u)], axis=-1)
    l1 = p0 @ Fm.T  # epipolar lines in image t+1
    l0 = p1 @ Fm  # epipolar lines in image t
    num = np.einsum("hwc,hwc->hw", p1, l1) ** 2
    den = l1[..., 0] ** 2 + l1[..., 1] ** 2 + l0[..., 0] ** 2 + l0[..., 1] ** 2
    sampson = np.sqrt(num / np.maximum(den, 1e-18))
    return z.astype(np.float32), parallax.astype(np.float32), sampson.astype(np.float32)


def fit_ground_plane(points: np.ndarray, rng: np.random.Generator, iters: int = 64,
                     rel_threshold: float = 0.03, min_vertical: float = 0.9,
                     min_inlier_fraction: float = 0.2) -> Plane | None:
    """RANSAC plane through 3D points (any scale) whose normal is near the camera's y axis.

    Returns the plane with ``height`` = distance of the camera centre from it, in the units
    of ``points``; None when fewer than 20 points or no near-horizontal plane has support.
    """
    if len(points) < 20:
        return None
    scale = float(np.median(np.abs(points[:, 1]))) or 1.0
    idx = rng.integers(0, len(points), size=(iters, 3))
    a, b, c = points[idx[:, 0]], points[idx[:, 1]], points[idx[:, 2]]
    n = np.cross(b - a, c - a)
    norm = np.linalg.norm(n, axis=1)
    ok = norm > 1e-12
    n = n[ok] / norm[ok, None]
    a = a[ok]
    n *= np.sign(n[:, 1:2] + 1e-12)  # point down (+y)
    d = np.einsum("kc,kc->k", n, a)
    ok = (n[:, 1] >= min_vertical) & (d > 0)
    if not ok.any():
        return None
    n, d = n[ok], d[ok]
    resid = np.abs(points @ n.T - d[None, :])
    support = (resid < rel_threshold * scale).sum(axis=0)
    best = int(np.argmax(support))
    inl = resid[:, best] < rel_threshold * scale
    if inl.sum() < max(10, min_inlier_fraction * len(points)):
        return None
    # least-squares refinement on the inliers
    q = points[inl]
    centroid = q.mean(axis=0)
    _, _, vt = np.linalg.svd(q - centroid, full_matrices=False)
    nn = vt[-1] * np.sign(vt[-1][1] + 1e-12)
    height = float(nn @ centroid)
    if nn[1] < min_vertical or height <= 0:
        return Plane(n=n[best], height=float(d[best]))
    return Plane(n=nn, height=height)


def plane_depth(rays: np.ndarray, plane: Plane) -> np.ndarray:
    """z-depth where each pixel's ray meets the plane; +inf at and above the horizon."""
    denom = rays @ plane.n
    with np.errstate(divide="ignore"):
        z = np.where(denom > 1e-6, plane.height / np.maximum(denom, 1e-6), np.inf)
    return z.astype(np.float32)


def _pose_from_params(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(R, unit t) from a rotation vector x[:3] and translation angles x[3:5] around -z."""
    R, _ = cv2.Rodrigues(x[:3].reshape(3, 1))
    az, el = x[3], x[4]
    t = np.array([np.sin(az) * np.cos(el), np.sin(el), -np.cos(az) * np.cos(el)])
    return R, t


def sampson_points(p0: np.ndarray, p1: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Sampson distance (px) of correspondences ``p0 -> p1`` (N x 2) under the pose (R, t)."""
    Kinv = np.linalg.inv(K)
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    Fm = Kinv.T @ tx @ R @ Kinv
    h0 = np.column_stack([p0, np.ones(len(p0))])
    h1 = np.column_stack([p1, np.ones(len(p1))])
    l1 = h0 @ Fm.T
    l0 = h1 @ Fm
    num = np.einsum("nc,nc->n", h1, l1)
    den = np.sqrt(l1[:, 0] ** 2 + l1[:, 1] ** 2 + l0[:, 0] ** 2 + l0[:, 1] ** 2)
    return num / np.maximum(den, 1e-12)


def _residuals(x: np.ndarray, p0: np.ndarray, p1: np.ndarray, K: np.ndarray, scale_px: float,
               prior_sigma_deg: float | None) -> np.ndarray:
    r = sampson_points(p0, p1, K, *_pose_from_params(x))
    if prior_sigma_deg is None:
        return r
    w = scale_px * np.sqrt(len(p0)) / np.radians(prior_sigma_deg)
    return np.concatenate([r, w * x[3:5]])


def refine_pose(p0: np.ndarray, p1: np.ndarray, K: np.ndarray, initial: list[Pose],
                scale_px: float, prior_sigma_deg: float | None = None) -> Pose | None:
    """Robust (soft-L1 on the Sampson distance) 5-DoF pose refinement from several starts.

    RANSAC on an essential matrix is fragile for forward motion with small parallax (the
    translation direction is weakly constrained); starting a robust fit both from RANSAC's
    answer and from the driving prior (no rotation, straight ahead) and keeping the lower
    robust cost recovers the common case without forbidding other motions.
    """
    from scipy.optimize import least_squares

    if len(p0) < 8:
        return None
    best, best_cost = None, np.inf
    for pose in initial:
        rvec, _ = cv2.Rodrigues(pose.R)
        t = pose.t / max(np.linalg.norm(pose.t), 1e-12)
        if t[2] > 0:
            t = -t  # the parameterisation looks along -z; the sign is fixed by cheirality below
        x0 = np.array([*rvec.ravel(), np.arctan2(t[0], -t[2]), np.arcsin(np.clip(t[1], -1, 1))])
        res = least_squares(lambda x: _residuals(x, p0, p1, K, scale_px, prior_sigma_deg), x0,
                            loss="soft_l1", f_scale=scale_px, max_nfev=30, x_scale="jac")
        if res.cost < best_cost:
            best, best_cost = res.x, res.cost
    assert best is not None
    R, t = _pose_from_params(best)
    inl = np.abs(sampson_points(p0, p1, K, R, t)) < 2 * scale_px
    # cheirality: most static points must be in front of both cameras; else flip t
    Kinv = np.linalg.inv(K)
    x0 = np.column_stack([p0[inl], np.ones(inl.sum())]) @ Kinv.T
    x1 = np.column_stack([p1[inl], np.ones(inl.sum())]) @ Kinv.T
    a = x0 @ R.T
    c_a = np.cross(x1, a)
    z = -np.einsum("nc,nc->n", c_a, np.cross(x1, t[None, :])) / np.maximum(np.einsum("nc,nc->n", c_a, c_a), 1e-18)
    if np.median(z) < 0:
        t = -t
    return Pose(R=R, t=t, inliers=int(inl.sum()))


def back_project(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """``H x W x 3`` camera-frame points (metres, y down) of a z-depth map with intrinsics ``K``."""
    h, w = depth.shape
    return (pixel_rays(h, w, K) * depth[..., None]).astype(np.float32)


def surface_normals(points: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Unit normals (``H x W x 3``) of a back-projected depth map from the cross product of its
    image-space derivatives, after a Gaussian of ``sigma`` px (monocular depth is noisy per pixel).
    Oriented towards the camera (``n . X <= 0``); where the derivatives vanish the normal is 0."""
    p = cv2.GaussianBlur(points, (0, 0), sigma) if sigma > 0 else points
    du = np.stack([cv2.Sobel(np.ascontiguousarray(p[..., c]), cv2.CV_32F, 1, 0, ksize=3) for c in range(3)], -1)
    dv = np.stack([cv2.Sobel(np.ascontiguousarray(p[..., c]), cv2.CV_32F, 0, 1, ksize=3) for c in range(3)], -1)
    n = np.cross(du, dv)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(norm > 1e-9, n / np.maximum(norm, 1e-9), 0.0)
    flip = np.einsum("hwc,hwc->hw", n, points) > 0
    n[flip] *= -1
    return n.astype(np.float32)
