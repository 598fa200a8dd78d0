"""Pixel kernels of the pseudo-labeller: region growing, warping, occlusion, IoU, 3-frame vote.

One public function per operation, dispatching on the array type: numpy arrays run the Numba
kernel (``cpu.py``), CuPy arrays the CuPy kernel (``gpu.py``, imported only when a CuPy array
arrives, so ``import videocups_ray`` needs neither CuPy nor a GPU). ``reference.py`` holds a
plain numpy/scipy version of each: the oracle of the tests and the benchmarks' baseline.
All three agree exactly: float work is float32 everywhere with one fixed operation order (no
fused multiply-add), labels are canonical.

Conventions
-----------
* ``flow`` is HxWx2 float32 pixels, ``flow[..., 0]`` = column (x) and ``flow[..., 1]`` = row (y)
  displacement.
* Warping is *backward*: ``out(x) = in(x + flow(x))``, so ``flow`` goes from the output frame to
  the input frame. Pipeline usage: to bring labels of t+1 into frame t, pass the forward flow
  t->t+1 (and ``occlusion_mask(fw_t, bw_t+1)`` as occlusion); to bring labels of t-1 into
  frame t, pass the backward flow t->t-1.
* Region-growing join test (float32, multiplication instead of division)::

      test(x->y) = |d_x - d_y| < tau_d * |d_x|  and  |f_x - f_y|^2 < tau_f^2 * |f_x|^2

  The paper's test is normalised by x and so is asymmetric. Every above-alpha pixel is a seed
  that grows, so y joins x's region when either pixel accepts the other: the undirected edge
  is ``test(x->y) or test(y->x)``. With strict ``<`` and products, ``d_x = 0`` or ``f_x = 0``
  makes ``test(x->y)`` false (x accepts nobody, but may still be accepted), and any NaN makes
  the comparison false: no division anywhere, no special cases.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from videocups_ray.kernels import cpu, reference  # noqa: F401  (reference: the oracle, re-exported)

__all__ = [
    "region_grow",
    "warp_labels",
    "warp_probs",
    "occlusion_mask",
    "iou_matrix",
    "majority_vote3",
    "is_cupy",
]

# above this label value iou_matrix compacts IDs with np.unique instead of a lookup table
_MAX_TABLE_LABEL = 1 << 22


def is_cupy(arr: Any) -> bool:
    """True for a CuPy array, decided without importing CuPy."""
    return type(arr).__module__.split(".")[0] == "cupy"


def _gpu():
    from videocups_ray.kernels import gpu  # lazy: needs CuPy

    return gpu


def _check_hw(name: str, arr: Any, hw: tuple[int, ...] | None = None, ndim: tuple[int, ...] = (2,)) -> None:
    if arr.ndim not in ndim:
        raise ValueError(f"{name}: expected {' or '.join(f'{n}-D' for n in ndim)} array, got shape {arr.shape}")
    if hw is not None and tuple(arr.shape[:2]) != tuple(hw):
        raise ValueError(f"{name}: shape {arr.shape} does not match the image size {tuple(hw)}")


def _check_flow(name: str, flow: Any, hw: tuple[int, int]) -> None:
    if flow.ndim != 3 or flow.shape[2] != 2 or tuple(flow.shape[:2]) != tuple(hw):
        raise ValueError(f"{name}: expected flow of shape {(*hw, 2)}, got {flow.shape}")


def _f32(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_integer(name: str, arr: Any) -> None:
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer label map, got dtype {arr.dtype}")


# --------------------------------------------------------------------------- region growing
def region_grow(
    depth: Any,
    flow: Any,
    motion_prob: Any,
    *,
    alpha: float = 0.15,
    radius: int = 8,
    tau_d: float = 0.02,
    tau_f: float = 0.04,
    min_pixels: int = 50,
) -> Any:
    """Instances as connected components of the region-growing graph (DESIGN.md 4.3).

    Seeds are pixels with ``motion_prob > alpha``; two seeds x, y with ``||y-x||_inf <= radius``
    are joined by ``test(x->y) or test(y->x)`` (module docstring). Returns int32 HxW labels:
    0 = no region, 1..N numbered in raster order of each region's first pixel; regions with
    fewer than ``min_pixels`` pixels become 0 and are not numbered. Depth in any unit (the test
    is relative), flow in pixels (HxWx2); everything is converted to float32.
    """
    _check_hw("depth", depth)
    hw = tuple(depth.shape)
    _check_hw("motion_prob", motion_prob, hw)
    _check_flow("flow", flow, hw)
    if radius < 1:
        raise ValueError(f"radius must be >= 1 pixel, got {radius}")
    if min_pixels < 1:
        raise ValueError(f"min_pixels must be >= 1, got {min_pixels}")
    if not (tau_d > 0 and tau_f > 0):
        raise ValueError(f"tau_d and tau_f must be > 0, got {tau_d}, {tau_f}")
    if is_cupy(depth):
        return _gpu().region_grow(depth, flow, motion_prob, alpha=alpha, radius=radius, tau_d=tau_d, tau_f=tau_f, min_pixels=min_pixels)
    h, w = hw
    d, f, m = _f32(depth), _f32(flow), _f32(motion_prob)
    if h * w == 0:
        return np.zeros((h, w), np.int32)
    # strips at least 2*radius rows tall, so the serial border phase stays small
    n_strips = max(1, min(numba.get_num_threads() * 2, h // max(2 * radius, 16)))
    out = cpu.region_grow_flat(
        d.ravel(), f[..., 0].ravel(), f[..., 1].ravel(), m.ravel(), h, w,
        np.float32(alpha), radius, np.float32(tau_d), np.float32(np.float32(tau_f) * np.float32(tau_f)),
        min_pixels, n_strips,
    )  # fmt: skip
    return out.reshape(h, w)


# --------------------------------------------------------------------------- warping
def warp_labels(labels: Any, flow: Any, occlusion: Any | None = None, *, fill: int = 0) -> Any:
    """Backward warp of an integer map by nearest neighbour: ``out(x) = labels(x + flow(x))``.

    ``flow`` goes from the output frame to ``labels``' frame (module docstring). The sample
    position is rounded with ``floor(p + 0.5)`` in float32. Out-of-frame samples and pixels
    where ``occlusion`` (HxW bool, on the output grid) is True get ``fill`` (0 = no instance;
    pass the ignore label when warping semantics). Same dtype as ``labels``.
    """
    _check_hw("labels", labels)
    _check_integer("labels", labels)
    _check_flow("flow", flow, labels.shape)
    if occlusion is not None:
        _check_hw("occlusion", occlusion, labels.shape)
    if is_cupy(labels):
        return _gpu().warp_labels(labels, flow, occlusion, fill=fill)
    lab = np.ascontiguousarray(labels)
    occ = np.ascontiguousarray(occlusion, dtype=np.bool_) if occlusion is not None else np.zeros((1, 1), np.bool_)
    return cpu.warp_labels_nn(lab, _f32(flow), occ, occlusion is not None, lab.dtype.type(fill))


def warp_probs(probs: Any, flow: Any, occlusion: Any | None = None, *, fill: float = 0.0) -> Any:
    """Bilinear backward warp of a float map, HxW or HxWxC: ``out(x) = probs(x + flow(x))``.

    In frame iff ``0 <= p <= size - 1`` on both axes; the sample at ``p`` mixes the four
    neighbours (the far one clamped at the last row/column, where its weight is 0).
    Out-of-frame and occluded pixels get ``fill``. Computed and returned as float32.
    """
    _check_hw("probs", probs, ndim=(2, 3))
    _check_flow("flow", flow, probs.shape[:2])
    if occlusion is not None:
        _check_hw("occlusion", occlusion, probs.shape[:2])
    if is_cupy(probs):
        return _gpu().warp_probs(probs, flow, occlusion, fill=fill)
    p3 = _f32(probs if probs.ndim == 3 else probs[..., None])
    occ = np.ascontiguousarray(occlusion, dtype=np.bool_) if occlusion is not None else np.zeros((1, 1), np.bool_)
    out = cpu.warp_probs_bilinear(p3, _f32(flow), occ, occlusion is not None, np.float32(fill))
    return out if probs.ndim == 3 else out[..., 0]


def occlusion_mask(flow_fw: Any, flow_bw: Any, *, alpha1: float = 0.01, alpha2: float = 0.5) -> Any:
    """Forward-backward consistency check; True = occluded.

    With ``b = flow_bw(x + flow_fw(x))`` sampled bilinearly (as ``warp_probs``), x is occluded
    unless ``|f + b|^2 < alpha1 * (|f|^2 + |b|^2) + alpha2`` (float32, pixels^2). Samples out of
    frame, and NaN flow, count as occluded. ``flow_fw`` is t->t+1, ``flow_bw`` is t+1->t; the
    mask lives on frame t.
    """
    _check_flow("flow_fw", flow_fw, flow_fw.shape[:2])
    _check_flow("flow_bw", flow_bw, flow_fw.shape[:2])
    if is_cupy(flow_fw):
        return _gpu().occlusion_mask(flow_fw, flow_bw, alpha1=alpha1, alpha2=alpha2)
    return cpu.occlusion_fb(_f32(flow_fw), _f32(flow_bw), np.float32(alpha1), np.float32(alpha2))


# --------------------------------------------------------------------------- IoU and vote
def iou_matrix(labels_a: Any, labels_b: Any, valid: Any | None = None) -> tuple[Any, Any, Any]:
    """IoU between every instance of ``labels_a`` and every instance of ``labels_b``.

    Returns ``(ids_a, ids_b, iou)``: sorted non-zero IDs (int64) present on valid pixels, and a
    float64 ``len(ids_a) x len(ids_b)`` matrix. 0 is background: it is never an ID but its
    pixels still count in the other map's areas. Pixels where ``valid`` is False are left out
    of both areas. Labels must be non-negative integers. One joint histogram, no mask per pair.
    """
    _check_hw("labels_a", labels_a)
    _check_hw("labels_b", labels_b, labels_a.shape)
    _check_integer("labels_a", labels_a)
    _check_integer("labels_b", labels_b)
    if valid is not None:
        _check_hw("valid", valid, labels_a.shape)
    if is_cupy(labels_a):
        return _gpu().iou_matrix(labels_a, labels_b, valid)
    a = np.ascontiguousarray(labels_a).ravel()
    b = np.ascontiguousarray(labels_b).ravel()
    use_valid = valid is not None
    val = np.ascontiguousarray(valid, dtype=np.bool_).ravel() if use_valid else np.zeros(1, np.bool_)
    lo, hi = cpu.label_range(a, b, val, use_valid)
    if lo < 0:
        raise ValueError(f"iou_matrix: labels must be >= 0, found {lo}")
    if hi > _MAX_TABLE_LABEL:
        # sparse huge IDs: compact them first (same result, one extra sort)
        both, inv = np.unique(np.concatenate([a, b]), return_inverse=True)
        if both[0] != 0:  # keep 0 meaning background after compaction
            both, inv = np.concatenate([[0], both]), inv + 1
        ids_a, ids_b, iou = cpu.iou_table(inv[: a.size], inv[a.size :], val, use_valid, both.size - 1)
        return both[ids_a].astype(np.int64), both[ids_b].astype(np.int64), iou
    return cpu.iou_table(a, b, val, use_valid, max(int(hi), 0))


def majority_vote3(prev_warped: Any, cur: Any, next_warped: Any, ignore: int = 255) -> Any:
    """Per-pixel 3-frame vote over {prev_warped, cur, next_warped}; ties keep ``cur``.

    Ignore votes do not count, so a value other than ``cur`` needs two agreeing votes:
    the result is ``prev`` where ``prev == next != ignore``, else ``cur``. When ``cur`` is
    ``ignore`` it has no vote, and a single warped vote is not a majority of the window: the
    pixel stays ``ignore`` unless both warped neighbours agree, in which case it takes their
    value. Same dtype as ``cur``.
    """
    _check_hw("cur", cur)
    _check_hw("prev_warped", prev_warped, cur.shape)
    _check_hw("next_warped", next_warped, cur.shape)
    if is_cupy(cur):
        return _gpu().majority_vote3(prev_warped, cur, next_warped, ignore)
    c = np.ascontiguousarray(cur)
    p = np.ascontiguousarray(prev_warped, dtype=c.dtype)
    n = np.ascontiguousarray(next_warped, dtype=c.dtype)
    return cpu.vote3(p.ravel(), c.ravel(), n.ravel(), c.dtype.type(ignore)).reshape(c.shape)
