"""``backend: simulated``: oracle cues after a configured sleep, deterministic, never a default."""

from __future__ import annotations

import numpy as np
import pytest

from videocups_ray.config import Config, DepthConfig, FeatureConfig, FlowConfig, with_overrides
from videocups_ray.cues import build_depth, build_features, build_flow
from videocups_ray.cues import simulated as sim
from videocups_ray.data.synthdrive import generate_sequence
from videocups_ray.data.types import DataError, Frame
from videocups_ray.pipelines.evaluate import evaluate_pseudolabels
from videocups_ray.pipelines.pseudolabel import run_local, synth_source


@pytest.fixture(scope="module")
def seq() -> list[Frame]:
    cfg = with_overrides(Config(), synth={"frames": 3, "height": 64, "width": 128, "seed": 2})
    return list(generate_sequence(cfg.synth, 0))


@pytest.fixture
def slept(monkeypatch) -> list[float]:
    """Seconds each call asked to sleep (recorded instead of slept: the test measures no time)."""
    calls: list[float] = []
    monkeypatch.setattr(sim.time, "sleep", calls.append)
    return calls


def test_never_the_default():
    cues = Config().cues
    assert "simulated" not in (cues.flow.backend, cues.depth.backend, cues.features.backend)


def test_flow_and_depth_are_the_oracle_cues_after_cost_ms_per_unit(seq, slept):
    flow = build_flow(FlowConfig(backend="simulated", cost_ms=40))
    assert isinstance(flow, sim.SimulatedFlow)
    fr = flow(seq[:2], seq[1:])
    ref = build_flow(FlowConfig(backend="oracle"))(seq[:2], seq[1:])
    for key in ("fw", "bw", "occlusion", "occlusion_bw"):
        assert np.array_equal(getattr(fr, key), getattr(ref, key))
    depth = build_depth(DepthConfig(backend="simulated", cost_ms=25))
    dr = depth(seq[:2], seq[1:], fr)
    ref_d = build_depth(DepthConfig(backend="oracle"))(seq[:2])
    assert np.array_equal(dr.depth, ref_d.depth) and np.array_equal(dr.motion_prob, ref_d.motion_prob)
    assert slept == [pytest.approx(0.080), pytest.approx(0.050)]  # 2 pairs x 40 ms, 2 frames x 25 ms


def test_features_follow_ground_truth_semantics_and_are_deterministic(seq, slept):
    cfg = FeatureConfig(backend="simulated", cost_ms=10, stride=4)
    a = build_features(cfg)(seq)
    b = build_features(cfg)(seq)  # another replica: the same cues
    assert np.array_equal(a.high, b.high) and np.array_equal(a.low, b.low)
    assert a.high.shape == (3, sim.SIMULATED_CLASSES, 16, 32)
    assert np.allclose(np.linalg.norm(a.high, axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(a.high[0], a.high[1])  # noise seeded per frame, not one constant
    sem = seq[0].semantic[2::4, 2::4]  # a pixel inside each 4x4 cell
    cls = np.where(sem == 255, sim.SIMULATED_CLASSES - 1, sem)
    assert (a.high[0].argmax(axis=0) == cls).mean() > 0.85
    assert slept == [pytest.approx(0.030)] * 2


def test_frames_without_ground_truth_are_an_error(seq):
    bare = Frame("cam0", 7, seq[0].image)
    with pytest.raises(DataError, match="cam0 frame 7"):
        build_features(FeatureConfig(backend="simulated"))([bare])
    with pytest.raises(DataError, match="cam0 frame 7"):
        build_depth(DepthConfig(backend="simulated"))([bare])
    with pytest.raises(DataError, match="cam0 frame 7"):
        build_flow(FlowConfig(backend="simulated"))([bare], [bare])


def test_cost_ms_is_validated():
    with pytest.raises(ValueError):
        FlowConfig(backend="simulated", cost_ms=-1)


def test_labels_from_simulated_cues_are_checkable(tmp_path):
    """The pipeline runs on simulated cues, and its labels score against SynthDrive's ground truth:
    with semantic features from the ground truth, SQ beats the handmade features' on the same frames."""
    base = with_overrides(
        Config(), synth={"sequences": 1, "frames": 5, "height": 96, "width": 192, "seed": 3},
        labeling={"num_clusters": 8, "kmeans_iters": 8, "kmeans_samples_per_frame": 128,
                  "kmeans_frames_per_video": 3, "clip_length": 5},
        cues={"flow": {"backend": "oracle"}, "depth": {"backend": "oracle"}})
    simulated = with_overrides(base, cues={k: {"backend": "simulated", "cost_ms": 0}
                                           for k in ("flow", "depth", "features")})
    scores = {}
    for name, cfg in (("oracle", base), ("simulated", simulated)):
        src = synth_source(cfg.synth)
        assert run_local(cfg, src, tmp_path / name, progress=False)["written"] == 5
        scores[name] = evaluate_pseudolabels(tmp_path / name, src, cfg.eval)
    assert 0 < scores["simulated"]["STQ"] <= 1
    assert scores["simulated"]["SQ"] > scores["oracle"]["SQ"], scores
