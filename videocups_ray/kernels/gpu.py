"""CuPy GPU kernels, imported lazily by ``videocups_ray.kernels`` when a CuPy array arrives.

Same arithmetic as ``reference.py``: float32, same operation order, compiled with
``--fmad=false`` so NVRTC does not fuse ``a*b + c`` into an FMA (which rounds once instead of
twice and would break bit-exact agreement with numpy and Numba).

Region growing is a concurrent union-find (Playne & Hawick style): one thread per pixel unites
it with each forward neighbour that passes the join test, linking the larger root under the
smaller with ``atomicMin``. Roots are therefore the smallest flat index of their set, i.e. the
first pixel in raster order, and an exclusive prefix sum over kept roots gives canonical IDs.

The kernel sources live in ``gpu_sources.py`` (no CuPy import) so a test can compile-check
them with NVRTC on a machine without a GPU.
"""

from __future__ import annotations

from functools import lru_cache

import cupy as cp
import numpy as np

from videocups_ray.kernels.gpu_sources import KERNEL_SOURCES, LABEL_CTYPES, NVRTC_OPTIONS

_BLOCK = 256


@lru_cache(maxsize=None)
def _kernel(source_key: str, name: str) -> cp.RawKernel:
    return cp.RawKernel(KERNEL_SOURCES[source_key], name, options=NVRTC_OPTIONS)


def _grid(n: int) -> tuple[int]:
    return (max(1, (n + _BLOCK - 1) // _BLOCK),)


def _f32(a) -> cp.ndarray:
    return cp.ascontiguousarray(cp.asarray(a), dtype=cp.float32)


def region_grow(depth, flow, motion_prob, *, alpha, radius, tau_d, tau_f, min_pixels) -> cp.ndarray:
    h, w = depth.shape
    n = h * w
    out = cp.zeros((h, w), cp.int32)
    if n == 0:
        return out
    if n >= 2**31:
        raise ValueError(f"region_grow on GPU: {h}x{w} pixels exceed int32 indices")
    d, f, m = _f32(depth).ravel(), _f32(flow), _f32(motion_prob).ravel()
    u, v = cp.ascontiguousarray(f[..., 0]).ravel(), cp.ascontiguousarray(f[..., 1]).ravel()
    thr_d = cp.empty(n, cp.float32)
    thr_f = cp.empty(n, cp.float32)
    seed = cp.empty(n, cp.uint8)
    parent = cp.empty(n, cp.int32)
    tau_f2 = np.float32(np.float32(tau_f) * np.float32(tau_f))
    args = (d, u, v, m, np.float32(alpha), np.float32(tau_d), tau_f2, np.int64(n), thr_d, thr_f, seed, parent)
    _kernel("region", "rg_init")(_grid(n), (_BLOCK,), args)
    args = (d, u, v, thr_d, thr_f, seed, parent, np.int32(h), np.int32(w), np.int32(radius))
    _kernel("region", "rg_union")(_grid(n), (_BLOCK,), args)
    size = cp.zeros(n, cp.int32)
    _kernel("region", "rg_flatten")(_grid(n), (_BLOCK,), (seed, parent, size, np.int64(n)))
    is_seed = seed.astype(cp.bool_)
    kept = is_seed & (parent == cp.arange(n, dtype=cp.int32)) & (size >= min_pixels)
    new_id = cp.cumsum(kept, dtype=cp.int32) * kept
    flat = cp.where(is_seed, new_id[parent], 0).astype(cp.int32)
    return flat.reshape(h, w)


def _occ_arg(occlusion) -> tuple[cp.ndarray, np.bool_]:
    if occlusion is None:
        return cp.zeros(1, cp.bool_), np.bool_(False)
    return cp.ascontiguousarray(cp.asarray(occlusion), dtype=cp.bool_), np.bool_(True)


def warp_labels(labels, flow, occlusion, *, fill) -> cp.ndarray:
    dt = np.dtype(labels.dtype)
    if dt not in LABEL_CTYPES:
        raise TypeError(f"warp_labels on GPU: unsupported label dtype {dt}")
    h, w = labels.shape
    lab = cp.ascontiguousarray(labels)
    out = cp.empty_like(lab)
    occ, use = _occ_arg(occlusion)
    args = (lab, _f32(flow), occ, use, dt.type(fill), np.int32(h), np.int32(w), out)
    _kernel(f"warp_labels_{dt.name}", "warp_labels")(_grid(h * w), (_BLOCK,), args)
    return out


def warp_probs(probs, flow, occlusion, *, fill) -> cp.ndarray:
    p3 = _f32(probs if probs.ndim == 3 else probs[..., None])
    h, w, c = p3.shape
    out = cp.empty((h, w, c), cp.float32)
    occ, use = _occ_arg(occlusion)
    args = (p3, _f32(flow), occ, use, np.float32(fill), np.int32(h), np.int32(w), np.int32(c), out)
    _kernel("occlusion_warp_probs", "warp_probs")(_grid(h * w), (_BLOCK,), args)
    return out if probs.ndim == 3 else out[..., 0]


def occlusion_mask(flow_fw, flow_bw, *, alpha1, alpha2) -> cp.ndarray:
    h, w = flow_fw.shape[:2]
    occ = cp.empty((h, w), cp.bool_)
    args = (_f32(flow_fw), _f32(flow_bw), np.float32(alpha1), np.float32(alpha2), np.int32(h), np.int32(w), occ)
    _kernel("occlusion_warp_probs", "occlusion_fb")(_grid(h * w), (_BLOCK,), args)
    return occ


def iou_matrix(labels_a, labels_b, valid):
    """One joint bincount over compacted IDs (CuPy's unique and bincount kernels)."""
    a, b = cp.asarray(labels_a).ravel(), cp.asarray(labels_b).ravel()
    if valid is not None:
        keep = cp.asarray(valid, dtype=cp.bool_).ravel()
        a, b = a[keep], b[keep]
    if a.size and int(cp.minimum(a.min(), b.min())) < 0:
        raise ValueError("iou_matrix: labels must be >= 0")
    ids_a, ia = cp.unique(a, return_inverse=True)
    ids_b, ib = cp.unique(b, return_inverse=True)
    ia, ib = ia.ravel(), ib.ravel()
    na, nb = int(ids_a.size), int(ids_b.size)
    joint = cp.bincount(ia.astype(cp.int64) * nb + ib, minlength=na * nb).reshape(na, nb)
    area_a = cp.bincount(ia, minlength=na)
    area_b = cp.bincount(ib, minlength=nb)
    sa = 1 if na and int(ids_a[0]) == 0 else 0
    sb = 1 if nb and int(ids_b[0]) == 0 else 0
    joint, area_a, area_b = joint[sa:, sb:], area_a[sa:], area_b[sb:]
    union = area_a[:, None] + area_b[None, :] - joint
    iou = joint / cp.maximum(union, 1)
    return ids_a[sa:].astype(cp.int64), ids_b[sb:].astype(cp.int64), iou.astype(cp.float64)


_vote = cp.ElementwiseKernel(
    "T prev, T cur, T nxt, T ignore",
    "T out",
    "out = (prev == nxt && prev != ignore) ? prev : cur",
    "videocups_vote3",
)


def majority_vote3(prev_warped, cur, next_warped, ignore) -> cp.ndarray:
    c = cp.asarray(cur)
    return _vote(cp.asarray(prev_warped, dtype=c.dtype), c, cp.asarray(next_warped, dtype=c.dtype), c.dtype.type(ignore))
