"""Flow estimators: DIS against SynthDrive ground truth, RAFT checkpoint round trip, oracle, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videocups_ray.config import FlowConfig, SynthConfig
from videocups_ray.cues import CheckpointError, build_flow, save_checkpoint
from videocups_ray.cues.flow import RaftFlow, build_raft_net
from videocups_ray.data.synthdrive import generate_sequence
from videocups_ray.data.types import DataError


@pytest.fixture(scope="module")
def seq():
    return list(generate_sequence(SynthConfig(height=128, width=256, frames=3, seed=3), 0))


def _epe(pred, gt, valid):
    return float(np.linalg.norm(pred - gt, axis=-1)[valid].mean())


def test_dis_beats_zero_flow_on_synthdrive(seq):
    est = build_flow(FlowConfig())
    est.setup("cpu")
    fr = est([seq[0], seq[1]], [seq[1], seq[2]])
    assert fr.fw.shape == (2, 128, 256, 2) and fr.fw.dtype == np.float32
    assert fr.occlusion.shape == (2, 128, 256) and fr.occlusion.dtype == bool
    a = seq[0]
    epe = _epe(fr.fw[0], a.flow, a.flow_valid)
    zero = _epe(np.zeros_like(a.flow), a.flow, a.flow_valid)
    assert epe < 0.8 * zero
    # backward flow of pair 0 is t+1 -> t: compare with frame 1's ground-truth backward flow
    b = seq[1]
    assert _epe(fr.bw[0], b.extra["flow_bw"], b.extra["flow_bw_valid"]) < 0.8 * _epe(
        np.zeros_like(a.flow), b.extra["flow_bw"], b.extra["flow_bw_valid"])
    # ground-truth occluded pixels are flagged more often than visible ones
    assert fr.occlusion[0][~a.flow_valid].mean() > fr.occlusion[0][a.flow_valid].mean()


def test_oracle_returns_ground_truth(seq):
    fr = build_flow(FlowConfig(backend="oracle"))([seq[0]], [seq[1]])
    np.testing.assert_array_equal(fr.fw[0], np.nan_to_num(seq[0].flow))
    np.testing.assert_array_equal(fr.occlusion[0], ~seq[0].flow_valid)
    np.testing.assert_array_equal(fr.bw[0], np.nan_to_num(seq[1].extra["flow_bw"]))
    with pytest.raises(DataError, match="Frame objects"):
        build_flow(FlowConfig(backend="oracle"))(seq[0].image[None], seq[1].image[None])
    with pytest.raises(DataError, match="no ground-truth flow"):
        build_flow(FlowConfig(backend="oracle"))([seq[2]], [seq[2]])  # last frame has no forward flow


def test_bad_input_is_a_clear_error():
    est = build_flow(FlowConfig())
    a = np.zeros((1, 32, 48, 3), np.uint8)
    with pytest.raises(DataError, match="do not match"):
        est(a, np.zeros((1, 32, 40, 3), np.uint8))
    with pytest.raises(DataError, match="frames_t1: empty batch"):  # single-frame video: no next frame
        est(a, np.zeros((0, 32, 48, 3), np.uint8))
    with pytest.raises(DataError, match="NaN"):
        est(np.full((1, 32, 48, 3), np.nan, np.float32), a)
    with pytest.raises(DataError, match="different sizes"):
        from videocups_ray.data.types import Frame

        est([Frame("v", 0, a[0]), Frame("v", 1, np.zeros((30, 48, 3), np.uint8))], [Frame("v", 2, a[0])] * 2)


def test_all_black_frames_give_zero_finite_flow():
    est = build_flow(FlowConfig())
    black = np.zeros((2, 64, 96, 3), np.uint8)
    fr = est(black, black)
    assert np.isfinite(fr.fw).all() and np.isfinite(fr.bw).all()
    assert np.abs(fr.fw).max() < 1e-3


def test_raft_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = build_raft_net("raft_small")
    path = save_checkpoint(net, tmp_path / "raft_small.pt")
    cfg = FlowConfig(backend="raft", raft_arch="raft_small", raft_iters=2, checkpoint=str(path))
    loaded = build_flow(cfg)
    assert isinstance(loaded, RaftFlow) and not loaded.requires_gpu and loaded.memory_bytes > 0
    direct = RaftFlow(net, iters=2)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (1, 128, 132, 3), dtype=np.uint8)  # 132: not a multiple of 8, padded
    b = np.roll(a, 2, axis=2)
    r1, r2 = loaded(a, b), direct(a, b)
    assert r1.fw.shape == (1, 128, 132, 2)
    np.testing.assert_array_equal(r1.fw, r2.fw)
    np.testing.assert_array_equal(r1.bw, r2.bw)
    assert np.isfinite(r1.fw).all()


def test_raft_bad_checkpoints(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        build_flow(FlowConfig(backend="raft", checkpoint=str(bad)))
    state = build_raft_net("raft_small").state_dict()
    del state["update_block.flow_head.conv2.weight"]
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial.pt.*missing keys: update_block.flow_head.conv2.weight"):
        build_flow(FlowConfig(backend="raft", checkpoint=str(tmp_path / "partial.pt")))
    with pytest.raises(CheckpointError, match="not found"):
        build_flow(FlowConfig(backend="raft", checkpoint=str(tmp_path / "absent.pt")))
    with pytest.raises(CheckpointError, match="needs cues.flow.checkpoint"):
        build_flow(FlowConfig(backend="raft"))


def test_dis_warm_start_chains_only_consecutive_pairs(seq):
    """Warm start: the first pair of a call and any pair that does not continue the previous one
    start from zero (no state across calls or videos); a chained pair starts from the previous
    flow, so its result differs and stays accurate."""
    cold = build_flow(FlowConfig())
    warm = build_flow(FlowConfig(dis_warm_start=True))
    pairs = ([seq[0], seq[1]], [seq[1], seq[2]])
    c, w = cold(*pairs), warm(*pairs)
    assert np.array_equal(c.fw[0], w.fw[0]) and np.array_equal(c.bw[0], w.bw[0])  # first pair: cold
    assert not np.array_equal(c.fw[1], w.fw[1])  # chained pair: initialised from pair 0
    b = seq[1]
    assert _epe(w.fw[1], b.flow, b.flow_valid) < 0.8 * _epe(np.zeros_like(b.flow), b.flow, b.flow_valid)
    # not consecutive (pair 1 does not start where pair 0 ended): both start from zero
    broken = ([seq[0], seq[0]], [seq[1], seq[2]])
    assert np.array_equal(cold(*broken).fw, warm(*broken).fw)
    assert np.array_equal(warm([seq[1]], [seq[2]]).fw[0], c.fw[1])  # a new call forgets pair 0
