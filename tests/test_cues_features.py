"""Per-pixel features: handmade descriptor on SynthDrive, DINO ViT checkpoint round trip, bad input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from videocups_ray.config import FeatureConfig, SynthConfig
from videocups_ray.cues import CheckpointError, build_features, save_checkpoint
from videocups_ray.cues.features import descriptor_channels
from videocups_ray.cues.vit import DinoFeatures, build_vit, crop_starts
from videocups_ray.data.synthdrive import generate_sequence
from videocups_ray.data.types import DataError

ROAD, SKY = 0, 10


@pytest.fixture(scope="module")
def frame():
    return next(iter(generate_sequence(SynthConfig(height=128, width=256, frames=1, seed=3), 0)))


def test_handmade_shapes_norm_and_separation(frame):
    est = build_features(FeatureConfig(stride=4))
    depth = np.where(frame.depth > 0, frame.depth, 0)[None]
    fe = est([frame], depth=depth, K=frame.extra["K"])
    assert est.channels == descriptor_channels((2.0, 6.0)) == 45
    assert fe.high.shape == (1, est.channels, 32, 64) and fe["low"].shape == fe.high.shape
    for x in (fe.high, fe.low):
        assert np.isfinite(x).all()
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-4)
    sem = frame.semantic[2::4, 2::4]
    road = fe.high[0][:, sem == ROAD].mean(axis=1)
    sky = fe.high[0][:, sem == SKY].mean(axis=1)
    road_spread = fe.high[0][:, sem == ROAD].T @ road / np.linalg.norm(road)
    cos = road @ sky / (np.linalg.norm(road) * np.linalg.norm(sky))
    assert cos < np.median(road_spread)  # road pixels resemble road more than sky


def test_handmade_geometry_separates_ground_from_walls():
    """With depth of a flat road and a wall (same colour, no texture), only geometry tells them apart."""
    h, w = 64, 128
    K = np.array([[100.0, 0, (w - 1) / 2], [0, 100.0, (h - 1) / 2], [0, 0, 1]])
    v = np.arange(h, dtype=np.float32)[:, None] - K[1, 2]
    ground = np.where(v > 0, 100.0 * 1.5 / np.maximum(v, 1e-3), np.inf) * np.ones((1, w), np.float32)
    depth = np.minimum(ground, 10.0).astype(np.float32)[None]  # a wall 10 m ahead above the ground line
    img = np.full((1, h, w, 3), 128, np.uint8)
    cfg = FeatureConfig(stride=2, weight_position=0.0, smooth_sigma=0.0)
    fe = build_features(cfg)(img, depth=depth, K=K)
    rows_wall = slice(4, 12)  # well above the horizon: wall
    rows_road = slice(26, 31)  # well below where the road meets the wall (row 47 of 64)
    wall = fe.high[0][:, rows_wall].reshape(fe.high.shape[1], -1).mean(1)
    road = fe.high[0][:, rows_road].reshape(fe.high.shape[1], -1).mean(1)
    assert wall @ road / (np.linalg.norm(wall) * np.linalg.norm(road)) < 0.5
    flat = build_features(cfg)(img, depth=None, K=K)
    assert np.allclose(flat.high, 0)  # no depth, no position, uniform image: nothing to see


def test_handmade_flip_equivariance_and_config(frame):
    """The low pass averages a frame with its mirror: mirroring the input mirrors the output."""
    est = build_features(FeatureConfig(stride=4))
    depth = np.where(frame.depth > 0, frame.depth, 0)[None]
    K = frame.extra["K"]
    a = est([frame], depth=depth, K=K).low[0]
    K_flip = K.copy()
    K_flip[0, 2] = frame.image.shape[1] - 1 - K[0, 2]
    b = est(frame.image[None, :, ::-1].copy(), depth=depth[:, :, ::-1].copy(), K=K_flip).low[0]
    np.testing.assert_allclose(a, b[:, :, ::-1], atol=1e-3)
    one = build_features(FeatureConfig(context_sigmas=(3.0,)))
    assert one.channels == 33 and one(frame.image[None]).high.shape[1] == 33
    with pytest.raises(ValueError, match=r"context_sigmas.*\[0.0\]"):
        build_features(FeatureConfig(context_sigmas=(2.0, 0.0)))


def test_handmade_bad_and_degenerate_input(frame):
    est = build_features(FeatureConfig())
    black = np.zeros((2, 64, 96, 3), np.uint8)
    fe = est(black)
    assert np.isfinite(fe.high).all() and np.isfinite(fe.low).all()
    np.testing.assert_allclose(np.linalg.norm(fe.high, axis=1), 1.0, atol=1e-4)  # the image row remains
    with pytest.raises(DataError, match="depth of shape"):
        est(black, depth=np.ones((1, 64, 96), np.float32))
    nan_depth = np.full((2, 64, 96), np.nan, np.float32)
    assert np.isfinite(est(black, depth=nan_depth).high).all()  # invalid depth counts as "far"
    with pytest.raises(DataError, match="N x H x W x 3"):
        est(np.zeros((64, 96, 3), np.uint8))
    with pytest.raises(DataError, match="intrinsics K"):
        est(black, K=np.eye(2))


def test_crop_starts_cover_the_image():
    assert crop_starts(100, 128, 64) == [0]
    s = crop_starts(300, 128, 64)
    assert s[0] == 0 and s[-1] == 300 - 128 and all(b - a <= 64 for a, b in zip(s, s[1:]))


def test_dino_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = build_vit("vit_small_patch8")
    path = save_checkpoint(net, tmp_path / "dino_vits8.pt")
    cfg = FeatureConfig(backend="dino", checkpoint=str(path), crop_size=48, crop_overlap=0.5, stride=4)
    est = build_features(cfg)
    assert isinstance(est, DinoFeatures)
    img = np.random.default_rng(0).integers(0, 255, (1, 60, 100, 3), dtype=np.uint8)
    a = est(img)
    b = DinoFeatures(net, stride=4, crop_size=48, crop_overlap=0.5)(img)
    assert a.high.shape == (1, 384, 15, 25) and a.low.shape == (1, 384, 15, 25)
    np.testing.assert_array_equal(a.high, b.high)
    np.testing.assert_array_equal(a.low, b.low)
    np.testing.assert_allclose(np.linalg.norm(a.high, axis=1), 1.0, atol=1e-4)
    assert "blocks.11.attn.qkv.weight" in net.state_dict() and "pos_embed" in net.state_dict()


def test_dino_mismatched_checkpoints(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="junk.pt"):
        build_features(FeatureConfig(backend="dino", checkpoint=str(tmp_path / "junk.pt")))
    state = build_vit("vit_small_patch8").state_dict()
    state["blocks.0.attn.qkv.weight"] = torch.zeros(3 * 768, 768)
    del state["norm.bias"]
    torch.save({"state_dict": state}, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError, match=r"wrong.pt.*missing keys: norm.bias.*shape mismatches: blocks.0"):
        build_features(FeatureConfig(backend="dino", checkpoint=str(tmp_path / "wrong.pt")))


def test_geometric_evidence_separates_ground_facade_sky(frame):
    """Issue 13: height / normal / sky evidence from (ground-truth) depth tells road from
    building from sky, stays mirror-equivariant, and its channels exist only when weighted."""
    from videocups_ray.cues.features import _evidence

    K = frame.extra["K"]
    depth = np.where(frame.depth > 0, frame.depth, 0).astype(np.float32)
    h, w = frame.shape[0] // 4, frame.shape[1] // 4
    ev = _evidence(depth, (h, w), K, 6.0, 80.0)
    sem = cv2.resize(frame.semantic.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    road, building, sky = sem == 0, sem == 2, sem == 10
    assert road.any() and building.any() and sky.any()
    assert ev["height"][..., 2][road].mean() > 0.7 > 0.2 > ev["height"][..., 2][building].mean()  # on the ground
    assert ev["normal"][..., 0][road].mean() > 0.7 > 0.4 > ev["normal"][..., 0][building].mean()  # horizontal
    assert ev["sky"][..., 0][sky].mean() > 0.8 > 0.1 > ev["sky"][..., 0][road].mean()
    cfg = FeatureConfig(weight_height=1, weight_normal=1, weight_sky=1, weight_column=1)
    est = build_features(cfg)
    a = est([frame], depth=depth[None], K=K).low[0]
    K_flip = K.copy()
    K_flip[0, 2] = frame.image.shape[1] - 1 - K[0, 2]
    b = est(frame.image[None, :, ::-1].copy(), depth=depth[None, :, ::-1].copy(), K=K_flip).low[0]
    assert np.abs(a - b[:, :, ::-1]).mean() < 0.01
    assert est.channels == 56 and build_features(FeatureConfig()).channels == 45
    assert np.abs(est([frame], depth=depth[None], K=K).high[0][-11:]).max() > 0
    assert est(frame.image[None]).high.shape[1] == 56  # no depth: the same channels, zero


def test_depth_guided_blur_pools_within_a_surface_only():
    """Joint-bilateral context (DepthG-style fusion): a flat guide gives the plain Gaussian; a depth
    step stops the pooling, so a car's colour does not bleed into the road beside it."""
    from videocups_ray.cues.features import _blur, guided_blur

    rng = np.random.default_rng(0)
    x = rng.random((32, 64, 5)).astype(np.float32)
    np.testing.assert_allclose(guided_blur(x, np.zeros((32, 64), np.float32), 3.0, 0.3), _blur(x, 3.0), atol=1e-5)
    guide = np.zeros((32, 64), np.float32)
    guide[:, 32:] = np.log(20.0)  # a surface 20x further away on the right half
    step = np.zeros((32, 64, 1), np.float32)
    step[:, 32:] = 1.0
    plain, guided = _blur(step, 6.0).reshape(32, 64), guided_blur(step, guide, 6.0, 0.3)[..., 0]
    assert plain[:, 31].min() > 0.3  # the plain Gaussian mixes the two surfaces at the edge
    assert guided[:, :32].max() < 1e-3 and guided[:, 32:].min() > 0.999


def test_depth_guide_keeps_the_descriptor_contract(frame):
    depth = np.where(frame.depth > 0, frame.depth, 0)[None]
    plain = build_features(FeatureConfig())([frame], depth=depth, K=frame.extra["K"])
    est = build_features(FeatureConfig(depth_guide_sigma=0.3))
    fe = est([frame], depth=depth, K=frame.extra["K"])
    assert est.channels == 45 and fe.high.shape == plain.high.shape
    np.testing.assert_allclose(np.linalg.norm(fe.high, axis=1), 1.0, atol=1e-4)
    assert np.abs(fe.high - plain.high).max() > 0.05  # the guide changes the context channels
    assert np.allclose(est([frame]).high, build_features(FeatureConfig())([frame]).high)  # no depth: no guide
