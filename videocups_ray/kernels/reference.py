"""Plain vectorised numpy/scipy versions of every kernel: the oracle of the tests and the
baseline of ``benchmarks/bench_kernels.py``.

The Numba (``cpu.py``) and CuPy (``gpu.py``) kernels must agree with these *exactly* (labels
up to nothing: labels are canonical; floats bit for bit). Exactness is achieved by doing every
floating-point step in float32 with the same operation order in all three implementations
(no fused multiply-add: CuPy kernels are compiled with ``--fmad=false``). The shared
arithmetic definitions are documented in ``videocups_ray.kernels`` and repeated inline here.

Inputs are assumed validated and converted by the dispatchers in ``__init__`` (contiguous
float32 depth/motion/flow, flow as HxWx2 with ``flow[..., 0]`` = column (x) displacement).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

F32 = np.float32


# --------------------------------------------------------------------------- region growing
def forward_offsets(radius: int) -> list[tuple[int, int]]:
    """The half of the L-inf window that comes after the centre in raster order.

    Every unordered pixel pair within ``radius`` appears exactly once as (x, x + offset).
    """
    offs = [(0, dx) for dx in range(1, radius + 1)]
    offs += [(dy, dx) for dy in range(1, radius + 1) for dx in range(-radius, radius + 1)]
    return offs


def edge_thresholds(
    depth: np.ndarray, flow: np.ndarray, tau_d: float, tau_f: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel right-hand sides of the join tests, float32: ``tau_d*|d|``, ``tau_f^2*|f|^2``."""
    thr_d = F32(tau_d) * np.abs(depth)
    u, v = flow[..., 0], flow[..., 1]
    thr_f = F32(F32(tau_f) * F32(tau_f)) * (u * u + v * v)
    return thr_d, thr_f


