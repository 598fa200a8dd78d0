"""Inference: batched prediction equals the frame-by-frame predictor, files in both formats,
scored by ``evaluate_paths``, and the Ray Data engine writes what the local engine writes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videocups_ray.config import Config, ModelConfig, with_overrides
from videocups_ray.data.synthdrive import write_synth_dataset
from videocups_ray.data.types import DataError, UnknownFormatError
from videocups_ray.model import ClassMeta, VideoPanopticPredictor, build_model, save_checkpoint
from videocups_ray.pipelines.evaluate import evaluate_paths, load_label_dir
from videocups_ray.pipelines.infer import predict_video, run_infer

H, W = 64, 128
META = ClassMeta(stuff_classes=tuple(c for c in range(19) if c not in (11, 13)), thing_classes=(11, 13))
# score_threshold 0: an untrained model still yields detections, so tracking and fusion run
MODEL = dict(fpn_channels=16, box_head_dim=32, mask_head_channels=8, semantic_head_channels=8, embed_dim=8,
             min_size=H, max_size=W, backbone_norm="bn", trainable_backbone_layers=5, rpn_pre_nms_test=100,
             rpn_post_nms_test=50, score_threshold=0.0, detections_per_image=5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    cfg = with_overrides(Config(), synth=dict(sequences=2, frames=4, height=H, width=W, seed=5), model=MODEL,
                         infer=dict(batch_size=3, actors=2))
    torch.manual_seed(0)
    model = build_model(ModelConfig(**MODEL), META.num_stuff, META.num_thing).eval()
    ckpt = save_checkpoint(root / "model.pt", model, cfg.model, META)
    data = root / "synth"
    write_synth_dataset(cfg.synth, data, progress=False)
    return cfg, model, ckpt, data, root


def _frames(data, video=None):
    from videocups_ray.data.formats import open_source

    src = open_source(data)
    return list(src.frames(video or src.videos()[0]))


def test_batched_prediction_matches_frame_by_frame(setup):
    cfg, model, _, data, _ = setup
    frames = _frames(data)
    batched = [p for _, p in predict_video(model, META, cfg.model, frames, batch_size=3)]
    single = VideoPanopticPredictor(model, META, cfg.model).predict_video([f.image for f in frames])
    assert len(batched) == len(single) == 4
    assert any(len(p.track_ids) for p in batched)  # detections were tracked
    for b, s in zip(batched, single):
        assert (b.semantic == s.semantic).mean() > 0.99
        np.testing.assert_array_equal(b.track_ids, s.track_ids)
        assert (b.instance == s.instance).mean() > 0.99


def test_frames_out_of_order_raise(setup):
    cfg, model, _, data, _ = setup
    frames = _frames(data)
    with pytest.raises(DataError, match="temporal order"):
        list(predict_video(model, META, cfg.model, [frames[1], frames[0]], batch_size=1))


def test_run_infer_writes_kitti_step_that_evaluate_paths_scores(setup, tmp_path):
    cfg, _, ckpt, data, _ = setup
    summary = run_infer(cfg, ckpt, data, tmp_path / "kitti", "kitti-step", overlay=True)
    assert summary["videos"] == 2 and summary["frames"] == 8
    assert all(r["overlay"] and (tmp_path / "kitti" / "overlays").is_dir() for r in summary["per_video"])
    result = evaluate_paths(data, tmp_path / "kitti", fmt="kitti-step", cfg=cfg.eval, unsupervised=True)
    assert result["num_frames"] == 8 and 0.0 <= result["STQ"] <= 1.0
    run_infer(cfg, ckpt, data, tmp_path / "cs", "cityscapes-vps")
    kitti = {(f.video_id, f.frame_index): f for f in load_label_dir(tmp_path / "kitti", "kitti-step")}
    cs = list(load_label_dir(tmp_path / "cs", "cityscapes-vps"))
    assert len(cs) == 8
    for f in cs:  # the same prediction in both encodings
        np.testing.assert_array_equal(f.semantic, kitti[(f.video_id, f.frame_index)].semantic)
        np.testing.assert_array_equal(f.instance, kitti[(f.video_id, f.frame_index)].instance)
    with pytest.raises(UnknownFormatError, match="'waymo'.*vip-deeplab"):  # read-only format
        run_infer(cfg, ckpt, data, tmp_path / "x", "waymo")
    with pytest.raises(DataError, match="unknown videos"):
        run_infer(cfg, ckpt, data, tmp_path / "x", "kitti-step", videos=["nope"])


def test_ray_engine_matches_local(ray_session, setup, tmp_path):
    cfg, _, ckpt, data, _ = setup
    local = run_infer(cfg, ckpt, data, tmp_path / "local", "kitti-step")
    remote = run_infer(cfg, ckpt, str(data), tmp_path / "ray", "kitti-step", engine="ray")
    assert remote["frames"] == local["frames"] == 8
    assert [r["video_id"] for r in remote["per_video"]] == [r["video_id"] for r in local["per_video"]]
    for a, b in zip(load_label_dir(tmp_path / "local", "kitti-step"), load_label_dir(tmp_path / "ray", "kitti-step")):
        assert (a.video_id, a.frame_index) == (b.video_id, b.frame_index)
        np.testing.assert_array_equal(a.instance, b.instance)
        np.testing.assert_array_equal(a.semantic, b.semantic)
