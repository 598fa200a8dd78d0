"""Numba CPU kernels. Same arithmetic as ``reference.py`` (float32, same operation order),
so results agree bit for bit; see ``videocups_ray.kernels`` for the definitions.

Region growing is a strip-parallel union-find: each thread unites the edges whose two ends lie
in its own strip of rows (no shared writes), then the few edges that cross a strip border are
united serially. Roots are always the smallest flat index of their set (the larger root is
linked under the smaller), so the root of a component is its first pixel in raster order and
one raster pass yields canonical labels.

prange indices are uint64: every index is cast with ``np.int64`` before arithmetic.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_JIT = {"cache": True, "nogil": True}


# --------------------------------------------------------------------------- union-find
@nb.njit(**_JIT)
def _find(parent: np.ndarray, x: np.int64) -> np.int64:
    # path halving; parent[x] <= x always, so this walks towards smaller indices
    while parent[x] != x:
        gp = parent[parent[x]]
        parent[x] = gp
        x = np.int64(gp)
    return x


@nb.njit(**_JIT)
def _grow_rows(d, u, v, thr_d, thr_f, seed, parent, w, radius, row_lo, row_hi, nb_lo, nb_hi):
    """Unite edges from pixels of rows [row_lo, row_hi) to forward neighbours in rows
    [nb_lo, nb_hi) (same-row neighbours only when row_lo <= nb_lo).

    A pair already in one set is skipped before its test (most pairs, in smooth regions);
    the test itself is branch-free (``&``/``|``), one unpredictable branch per pair in noise.
    """
    for i in range(row_lo, row_hi):
        for j in range(w):
            p = np.int64(i) * w + j
            if not seed[p]:
                continue
            dp, up, vp, tdp, tfp = d[p], u[p], v[p], thr_d[p], thr_f[p]
            rp = _find(parent, p)
            i_first = max(i, nb_lo)
            i_last = min(i + radius, nb_hi - 1)
            for i2 in range(i_first, i_last + 1):
                if i2 == i:
                    j_lo, j_hi = j + 1, min(j + radius, w - 1)
                else:
                    j_lo, j_hi = max(j - radius, 0), min(j + radius, w - 1)
                base = np.int64(i2) * w
                for q in range(base + j_lo, base + j_hi + 1):
                    if parent[q] == rp:
                        continue  # already in p's set
                    ad = abs(dp - d[q])
                    du = up - u[q]
                    dv = vp - v[q]
                    df = du * du + dv * dv
                    ok = seed[q] & (((ad < tdp) & (df < tfp)) | ((ad < thr_d[q]) & (df < thr_f[q])))
                    if not ok:
                        continue
                    rq = _find(parent, q)
                    if rq < rp:
                        parent[rp] = rq
                        rp = rq
                    elif rq > rp:
                        parent[rq] = rp


@nb.njit(parallel=True, **_JIT)
def _thresholds(d, u, v, tau_d, tau_f2, thr_d, thr_f):
    for k in nb.prange(d.size):
        p = np.int64(k)
        thr_d[p] = tau_d * abs(d[p])
        thr_f[p] = tau_f2 * (u[p] * u[p] + v[p] * v[p])


@nb.njit(parallel=True, **_JIT)
def region_grow_flat(d, u, v, m, h, w, alpha, radius, tau_d, tau_f2, min_pixels, n_strips):
    """All inputs flat float32 of length h*w; returns flat int32 canonical labels."""
    n = np.int64(h) * w
    thr_d = np.empty(n, np.float32)
    thr_f = np.empty(n, np.float32)
    _thresholds(d, u, v, tau_d, tau_f2, thr_d, thr_f)
    seed = np.empty(n, np.bool_)
    parent = np.empty(n, np.int32)
    for k in nb.prange(n):
        p = np.int64(k)
        seed[p] = m[p] > alpha
        parent[p] = p
    # phase 1: edges inside a strip, one strip per task
    rows_per = (h + n_strips - 1) // n_strips
    for s in nb.prange(n_strips):
        lo = np.int64(s) * rows_per
        hi = min(lo + rows_per, h)
        if lo < hi:
            _grow_rows(d, u, v, thr_d, thr_f, seed, parent, w, radius, lo, hi, lo, hi)
    # phase 2: edges crossing a strip border (serial; ~radius rows per border)
    for s in range(n_strips - 1):
        border = (s + 1) * rows_per
        if border >= h:
            break
        lo = max(border - radius, s * rows_per)
        _grow_rows(d, u, v, thr_d, thr_f, seed, parent, w, radius, lo, border, border, h)
    # phase 3: roots (parent < self, so one raster pass), sizes, canonical numbering
    size = np.zeros(n, np.int32)
    for p in range(n):
        if seed[p]:
            r = parent[parent[p]] if parent[p] != p else p
            parent[p] = r
            size[r] += 1
    new_id = np.zeros(n, np.int32)
    nxt = 0
    for p in range(n):
        if seed[p] and parent[p] == p and size[p] >= min_pixels:
            nxt += 1
            new_id[p] = nxt
    out = np.zeros(n, np.int32)
    for k in nb.prange(n):
        p = np.int64(k)
        if seed[p]:
            out[p] = new_id[parent[p]]
    return out


# --------------------------------------------------------------------------- warping
@nb.njit(parallel=True, **_JIT)
def warp_labels_nn(labels, flow, occlusion, use_occlusion, fill):
    """Nearest-neighbour backward warp; rounding ``floor(p + 0.5)`` in float32."""
    h, w = labels.shape
    out = np.empty_like(labels)
    half = np.float32(0.5)
    fh, fw = np.float32(h), np.float32(w)
    for ii in nb.prange(h):
        i = np.int64(ii)
        fi = np.float32(i)
        for j in range(w):
            rr = np.floor(fi + flow[i, j, 1] + half)
            cc = np.floor(np.float32(j) + flow[i, j, 0] + half)
            ok = rr >= 0 and rr < fh and cc >= 0 and cc < fw
            if use_occlusion and occlusion[i, j]:
                ok = False
            out[i, j] = labels[np.int64(rr), np.int64(cc)] if ok else fill
    return out


@nb.njit(**_JIT)
def _bilinear_at(values, h, w, py, px, i, j, out):
    """Bilinear sample of ``values`` at (py, px) into ``out[i, j, :]``; False if out of frame."""
    c = values.shape[2]
    if not (py >= 0 and py <= np.float32(h - 1) and px >= 0 and px <= np.float32(w - 1)):
        for k in range(c):
            out[i, j, k] = 0
        return False
    y0f = np.floor(py)
    x0f = np.floor(px)
    ay = py - y0f
    ax = px - x0f
    by = np.float32(1) - ay
    bx = np.float32(1) - ax
    y0 = np.int64(y0f)
    x0 = np.int64(x0f)
    y1 = min(y0 + 1, h - 1)
    x1 = min(x0 + 1, w - 1)
    for k in range(c):
        top = bx * values[y0, x0, k] + ax * values[y0, x1, k]
        bot = bx * values[y1, x0, k] + ax * values[y1, x1, k]
        out[i, j, k] = by * top + ay * bot
    return True


@nb.njit(parallel=True, **_JIT)
def warp_probs_bilinear(probs, flow, occlusion, use_occlusion, fill):
    """Bilinear backward warp of HxWxC float32; out of frame / occluded -> ``fill``."""
    h, w, c = probs.shape
    out = np.empty((h, w, c), np.float32)
    for ii in nb.prange(h):
        i = np.int64(ii)
        fi = np.float32(i)
        for j in range(w):
            ok = _bilinear_at(probs, h, w, fi + flow[i, j, 1], np.float32(j) + flow[i, j, 0], i, j, out)
            if not ok or (use_occlusion and occlusion[i, j]):
                for k in range(c):
                    out[i, j, k] = fill
    return out


@nb.njit(parallel=True, **_JIT)
def occlusion_fb(flow_fw, flow_bw, alpha1, alpha2):
    """Forward-backward consistency; True = occluded (out of frame and NaN included)."""
    h, w, _ = flow_fw.shape
    occ = np.empty((h, w), np.bool_)
    for ii in nb.prange(h):
        i = np.int64(ii)
        fi = np.float32(i)
        row = np.empty((1, w, 2), np.float32)
        for j in range(w):
            fu = flow_fw[i, j, 0]
            fv = flow_fw[i, j, 1]
            if not _bilinear_at(flow_bw, h, w, fi + fv, np.float32(j) + fu, 0, j, row):
                occ[i, j] = True
                continue
            bu = row[0, j, 0]
            bv = row[0, j, 1]
            su = fu + bu
            sv = fv + bv
            lhs = su * su + sv * sv
            rhs = alpha1 * ((fu * fu + fv * fv) + (bu * bu + bv * bv)) + alpha2
            occ[i, j] = not (lhs < rhs)
    return occ


# --------------------------------------------------------------------------- IoU and vote
@nb.njit(**_JIT)
def label_range(a, b, valid, use_valid):
    """(min, max) over the (valid) pixels of both maps; (0, -1) when there is none."""
    lo = np.int64(0)
    hi = np.int64(-1)
    first = True
    for k in range(a.size):
        if use_valid and not valid[k]:
            continue
        x = np.int64(a[k])
        y = np.int64(b[k])
        if first:
            lo = min(x, y)
            hi = max(x, y)
            first = False
        else:
            lo = min(lo, x, y)
            hi = max(hi, x, y)
    return lo, hi


@nb.njit(**_JIT)
def iou_table(a, b, valid, use_valid, max_label):
    """IoU from a direct lookup table of non-negative labels <= max_label."""
    n = a.size
    idx_a = np.full(max_label + 1, -1, np.int64)
    idx_b = np.full(max_label + 1, -1, np.int64)
    for k in range(n):
        if use_valid and not valid[k]:
            continue
        idx_a[a[k]] = 0
        idx_b[b[k]] = 0
    na = 0
    nb_ = 0
    for lab in range(1, max_label + 1):  # ascending: ids come out sorted, 0 excluded
        if idx_a[lab] == 0:
            idx_a[lab] = na
            na += 1
        if idx_b[lab] == 0:
            idx_b[lab] = nb_
            nb_ += 1
    ids_a = np.empty(na, np.int64)
    ids_b = np.empty(nb_, np.int64)
    for lab in range(1, max_label + 1):
        if idx_a[lab] >= 0:
            ids_a[idx_a[lab]] = lab
        if idx_b[lab] >= 0:
            ids_b[idx_b[lab]] = lab
    joint = np.zeros((na + 1, nb_ + 1), np.int64)  # last row / column: background
    for k in range(n):
        if use_valid and not valid[k]:
            continue
        x = a[k]
        y = b[k]
        ra = idx_a[x] if x != 0 else na
        cb = idx_b[y] if y != 0 else nb_
        joint[ra, cb] += 1
    iou = np.zeros((na, nb_), np.float64)
    area_b = joint.sum(axis=0)
    for r in range(na):
        area_a = joint[r].sum()
        for c in range(nb_):
            inter = joint[r, c]
            iou[r, c] = inter / max(area_a + area_b[c] - inter, 1)
    return ids_a, ids_b, iou


@nb.njit(**_JIT)  # memory-bound and vectorised: threads only add overhead
def vote3(prev_warped, cur, next_warped, ignore):
    """``prev`` where ``prev == next != ignore``, else ``cur``; flat arrays."""
    out = np.empty_like(cur)
    for p in range(cur.size):
        a = prev_warped[p]
        out[p] = a if (a == next_warped[p]) & (a != ignore) else cur[p]
    return out