def _directed_edges(
    depth: np.ndarray,
    flow: np.ndarray,
    seed: np.ndarray,
    thr_d: np.ndarray,
    thr_f: np.ndarray,
    dy: int,
    dx: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (x, y) of pairs y = x + (dy, dx) that form an edge.

    Edge iff both are seeds and (test(x->y) or test(y->x)), where test(x->y) is
    ``|d_x-d_y| < tau_d*|d_x|  and  |f_x-f_y|^2 < tau_f^2*|f_x|^2``.
    """
    h, w = depth.shape
    ys, ye = 0, h - dy
    xs, xe = max(0, -dx), min(w, w - dx)
    if ye <= ys or xe <= xs:
        empty = np.empty(0, np.int64)
        return empty, empty
    a = (slice(ys, ye), slice(xs, xe))
    b = (slice(ys + dy, ye + dy), slice(xs + dx, xe + dx))
    with np.errstate(invalid="ignore"):  # inf - inf = NaN: compares False, as intended
        ad = np.abs(depth[a] - depth[b])
    du = flow[a][..., 0] - flow[b][..., 0]
    dv = flow[a][..., 1] - flow[b][..., 1]
    df = du * du + dv * dv
    fwd = (ad < thr_d[a]) & (df < thr_f[a])
    bwd = (ad < thr_d[b]) & (df < thr_f[b])
    edge = seed[a] & seed[b] & (fwd | bwd)
    rr, cc = np.nonzero(edge)
    src = (rr + ys).astype(np.int64) * w + (cc + xs)
    return src, src + (dy * w + dx)


def canonical_labels(root: np.ndarray, seed: np.ndarray, min_pixels: int) -> np.ndarray:
    """Turn any component labelling of the seed pixels into the canonical int32 map.

    Regions are numbered 1..N in raster order of their first pixel; regions with fewer than
    ``min_pixels`` pixels become 0 and do not use a number.
    """
    h, w = seed.shape
    out = np.zeros(h * w, np.int32)
    flat_seed = seed.ravel()
    comp = root.ravel()[flat_seed]
    if comp.size == 0:
        return out.reshape(h, w)
    uniq, first, inverse, counts = np.unique(comp, return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(first, kind="stable")  # components in raster order of first pixel
    keep = counts[order] >= min_pixels
    new_id = np.zeros(uniq.size, np.int32)
    new_id[order[keep]] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    out[flat_seed] = new_id[inverse]
    return out.reshape(h, w)


def region_grow(
    depth: np.ndarray,
    flow: np.ndarray,
    motion_prob: np.ndarray,
    *,
    alpha: float,
    radius: int,
    tau_d: float,
    tau_f: float,
    min_pixels: int,
) -> np.ndarray:
    """Reference region growing: edges offset by offset, components by scipy's csgraph.

    To keep memory bounded (the worst case has ~150 edges per pixel), components are merged
    after every offset: the graph of one offset is built on the current component labels.
    """
    h, w = depth.shape
    seed = motion_prob > F32(alpha)
    thr_d, thr_f = edge_thresholds(depth, flow, tau_d, tau_f)
    n = h * w
    comp = np.arange(n, dtype=np.int64)
    for dy, dx in forward_offsets(radius):
        src, dst = _directed_edges(depth, flow, seed, thr_d, thr_f, dy, dx)
        a, b = comp[src], comp[dst]
        differ = a != b
        if not differ.any():
            continue
        a, b = a[differ], b[differ]
        graph = coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(n, n)).tocsr()
        _, merged = connected_components(graph, directed=False)
        comp = merged[comp]
    return canonical_labels(comp.reshape(h, w), seed, min_pixels)


# --------------------------------------------------------------------------- warping
def _sample_positions(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sampling positions ``x + flow(x)`` in float32: (rows, cols)."""
    h, w = flow.shape[:2]
    cols = np.arange(w, dtype=F32)[None, :] + flow[..., 0]
    rows = np.arange(h, dtype=F32)[:, None] + flow[..., 1]
    return rows, cols


def warp_labels(labels: np.ndarray, flow: np.ndarray, occlusion: np.ndarray | None, fill: int) -> np.ndarray:
    """Nearest-neighbour backward warp: ``out(x) = labels(round(x + flow(x)))``.

    Rounding is ``floor(p + 0.5)`` in float32; in frame iff ``0 <= round(p) < size``.
    """
    h, w = labels.shape
    rows, cols = _sample_positions(flow)
    rr = np.floor(rows + F32(0.5))
    cc = np.floor(cols + F32(0.5))
    inside = (rr >= 0) & (rr < F32(h)) & (cc >= 0) & (cc < F32(w))
    if occlusion is not None:
        inside &= ~occlusion
    out = np.full((h, w), fill, dtype=labels.dtype)
    ri = rr[inside].astype(np.int64)
    ci = cc[inside].astype(np.int64)
    out[inside] = labels[ri, ci]
    return out


def bilinear_sample(values: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples of HxWxC float32 ``values`` at ``x + flow(x)``, and the in-frame mask.

    In frame iff ``0 <= p <= size - 1`` on both axes (NaN is out of frame). With
    ``x0 = floor(p)``, ``x1 = min(x0 + 1, size - 1)``, ``a = p - x0`` (float32)::

        out = (1 - ay) * ((1 - ax) * v00 + ax * v01) + ay * ((1 - ax) * v10 + ax * v11)

    Out-of-frame samples are 0.
    """
    h, w, c = values.shape
    rows, cols = _sample_positions(flow)
    inside = (rows >= 0) & (rows <= F32(h - 1)) & (cols >= 0) & (cols <= F32(w - 1))
    out = np.zeros((h, w, c), F32)
    py, px = rows[inside], cols[inside]
    y0f, x0f = np.floor(py), np.floor(px)
    ay, ax = py - y0f, px - x0f
    y0, x0 = y0f.astype(np.int64), x0f.astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    ay, ax = ay[:, None], ax[:, None]
    by, bx = F32(1) - ay, F32(1) - ax
    top = bx * values[y0, x0] + ax * values[y0, x1]
    bot = bx * values[y1, x0] + ax * values[y1, x1]
    out[inside] = by * top + ay * bot
    return out, inside


def warp_probs(probs: np.ndarray, flow: np.ndarray, occlusion: np.ndarray | None, fill: float) -> np.ndarray:
    """Bilinear backward warp of HxWxC float32 maps; out-of-frame / occluded -> ``fill``."""
    out, inside = bilinear_sample(probs, flow)
    if occlusion is not None:
        inside &= ~occlusion
    out[~inside] = F32(fill)
    return out


def occlusion_mask(flow_fw: np.ndarray, flow_bw: np.ndarray, alpha1: float, alpha2: float) -> np.ndarray:
    """Forward-backward check: occluded iff NOT ``|s|^2 < a1 * (|f|^2 + |b|^2) + a2``.

    ``b = flow_bw(x + f(x))`` sampled bilinearly, ``s = f + b``, all float32; out of frame and
    NaN count as occluded.
    """
    bw, inside = bilinear_sample(flow_bw, flow_fw)
    fu, fv = flow_fw[..., 0], flow_fw[..., 1]
    bu, bv = bw[..., 0], bw[..., 1]
    su, sv = fu + bu, fv + bv
    lhs = su * su + sv * sv
    rhs = F32(alpha1) * ((fu * fu + fv * fv) + (bu * bu + bv * bv)) + F32(alpha2)
    return ~(inside & (lhs < rhs))


# --------------------------------------------------------------------------- IoU and vote
def iou_matrix(
    labels_a: np.ndarray, labels_b: np.ndarray, valid: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every non-zero ID of a with every non-zero ID of b, from one joint bincount."""
    a, b = labels_a.ravel(), labels_b.ravel()
    if valid is not None:
        keep = valid.ravel()
        a, b = a[keep], b[keep]
    ids_a, ia = np.unique(a, return_inverse=True)
    ids_b, ib = np.unique(b, return_inverse=True)
    na, nb = ids_a.size, ids_b.size
    joint = np.bincount(ia.astype(np.int64) * nb + ib, minlength=na * nb).reshape(na, nb)
    # drop the background row / column (ID 0 sorts first when present)
    if na and ids_a[0] == 0:
        joint, ids_a = joint[1:], ids_a[1:]
    if nb and ids_b[0] == 0:
        joint, ids_b = joint[:, 1:], ids_b[1:]
    area_a = np.bincount(ia, minlength=na)[na - ids_a.size :]
    area_b = np.bincount(ib, minlength=nb)[nb - ids_b.size :]
    union = area_a[:, None] + area_b[None, :] - joint
    iou = joint / np.maximum(union, 1)
    return ids_a.astype(np.int64), ids_b.astype(np.int64), iou.astype(np.float64)


def majority_vote3(prev_warped: np.ndarray, cur: np.ndarray, next_warped: np.ndarray, ignore: int) -> np.ndarray:
    """``prev`` where ``prev == next != ignore``, else ``cur`` (see the dispatcher's docstring)."""
    agree = (prev_warped == next_warped) & (prev_warped != ignore)
    return np.where(agree, prev_warped, cur).astype(cur.dtype)
