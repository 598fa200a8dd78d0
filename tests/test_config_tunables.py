"""Magic numbers moved into commented config (issue 17): occlusion thresholds, RPN/anchor sizes,
the road-plane fit of the geometry depth. Each field must reach the code that uses it."""

from __future__ import annotations

import numpy as np
import pytest

from videocups_ray.config import DepthConfig, FlowConfig, ModelConfig, TrainConfig
from videocups_ray.cues import build_depth, build_flow
from videocups_ray.cues import geometry as geo
from videocups_ray.model import build_model


def _pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = (rng.random((1, 64, 96, 3)) * 255).astype(np.uint8)
    b = np.roll(a, 3, axis=2)
    b[:, 20:40, 30:60] = 255 - b[:, 20:40, 30:60]  # a patch with no correspondence
    return a, b


def test_occlusion_thresholds_come_from_config():
    a, b = _pair()
    default = build_flow(FlowConfig())(a, b)
    lenient = build_flow(FlowConfig(occlusion_alpha1=0.0, occlusion_alpha2=1e9))(a, b)
    # with no tolerance limit only pixels that leave the image stay occluded
    assert lenient.occlusion.sum() < default.occlusion.sum()
    assert lenient.occlusion_bw.sum() < default.occlusion_bw.sum()


def test_anchor_and_rpn_settings_reach_the_model():
    cfg = ModelConfig(anchor_sizes=(16, 32, 64, 128, 256), anchor_aspect_ratios=(1.0,), rpn_nms_threshold=0.6,
                      rpn_batch_per_image=64, backbone_norm="bn", fpn_channels=16, box_head_dim=16,
                      mask_head_channels=8, semantic_head_channels=8, embed_dim=8)
    model = build_model(cfg, 3, 2, TrainConfig())
    assert model.rpn.anchor_generator.sizes == ((16,), (32,), (64,), (128,), (256,))
    assert model.rpn.anchor_generator.aspect_ratios == ((1.0,),) * 5
    assert model.rpn.nms_thresh == 0.6 and model.rpn.fg_bg_sampler.batch_size_per_image == 64
    with pytest.raises(ValueError, match="anchor_sizes needs 5"):
        build_model(cfg.model_copy(update={"anchor_sizes": (32, 64)}), 3, 2, TrainConfig())


def test_plane_fit_settings_reach_the_fit(monkeypatch):
    seen = {}

    def fake_fit(points, rng, **kw):
        seen.update(kw, n=len(points))
        return None
    monkeypatch.setattr(geo, "fit_ground_plane", fake_fit)
    cfg = DepthConfig(plane_max_points=50, plane_ransac_iters=7, plane_inlier_tol=0.05, plane_min_vertical=0.8,
                      plane_min_inliers=0.4)
    est = build_depth(cfg)
    h, w = 40, 60
    z = np.full((h, w), 10.0)
    rays = np.dstack([np.zeros((h, w)), np.ones((h, w)), np.ones((h, w))])
    est._fit_plane(z, rays, np.ones((h, w), bool), np.random.default_rng(0))
    assert seen == {"iters": 7, "rel_threshold": 0.05, "min_vertical": 0.8, "min_inlier_fraction": 0.4, "n": 50}


def test_min_inlier_fraction_decides_the_plane_fit():
    rng = np.random.default_rng(0)
    x, z = rng.uniform(-5, 5, 400), rng.uniform(5, 30, 400)
    road = np.stack([x, np.full(400, 1.65), z], 1)
    clutter = rng.uniform(-5, 5, (400, 3)) + [0, -3, 15]
    pts = np.concatenate([road, clutter])
    assert geo.fit_ground_plane(pts, np.random.default_rng(1), min_inlier_fraction=0.3) is not None
    assert geo.fit_ground_plane(pts, np.random.default_rng(1), min_inlier_fraction=0.9) is None


def test_backward_flow_stand_in_is_reported_for_every_video(caplog):
    """No module-level "warned once" flag: the second video's last frame is reported too."""
    from videocups_ray.labeling.instances import _growth_flow
    from videocups_ray.labeling.types import FrameCues

    h, w = 8, 12
    flow = np.ones((h, w, 2), np.float32)
    feats = np.ones((3, 2, 3), np.float32) / np.sqrt(3)
    caplog.set_level("INFO", logger="videocups_ray.labeling.instances")
    for video in ("a", "b"):
        cues = FrameCues(video, 5, np.ones((h, w), np.float32), np.zeros((h, w), np.float32), None, flow,
                         None, None, feats)
        np.testing.assert_array_equal(_growth_flow(cues), -flow)
    assert [r.getMessage().split(" has no")[0] for r in caplog.records] == [
        f"instances: {FrameCues(v, 5, None, None, None, None, None, None, None).name}" for v in ("a", "b")]
