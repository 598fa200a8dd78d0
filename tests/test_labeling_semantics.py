"""Cosine k-means (mergeable statistics, restartable fits), centroid files, two-scale fusion."""

from __future__ import annotations

import numpy as np
import pytest

from videocups_ray.config import LabelingConfig
from videocups_ray.data.types import DataError
from videocups_ray.labeling import (
    CosineKMeans,
    SemanticLabeler,
    init_centroids,
    load_centroids,
    merge_stats,
    partial_stats,
    save_centroids,
    update_centroids,
)


def blobs(n_per: int, k: int, c: int, seed: int, spread: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, c))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(k), n_per)
    x = centres[labels] + spread * rng.normal(size=(k * n_per, c))
    order = rng.permutation(len(x))
    return x[order], labels[order]


def test_merged_halves_equal_whole_including_empty_cluster_reseed():
    x, _ = blobs(200, 5, 8, seed=1)
    cents = init_centroids(x, 6, seed=0)
    cents[5] = -cents[0]  # a centroid nobody picks: exercises the deterministic re-seed
    whole, merged = cents.copy(), cents.copy()
    for _ in range(6):
        s_whole = partial_stats(x, whole)
        s_merged = merge_stats([partial_stats(x[:317], merged), partial_stats(x[317:], merged)])
        np.testing.assert_array_equal(s_whole.counts, s_merged.counts)
        np.testing.assert_array_equal(s_whole.worst, s_merged.worst)
        whole, _ = update_centroids(whole, s_whole)
        merged, _ = update_centroids(merged, s_merged)
        np.testing.assert_allclose(merged, whole, rtol=0, atol=1e-12)
    assert s_whole.counts.min() > 0  # the empty cluster was re-seeded and took members
    assert np.argmax(x @ merged.T, axis=1).tolist() == np.argmax(x @ whole.T, axis=1).tolist()


def test_minibatch_fit_is_restartable_and_finds_clusters():
    x, labels = blobs(300, 4, 6, seed=2)
    full = CosineKMeans(4, seed=3, batch_size=256).fit(x, 10)
    part = CosineKMeans(4, seed=3, batch_size=256).fit(x, 4)
    resumed = CosineKMeans(2)
    resumed.load_state_dict(part.state_dict())
    resumed.fit(x, 6)
    np.testing.assert_array_equal(resumed.centroids, full.centroids)
    assign = np.argmax(x @ full.centroids.T, axis=1)
    # every true cluster maps to one k-means cluster (purity 1 on well-separated blobs)
    purity = sum(np.bincount(assign[labels == k]).max() for k in range(4)) / len(x)
    assert purity > 0.98
    lloyd = CosineKMeans(4, seed=3).fit(x, 10)
    assert lloyd.inertia[-1] <= lloyd.inertia[0]


def test_centroid_file_round_trip_and_errors(tmp_path):
    cents = init_centroids(blobs(50, 3, 5, seed=0)[0], 3, seed=0)
    path = tmp_path / "c" / "centroids.npy"
    save_centroids(path, cents)
    np.testing.assert_allclose(load_centroids(path, 3), cents, atol=1e-6)
    with pytest.raises(DataError, match="holds 3 centroids, config asks for 27"):
        load_centroids(path, 27)
    np.save(tmp_path / "bad.npy", np.ones((3, 5), np.float32))
    with pytest.raises(DataError, match="not unit vectors"):
        load_centroids(tmp_path / "bad.npy")
    with pytest.raises(DataError, match="not found"):
        load_centroids(tmp_path / "missing.npy")


def test_zero_feature_rows_are_rejected():
    with pytest.raises(DataError, match="all zero"):
        partial_stats(np.zeros((4, 3)), np.eye(3))


def test_depth_guided_fusion_picks_low_scale_near_and_high_scale_far():
    cfg = LabelingConfig(num_clusters=3)
    cents = np.eye(3, 4, dtype=np.float32)
    high = np.zeros((4, 8, 16), np.float32)
    high[1] = 1.0  # the high-res pass says class 1 everywhere
    low = np.zeros((4, 4, 8), np.float32)
    low[2] = 1.0  # the low-res pass says class 2 everywhere
    depth = np.zeros((32, 64), np.float32)
    depth[:, 32:] = 500.0  # left: d=0 -> a=1 (P_low); right: far -> a~0 (P_high)
    lab = SemanticLabeler(cents, cfg)
    sem = lab(high, low, depth)
    assert sem.shape == (32, 64) and sem.dtype == np.uint8
    assert (sem[:, :32] == 2).all() and (sem[:, 32:] == 1).all()
    probs = lab.probs(high, low, depth)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    # median_depth rescales relative depth: a median of 500 becomes 0.5 m, so P_low wins on the right too
    lab_rel = SemanticLabeler(cents, cfg.model_copy(update={"median_depth": 0.5}))
    assert (lab_rel(high, low, depth) == 2).all()


def test_labeler_checks_centroids():
    with pytest.raises(DataError, match="config asks for K=27"):
        SemanticLabeler(np.eye(3, 4, dtype=np.float32), LabelingConfig())


def test_crf_flag_smooths_isolated_pixels():
    cfg = LabelingConfig(num_clusters=2, cluster_temperature=1.0)  # unary margin of 1 logit
    cents = np.eye(2, 3, dtype=np.float32)
    feats = np.zeros((3, 32, 32), np.float32)
    feats[0] = 1.0
    feats[:, 10, 10] = (0.0, 1.0, 0.0)  # one pixel of class 1 in a field of class 0
    feats[:, 12:28, 12:28] = np.array([0.0, 1.0, 0.0], np.float32)[:, None, None]  # a real region
    depth = np.full((32, 32), 10.0, np.float32)
    plain = SemanticLabeler(cents, cfg)(feats, feats, depth)
    smooth = SemanticLabeler(cents, cfg.model_copy(update={"crf": True, "crf_sigma": 1.5}))(feats, feats, depth)
    assert plain[10, 10] == 1 and smooth[10, 10] == 0
    assert (smooth[14:26, 14:26] == 1).all()


def test_partial_stats_fast_paths_match_the_plain_definitions():
    """Per-cluster sums (bincount) equal np.add.at bit for bit; the worst-point preselection keeps
    the same rows in the same order as a full lexsort, ties included."""
    from videocups_ray.labeling.semantics import _keep_worst, normalize_rows

    x, _ = blobs(200, 5, 7, seed=4)
    cents = init_centroids(x, 5, seed=0)
    st = partial_stats(x, cents)
    feats = normalize_rows(x)
    assign = np.argmax(feats @ cents.T, axis=1)
    sums = np.zeros_like(st.sums)
    np.add.at(sums, assign, feats)
    assert np.array_equal(st.sums, sums)
    sims = np.round(np.random.default_rng(1).random(len(feats)), 1)  # many ties
    for m in (1, 5, 40, 5000):
        order = np.lexsort([feats[:, c] for c in range(6, -1, -1)] + [sims])[:m]
        w, ws = _keep_worst(feats, sims, m)
        assert np.array_equal(w, feats[order]) and np.array_equal(ws, sims[order])
