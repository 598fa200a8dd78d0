"""Kernels: Numba == numpy reference exactly, plus hand-made cases with known answers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from videocups_ray import kernels as K
from videocups_ray.kernels import cpu
from videocups_ray.kernels import reference as R

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RG_DEFAULTS = {"alpha": 0.15, "tau_d": 0.02, "tau_f": 0.04}


def _piecewise(rng: np.random.Generator, h: int, w: int, levels: np.ndarray, noise: float) -> np.ndarray:
    """Blocky map (so many pairs pass the join tests) with relative noise near the thresholds."""
    by, bx = max(1, h // 3), max(1, w // 3)
    idx = rng.integers(0, len(levels), size=(h // by + 1, w // bx + 1))
    base = levels[idx].repeat(by, 0).repeat(bx, 1)[:h, :w]
    return (base * (1 + noise * rng.standard_normal(base.shape))).astype(np.float32)


def make_cues(seed: int, h: int, w: int, *, specials: bool = True, all_seeds: bool = False):
    """Random depth, flow, motion with zeros, NaN and inf sprinkled in."""
    rng = np.random.default_rng(seed)
    depth = _piecewise(rng, h, w, np.array([5.0, 5.05, 20.0, 0.0]), 0.012)
    fu = _piecewise(rng, h, w, np.array([3.0, -3.0, 0.0, 3.1]), 0.025)
    fv = _piecewise(rng, h, w, np.array([1.0, -1.0, 0.0]), 0.025)
    flow = np.stack([fu, fv], -1)
    motion = rng.random((h, w)).astype(np.float32)
    if all_seeds:
        motion[:] = 1.0
    if specials and h * w:
        k = max(1, h * w // 15)
        for arr, val in ((depth, np.nan), (depth, 0.0), (depth, np.inf), (motion, np.nan)):
            arr.ravel()[rng.integers(0, h * w, k)] = val
        flow.reshape(-1, 2)[rng.integers(0, h * w, k)] = np.nan
        flow.reshape(-1, 2)[rng.integers(0, h * w, k)] = 0.0
    return depth, flow, motion


def same_partition(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_array_equal(a, b)  # canonical labels: equal, not just up to renaming


# --------------------------------------------------------------------------- region growing
@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    h=st.integers(0, 23),
    w=st.integers(0, 29),
    radius=st.sampled_from([1, 2, 3, 8, 14]),
    min_pixels=st.sampled_from([1, 3, 10]),
    all_seeds=st.booleans(),
)
def test_region_grow_numba_matches_reference(seed, h, w, radius, min_pixels, all_seeds):
    depth, flow, motion = make_cues(seed, h, w, all_seeds=all_seeds)
    kw = dict(RG_DEFAULTS, radius=radius, min_pixels=min_pixels)
    got = K.region_grow(depth, flow, motion, **kw)
    assert got.dtype == np.int32 and got.shape == (h, w)
    same_partition(got, R.region_grow(depth, flow, motion, **kw))


@pytest.mark.parametrize("n_strips", [1, 2, 5, 20])
@pytest.mark.parametrize("radius", [1, 5, 14])
def test_region_grow_strip_count_does_not_change_labels(n_strips, radius):
    """Strips thinner than the radius exercise edges that cross several strip borders."""
    h, w = 40, 33
    depth, flow, motion = make_cues(7 + radius, h, w, all_seeds=True)
    tf2 = np.float32(np.float32(0.04) * np.float32(0.04))
    args = (depth.ravel(), flow[..., 0].ravel().copy(), flow[..., 1].ravel().copy(), motion.ravel())
    got = cpu.region_grow_flat(*args, h, w, np.float32(0.15), radius, np.float32(0.02), tf2, 1, n_strips)
    want = R.region_grow(depth, flow, motion, **RG_DEFAULTS, radius=radius, min_pixels=1)
    np.testing.assert_array_equal(got.reshape(h, w), want)


def test_region_grow_two_objects_known_answer():
    h, w = 30, 40
    depth = np.full((h, w), 10.0, np.float32)
    flow = np.zeros((h, w, 2), np.float32)
    motion = np.zeros((h, w), np.float32)
    depth[2:8, 20:30], flow[2:8, 20:30], motion[2:8, 20:30] = 8.0, (4.0, 0.0), 0.9  # object A
    depth[15:25, 3:9], flow[15:25, 3:9], motion[15:25, 3:9] = 6.0, (-2.0, 1.0), 0.9  # object B
    # C touches A and moves alike but lies 20 % deeper: no edge, its own region
    depth[8:12, 20:30], flow[8:12, 20:30], motion[8:12, 20:30] = 9.6, (4.0, 0.0), 0.9
    motion[28, 38] = 0.9  # a lone seed, removed by min_pixels
    lab = K.region_grow(depth, flow, motion, min_pixels=5)
    want = np.zeros((h, w), np.int32)
    want[2:8, 20:30], want[8:12, 20:30], want[15:25, 3:9] = 1, 2, 3
    np.testing.assert_array_equal(lab, want)
    np.testing.assert_array_equal(K.region_grow(depth, flow, motion, min_pixels=1)[28, 38], 4)


def test_region_grow_radius_bridges_gaps():
    """Two halves of one object separated by a 5-px gap join iff radius > 5."""
    depth = np.full((10, 30), 7.0, np.float32)
    flow = np.full((10, 30, 2), 3.0, np.float32)
    motion = np.zeros((10, 30), np.float32)
    motion[:, 0:10] = motion[:, 15:25] = 1.0
    assert K.region_grow(depth, flow, motion, radius=5, min_pixels=1).max() == 2
    assert K.region_grow(depth, flow, motion, radius=6, min_pixels=1).max() == 1


def test_region_grow_zero_and_nan_never_divide():
    """d_x = 0 or f_x = 0 rejects x's own test; a NaN pixel joins nobody; no warnings raised."""
    depth = np.full((1, 3), 5.0, np.float32)
    flow = np.full((1, 3, 2), 2.0, np.float32)
    motion = np.ones((1, 3), np.float32)
    depth[0, 1] = np.nan
    with np.errstate(all="raise"):
        lab = K.region_grow(depth, flow, motion, radius=2, min_pixels=1)
    np.testing.assert_array_equal(lab, [[1, 2, 1]])
    # zero flow everywhere: ||f_x|| = 0 on both sides, strict '<' fails, nothing joins
    lab = K.region_grow(np.ones((2, 2), np.float32), np.zeros((2, 2, 2), np.float32), np.ones((2, 2), np.float32), radius=1, min_pixels=1)
    np.testing.assert_array_equal(lab, [[1, 2], [3, 4]])


