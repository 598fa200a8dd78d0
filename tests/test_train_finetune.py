"""Label-efficient fine-tuning: the labelled subset, the weight transfer, and (slow) a full run
from an unsupervised checkpoint on the real KITTI-STEP sample."""

from __future__ import annotations

import pytest
import torch

from videocups_ray.config import Config, ModelConfig, with_overrides
from videocups_ray.data.shards import read_shards
from videocups_ray.data.formats import open_source
from videocups_ray.data.types import DataError
from videocups_ray.model import ClassMeta, build_model, load_checkpoint, save_checkpoint
from videocups_ray.pipelines.pseudolabel import synth_source
from videocups_ray.pipelines.train import write_fraction_shards
from videocups_ray.pipelines.train_loop import transfer_weights

MODEL = dict(fpn_channels=16, box_head_dim=32, mask_head_channels=8, semantic_head_channels=8, embed_dim=8,
             min_size=64, max_size=128, backbone_norm="bn", trainable_backbone_layers=5, rois_per_image=32,
             rpn_pre_nms_train=200, rpn_post_nms_train=100, rpn_pre_nms_test=100, rpn_post_nms_test=50)
PSEUDO = ClassMeta(stuff_classes=(0, 1, 2, 4), thing_classes=(3, 5, 6))  # an unsupervised model's 7 clusters
GT = ClassMeta(stuff_classes=tuple(c for c in range(19) if c not in (11, 13)), thing_classes=(11, 13))


@pytest.fixture()
def unsupervised_ckpt(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**MODEL), PSEUDO.num_stuff, PSEUDO.num_thing)
    return save_checkpoint(tmp_path / "unsup.pt", model, ModelConfig(**MODEL), PSEUDO), model


def test_transfer_keeps_class_independent_weights(unsupervised_ckpt):
    path, source = unsupervised_ckpt
    target = build_model(ModelConfig(**MODEL), GT.num_stuff, GT.num_thing)
    loaded, skipped = transfer_weights(target, path)
    src = source.state_dict()
    assert "backbone.body.conv1.weight" in loaded
    assert torch.equal(target.state_dict()["backbone.body.conv1.weight"], src["backbone.body.conv1.weight"])
    # class-dependent layers differ in shape and keep their fresh initialisation
    assert any("semantic_head" in k for k in skipped) and any("box_heads" in k for k in skipped)
    assert all(target.state_dict()[k].shape != src[k].shape for k in skipped if k in src)
    other = build_model(ModelConfig(**{**MODEL, "fpn_channels": 8, "backbone": "resnet18"}), 2, 1)
    torch.save({"state_dict": {"x": torch.zeros(1)}}, path.parent / "junk.pt")
    with pytest.raises(DataError, match="no tensor matches"):
        transfer_weights(other, path.parent / "junk.pt")


def test_fraction_shards_hold_evenly_spaced_labelled_pairs(tmp_path):
    cfg = with_overrides(Config(), synth=dict(sequences=2, frames=10, height=32, width=64, seed=1))
    picked = write_fraction_shards(synth_source(cfg.synth), tmp_path / "ft", cfg, 0.4)
    assert picked == {"frames": 8, "pairs": 4}  # 0.4 * 10 frames = 2 pairs per video
    keys = sorted((f.video_id, f.frame_index) for f in read_shards(tmp_path / "ft"))
    per_video = {}
    for vid, idx in keys:
        per_video.setdefault(vid, []).append(idx)
    assert all(v == [0, 1, 8, 9] for v in per_video.values()), per_video


@pytest.mark.slow
def test_finetune_from_unsupervised_checkpoint_on_kitti(ray_session, kitti_sample, unsupervised_ckpt, tmp_path):
    from videocups_ray.pipelines.train import run_finetune

    path, _ = unsupervised_ckpt
    cfg = with_overrides(Config(), train=dict(max_steps=2, checkpoint_every=2, batch_size=1, workers=[1, 1],
                                              cache_pairs=True, shuffle_buffer=0))
    summary = run_finetune(cfg, path, kitti_sample, 0.2, tmp_path / "ft")
    assert summary["pairs"] == 1 and summary["steps"] == 2 and summary["fraction"] == 0.2
    model, model_cfg, meta, _ = load_checkpoint(summary["model"])
    assert meta == GT and model_cfg.fpn_channels == 16  # the unsupervised model's architecture, GT classes
    assert len(open_source(kitti_sample)) == 10
