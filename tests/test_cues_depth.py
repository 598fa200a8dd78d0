"""Depth + motion: geometry backend against SynthDrive ground truth, stopped camera, oracle,
Monodepth-layout checkpoint round trip and bad checkpoints."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from videocups_ray.config import DepthConfig, FlowConfig, SynthConfig
from videocups_ray.cues import CheckpointError, FlowResult, build_depth, build_flow, save_checkpoint
from videocups_ray.cues.monodepth import DepthMotionNet, MonoDepth
from videocups_ray.data.synthdrive import generate_sequence
from videocups_ray.data.types import DataError


@pytest.fixture(scope="module")
def seq():
    # seed 3, sequence 0: the ego camera drives through these frames
    return list(generate_sequence(SynthConfig(height=128, width=256, frames=3, seed=3), 0))


def _absrel(pred, gt, mask):
    m = mask & (gt > 0) & (gt < 80)
    return float(np.mean(np.abs(pred[m] - gt[m]) / gt[m]))


def test_geometry_on_oracle_flow_is_metric(seq):
    flow = build_flow(FlowConfig(backend="oracle"))([seq[0], seq[1]], [seq[1], seq[2]])
    est = build_depth(DepthConfig())
    dr = est([seq[0], seq[1]], None, flow)  # K comes from Frame.extra["K"]
    assert dr.depth.shape == (2, 128, 256) and dr.depth.dtype == np.float32
    assert np.isfinite(dr.depth).all() and np.isfinite(dr.motion_prob).all()
    assert dr.depth.min() >= 0.5 and dr.depth.max() <= 80.0
    assert 0 <= dr.motion_prob.min() and dr.motion_prob.max() <= 1
    static = ~seq[0].extra["motion"].astype(bool)
    assert _absrel(dr.depth[0], seq[0].depth, static) < 0.15
    prior = np.full_like(dr.depth[0], float(np.median(seq[0].depth[seq[0].depth > 0])))
    assert _absrel(dr.depth[0], seq[0].depth, static) < 0.5 * _absrel(prior, seq[0].depth, static)


def test_geometry_on_dis_flow_is_finite_metric_and_ordered(seq):
    # loose on purpose: DIS noise makes per-pixel depth poor (numbers in bench_cues.py); the
    # metric scale and the near/far ordering must still hold
    flow = build_flow(FlowConfig())([seq[0]], [seq[1]])
    est = build_depth(DepthConfig())
    dr = est([seq[0]], None, flow)
    assert np.isfinite(dr.depth).all() and np.isfinite(dr.motion_prob).all()
    assert est.last_pose is not None and est.last_pose.t[2] < -0.9  # driving forward
    gt = seq[0].depth
    m = ~seq[0].extra["motion"].astype(bool) & (gt > 0) & (gt < 80)
    assert 0.5 < float(np.median(dr.depth[0][m] / gt[m])) < 2.0
    assert np.corrcoef(np.log(dr.depth[0][m]), np.log(gt[m]))[0, 1] > 0.3


def test_stopped_camera_keeps_last_depth_and_logs(seq, caplog):
    oracle = build_flow(FlowConfig(backend="oracle"))([seq[0]], [seq[1]])
    est = build_depth(DepthConfig())
    first = est([seq[0]], None, oracle)
    still = FlowResult(np.zeros_like(oracle.fw), np.zeros_like(oracle.bw),
                       np.zeros_like(oracle.occlusion), np.zeros_like(oracle.occlusion))
    with caplog.at_level(logging.WARNING):
        dr = est([seq[0]], None, still)
    assert "keeping the last good depth" in caplog.text
    np.testing.assert_allclose(dr.depth, first.depth)  # nothing moves: previous depth kept
    assert dr.motion_prob.max() == 0.0
    est.reset()
    with caplog.at_level(logging.WARNING):
        dr2 = est([seq[0]], None, still)
    assert "ground-plane prior" in caplog.text
    assert np.isfinite(dr2.depth).all()
    assert dr2.depth[0, -1].mean() < dr2.depth[0, 70].mean()  # nearer at the bottom of the image


def test_all_black_frames(seq):
    black = np.zeros((1, 64, 96, 3), np.uint8)
    flow = build_flow(FlowConfig())(black, black)
    dr = build_depth(DepthConfig())(black, None, flow)
    assert np.isfinite(dr.depth).all() and np.isfinite(dr.motion_prob).all()


def test_depth_input_checks(seq):
    flow = build_flow(FlowConfig(backend="oracle"))([seq[0]], [seq[1]])
    with pytest.raises(DataError, match="does not match"):
        build_depth(DepthConfig())([seq[0], seq[1]], None, flow)
    bad = FlowResult(np.full_like(flow.fw, np.nan), flow.bw, flow.occlusion, flow.occlusion_bw)
    with pytest.raises(DataError, match="NaN"):
        build_depth(DepthConfig())([seq[0]], None, bad)
    with pytest.raises(DataError, match="intrinsics"):
        build_depth(DepthConfig())([seq[0]], None, flow, K=np.eye(2))


def test_oracle_depth(seq):
    dr = build_depth(DepthConfig(backend="oracle"))([seq[0]])
    gt = seq[0].depth
    ok = gt > 0
    np.testing.assert_allclose(dr.depth[0][ok], np.clip(gt[ok], 0.5, 80.0))
    assert (dr.depth[0][~ok] == 80.0).all()
    np.testing.assert_array_equal(dr.motion_prob[0] > 0.5, seq[0].extra["motion"].astype(bool))


def test_monodepth_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = DepthMotionNet("resnet18")
    path = save_checkpoint(net, tmp_path / "md.pt")
    est = build_depth(DepthConfig(backend="monodepth", checkpoint=str(path)))
    assert isinstance(est, MonoDepth)
    img = np.random.default_rng(0).integers(0, 255, (2, 40, 70, 3), dtype=np.uint8)  # not /32
    a, b = est(img), MonoDepth(net)(img)
    assert a.depth.shape == (2, 40, 70)
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.motion_prob, b.motion_prob)
    assert (a.depth >= 0.5).all() and (a.depth <= 80).all()


def test_monodepth_mismatched_checkpoint(tmp_path):
    torch.save({"encoder.encoder.conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "half.pt")
    with pytest.raises(CheckpointError, match=r"half.pt.*missing keys: depth_decoder"):
        build_depth(DepthConfig(backend="monodepth", checkpoint=str(tmp_path / "half.pt")))
    state = DepthMotionNet("resnet18").state_dict()
    state["depth_decoder.decoder.10.conv.weight"] = torch.zeros(2, 16, 3, 3)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="shape mismatches: depth_decoder.decoder.10.conv.weight"):
        build_depth(DepthConfig(backend="monodepth", checkpoint=str(tmp_path / "shape.pt")))


def test_ground_contact_cue_finds_things_moving_along_the_epipolar_lines():
    # seed 7, sequence 0 (frames 0-2): an oncoming car moves along its epipolar lines, so the
    # Sampson residual misses it; with exact flow the ground-contact test must flag it
    frames = list(generate_sequence(SynthConfig(height=128, width=256, frames=3, seed=7), 0))
    flow = build_flow(FlowConfig(backend="oracle"))(frames[:2], frames[1:])
    moving = np.stack([f.extra["motion"] for f in frames[:2]]).astype(bool)
    assert moving.sum() > 500, "the sequence must show moving things"
    off = build_depth(DepthConfig())(frames[:2], None, flow)
    on = build_depth(DepthConfig(contact_ratio=1.4))(frames[:2], None, flow)
    recall_off, recall_on = (float((d.motion_prob[moving] > 0.5).mean()) for d in (off, on))
    false_on = float((on.motion_prob[~moving] > 0.5).mean())
    assert recall_on > recall_off + 0.2, (recall_off, recall_on)
    assert false_on < 0.05
    assert np.isfinite(on.depth).all() and 0 <= on.motion_prob.min() and on.motion_prob.max() <= 1


def test_median5_equals_scipy_median_filter():
    """The motion-probability median runs on OpenCV; it must equal scipy's (reflect borders)."""
    from scipy import ndimage

    from videocups_ray.cues.depth import median5

    rng = np.random.default_rng(0)
    for shape in ((64, 96), (5, 5), (3, 7), (1, 1)):
        x = rng.random(shape).astype(np.float32)
        x[x < 0.3] = 0.0  # ties, as in a clipped probability
        assert np.array_equal(median5(x), ndimage.median_filter(x, size=5)), shape