def test_region_grow_asymmetric_test_is_or_of_both_directions():
    """|d_x - d_y| = 0.203: x (10.0) rejects y (0.203 >= 0.2) but y (10.203) accepts x
    (0.203 < 0.204); the undirected edge is the OR, so they form one region."""
    depth = np.array([[10.0, 10.203]], np.float32)
    flow = np.full((1, 2, 2), 1.0, np.float32)
    motion = np.ones((1, 2), np.float32)
    for impl in (K.region_grow, R.region_grow):
        np.testing.assert_array_equal(impl(depth, flow, motion, **RG_DEFAULTS, radius=1, min_pixels=1), [[1, 1]])
    # both directions fail with a tighter tau_d: two regions
    np.testing.assert_array_equal(K.region_grow(depth, flow, motion, tau_d=0.019, radius=1, min_pixels=1), [[1, 2]])


def test_region_grow_edge_shapes_and_bad_input():
    one = np.ones((1, 1), np.float32)
    assert K.region_grow(one, np.zeros((1, 1, 2), np.float32), one, min_pixels=1).tolist() == [[1]]
    assert K.region_grow(np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros((0, 5), np.float32)).shape == (0, 5)
    with pytest.raises(ValueError, match="flow"):
        K.region_grow(one, np.zeros((1, 2, 2), np.float32), one)
    with pytest.raises(ValueError, match="motion_prob"):
        K.region_grow(one, np.zeros((1, 1, 2), np.float32), np.ones((2, 1)))
    with pytest.raises(ValueError, match="radius"):
        K.region_grow(one, np.zeros((1, 1, 2), np.float32), one, radius=0)


# --------------------------------------------------------------------------- warping
flows = st.tuples(st.integers(0, 2**31), st.integers(0, 17), st.integers(0, 19), st.floats(0.0, 12.0))


def _flow(seed: int, h: int, w: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    f = (rng.standard_normal((h, w, 2)) * scale).astype(np.float32)
    if h * w:
        f.reshape(-1, 2)[rng.integers(0, h * w, max(1, h * w // 20))] = np.nan
        f.reshape(-1, 2)[rng.integers(0, h * w, max(1, h * w // 20))] = np.round(f.reshape(-1, 2)[: 1]) + 0.5
    return f


@SETTINGS
@given(args=flows, with_occ=st.booleans(), dtype=st.sampled_from([np.uint8, np.int32, np.int64]))
def test_warp_labels_matches_reference(args, with_occ, dtype):
    seed, h, w, scale = args
    rng = np.random.default_rng(seed + 1)
    labels = rng.integers(0, 9, (h, w)).astype(dtype)
    flow = _flow(seed, h, w, scale)
    occ = rng.random((h, w)) < 0.2 if with_occ else None
    got = K.warp_labels(labels, flow, occ, fill=5)
    assert got.dtype == labels.dtype
    np.testing.assert_array_equal(got, R.warp_labels(labels, flow, occ, 5))


@SETTINGS
@given(args=flows, with_occ=st.booleans(), channels=st.sampled_from([0, 1, 3]))
def test_warp_probs_matches_reference_bitwise(args, with_occ, channels):
    seed, h, w, scale = args
    rng = np.random.default_rng(seed + 2)
    probs = rng.random((h, w, channels) if channels else (h, w)).astype(np.float32)
    flow = _flow(seed, h, w, scale)
    occ = rng.random((h, w)) < 0.2 if with_occ else None
    got = K.warp_probs(probs, flow, occ, fill=-1.0)
    want = R.warp_probs(probs if channels else probs[..., None], flow, occ, -1.0)
    np.testing.assert_array_equal(got, want if channels else want[..., 0])


@SETTINGS
@given(args=flows, consistent=st.booleans())
def test_occlusion_mask_matches_reference(args, consistent):
    seed, h, w, scale = args
    fw = _flow(seed, h, w, scale)
    bw = -fw + _flow(seed + 3, h, w, 0.7) if consistent else _flow(seed + 3, h, w, scale)
    np.testing.assert_array_equal(K.occlusion_mask(fw, bw), R.occlusion_mask(fw, bw, 0.01, 0.5))


def test_warp_known_shift():
    """flow = (+2, +1) everywhere: out(y, x) = in(y + 1, x + 2); the last row/columns leave the frame."""
    labels = np.arange(1, 31, dtype=np.int32).reshape(5, 6)
    flow = np.zeros((5, 6, 2), np.float32)
    flow[..., 0], flow[..., 1] = 2.0, 1.0
    want = np.zeros_like(labels)
    want[:4, :4] = labels[1:, 2:]
    np.testing.assert_array_equal(K.warp_labels(labels, flow), want)
    occ = np.zeros((5, 6), bool)
    occ[0, 0] = True
    assert K.warp_labels(labels, flow, occ, fill=255)[0, 0] == 255
    probs = labels.astype(np.float32)
    np.testing.assert_array_equal(K.warp_probs(probs, flow), want.astype(np.float32))
    flow[..., 0] = 0.5  # half a pixel right: mean of two columns
    half = K.warp_probs(probs, flow)
    np.testing.assert_allclose(half[:4, :5], (probs[1:, :5] + probs[1:, 1:]) / 2)
    assert half[:4, 5].tolist() == [0, 0, 0, 0]  # 5.5 > w - 1: out of frame


def test_occlusion_known_cases():
    h, w = 8, 10
    fw = np.zeros((h, w, 2), np.float32)
    fw[..., 0] = 3.0
    bw = np.zeros((h, w, 2), np.float32)
    bw[..., 0] = -3.0
    occ = K.occlusion_mask(fw, bw)
    assert not occ[:, : w - 3].any() and occ[:, w - 3 :].all()  # moved out of frame
    bw[2, 5] = (4.0, 0.0)  # inconsistent backward flow where row 2, cols 2 land
    assert K.occlusion_mask(fw, bw)[2, 2]
    fw[0, 0] = np.nan
    assert K.occlusion_mask(fw, bw)[0, 0]


# --------------------------------------------------------------------------- IoU and vote
def brute_iou(a, b, valid):
    m = valid if valid is not None else np.ones(a.shape, bool)
    ia = [i for i in np.unique(a[m]) if i != 0]
    ib = [j for j in np.unique(b[m]) if j != 0]
    out = np.zeros((len(ia), len(ib)))
    for r, i in enumerate(ia):
        for c, j in enumerate(ib):
            inter = np.sum((a == i) & (b == j) & m)
            out[r, c] = inter / np.sum(((a == i) | (b == j)) & m)
    return np.array(ia, np.int64), np.array(ib, np.int64), out


@SETTINGS
@given(seed=st.integers(0, 2**31), h=st.integers(0, 15), w=st.integers(0, 15), with_valid=st.booleans(), big=st.booleans())
def test_iou_matrix_matches_reference_and_brute_force(seed, h, w, with_valid, big):
    rng = np.random.default_rng(seed)
    ids = np.array([0, 1, 2, 7, 40] + ([2**40, 2**22 + 3] if big else []), np.int64)
    a = ids[rng.integers(0, ids.size, (h, w))]
    b = ids[rng.integers(0, ids.size, (h, w))]
    valid = rng.random((h, w)) < 0.7 if with_valid else None
    got = K.iou_matrix(a, b, valid)
    for g, r, bf in zip(got, R.iou_matrix(a, b, valid), brute_iou(a, b, valid)):
        np.testing.assert_array_equal(g, r)
        np.testing.assert_allclose(g, bf, rtol=1e-12)


def test_iou_matrix_errors_and_dtypes():
    a = np.array([[1, 1], [0, 2]], np.uint8)
    ids_a, ids_b, iou = K.iou_matrix(a, a.astype(np.int32))
    assert ids_a.tolist() == [1, 2] and ids_b.tolist() == [1, 2]
    np.testing.assert_array_equal(iou, np.eye(2))
    with pytest.raises(ValueError, match=">= 0"):
        K.iou_matrix(np.array([[-1]]), np.array([[1]]))
    with pytest.raises(ValueError, match="labels_b"):
        K.iou_matrix(a, a[:1])
    with pytest.raises(TypeError, match="labels_a"):
        K.iou_matrix(a.astype(float), a)


@SETTINGS
@given(seed=st.integers(0, 2**31), h=st.integers(0, 12), w=st.integers(0, 12))
def test_majority_vote3_matches_reference(seed, h, w):
    rng = np.random.default_rng(seed)
    maps = [rng.choice(np.array([0, 1, 2, 255], np.uint8), (h, w)) for _ in range(3)]
    np.testing.assert_array_equal(K.majority_vote3(*maps, ignore=255), R.majority_vote3(*maps, 255))


@pytest.mark.parametrize(
    ("prev", "cur", "nxt", "want"),
    [
        (1, 2, 1, 1),  # two votes beat cur
        (1, 2, 3, 2),  # three-way tie -> cur
        (1, 2, 255, 2),  # 1-1 tie (ignore does not vote) -> cur
        (255, 2, 255, 2),
        (1, 255, 1, 1),  # cur ignore: both neighbours agree -> their value
        (1, 255, 255, 255),  # cur ignore, a single vote is not a majority -> ignore
        (1, 255, 3, 255),
        (255, 255, 255, 255),
    ],
)
def test_majority_vote3_rules(prev, cur, nxt, want):
    arr = [np.full((1, 1), v, np.uint8) for v in (prev, cur, nxt)]
    assert K.majority_vote3(*arr, ignore=255)[0, 0] == want


def test_import_and_cpu_kernels_work_without_cupy():
    """``sys.modules['cupy'] = None`` makes any ``import cupy`` fail, as on a machine without it."""
    code = (
        "import sys; sys.modules['cupy'] = None\n"
        "import numpy as np, videocups_ray, videocups_ray.kernels as K\n"
        "lab = np.ones((3, 3), np.int32)\n"
        "assert K.iou_matrix(lab, lab)[2].tolist() == [[1.0]]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
