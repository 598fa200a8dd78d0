"""The CPU training recipe of issue 14: learning-rate schedule, a semantic head over every thing
class (fusion keeps uncovered thing pixels' class), and self-training labels (pure merge, then
one relabelling pass of a pseudo-label shard folder by a saved model, without Ray)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from videocups_ray.config import Config, ConfigError, TrainConfig, load_config, with_overrides
from videocups_ray.data.pseudolabels import read_pseudolabels
from videocups_ray.data.shards import ShardWriter, read_shards
from videocups_ray.labeling.self_labels import PREDICTED_ID_OFFSET, merge_self_labels
from videocups_ray.model import ClassMeta, build_model, collate_pairs, save_checkpoint
from videocups_ray.model.tracking import panoptic_fusion
from videocups_ray.pipelines.pseudolabel import synth_source
from videocups_ray.pipelines.train_loop import lr_at

META = ClassMeta((0, 1, 2), (3, 5))
TINY_MODEL = dict(fpn_channels=16, box_head_dim=32, mask_head_channels=8, semantic_head_channels=8, embed_dim=8,
                  min_size=64, max_size=128, backbone_norm="bn", trainable_backbone_layers=5, rois_per_image=32,
                  rpn_pre_nms_train=200, rpn_post_nms_train=100, rpn_pre_nms_test=100, rpn_post_nms_test=50)


def test_lr_warmup_then_cosine_to_the_floor():
    tc = TrainConfig(lr=1e-3, lr_schedule="cosine", warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, tc) == pytest.approx(1e-5)
    assert lr_at(5, tc) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert lr_at(10, tc) == pytest.approx(1e-3)
    assert lr_at(60, tc) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way through the cosine
    assert lr_at(110, tc) == pytest.approx(1e-4)
    lrs = [lr_at(s, tc) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone after the warm-up
    flat = TrainConfig(lr=2e-4, warmup_steps=0)
    assert lr_at(0, flat) == lr_at(10_000, flat) == 2e-4


def test_cosine_schedule_needs_max_steps():
    with pytest.raises(ConfigError, match="max_steps"):
        with_overrides(Config(), train={"lr_schedule": "cosine", "max_steps": None})


def test_semantic_head_per_thing_class_targets_and_size():
    assert META.semantic_lut(per_thing=True)[[0, 2, 3, 5, 4]].tolist() == [0, 2, 3, 4, 255]
    assert META.semantic_lut()[[3, 5]].tolist() == [3, 3]
    cfg = with_overrides(Config(), model={**TINY_MODEL, "semantic_thing_classes": True})
    model = build_model(cfg.model, META.num_stuff, META.num_thing).eval()
    pred = model([torch.rand(3, 64, 128)])[0]
    assert pred["semantic_logits"].shape[0] == META.num_stuff + META.num_thing
    sem = torch.tensor([[[0, 3, 5], [0, 3, 5]]] * 2)
    pair = {"images": torch.zeros(2, 3, 2, 3, dtype=torch.uint8), "semantic": sem, "instance": torch.zeros(2, 2, 3, dtype=torch.long),
            "ignore": torch.zeros(2, 2, 3, dtype=torch.bool)}
    assert collate_pairs([pair], META, per_thing=True)["targets"][0]["semantic"].tolist() == [[0, 3, 4], [0, 3, 4]]


def test_fusion_keeps_uncovered_thing_class_with_per_thing_head():
    logits = torch.zeros(5, 2, 4)  # stuff 0, 1, 2 then things 3, 5
    logits[0, :, 0] = logits[3, :, 1] = logits[4, :, 2:] = 5.0
    masks = torch.zeros(1, 1, 2, 4)
    masks[0, 0, :, 3] = 1.0
    args = (masks, torch.tensor([0.9]), torch.tensor([5]), torch.tensor([7]), logits, META)
    sem, inst = panoptic_fusion(*args, per_thing=True)
    assert sem.tolist() == [[0, 3, 5, 5]] * 2 and inst.tolist() == [[0, 0, 0, 7]] * 2
    merged_logits = torch.cat([logits[:3], logits[3:].amax(0, keepdim=True)])
    sem, _ = panoptic_fusion(masks, *args[1:4], merged_logits, META)  # merged "thing": uncovered is void
    assert sem.tolist() == [[0, 255, 255, 5]] * 2


def test_merge_self_labels_keeps_pseudo_instances_and_adds_the_models():
    ps = np.array([[1, 3, 3, 255]], np.uint8)
    pi = np.array([[0, 4, 4, 0]], np.int32)
    qs = np.array([[2, 5, 3, 5]], np.uint8)
    qi = np.array([[0, 1, 1, 2]], np.int32)
    sem, inst, ign = merge_self_labels(ps, pi, qs, qi)
    assert sem.tolist() == [[2, 3, 3, 5]]
    assert inst.tolist() == [[0, 4, 4, 2 + PREDICTED_ID_OFFSET]]
    assert not ign.any()
    with pytest.raises(ValueError, match="shape"):
        merge_self_labels(ps, pi, qs[:, :2], qi)


def test_write_self_labels_relabels_every_frame(tmp_path):
    from videocups_ray.pipelines.self_training import write_self_labels

    cfg = with_overrides(Config(), synth=dict(sequences=1, frames=3, height=64, width=128, seed=3),
                         model={**TINY_MODEL, "semantic_thing_classes": True, "score_threshold": 0.0})
    frames = list(synth_source(cfg.synth))
    with ShardWriter(tmp_path / "pl", cfg.shards, "h", "v") as w:
        for f in frames:
            f.semantic = (f.semantic % 6).astype(np.uint8)
            w.add_frame(f)
    w.set_meta("pseudolabel", {"thing_classes": [3, 5], "num_clusters": 6, "ignore_label": 255, "psi": 0.01})
    meta = ClassMeta((0, 1, 2, 4), (3, 5))
    save_checkpoint(tmp_path / "model.pt", build_model(cfg.model, meta.num_stuff, meta.num_thing), cfg.model, meta)
    written = write_self_labels(cfg, tmp_path / "model.pt", tmp_path / "pl", tmp_path / "self")
    assert written == {"frames": 3, "videos": 1}
    pseudo = {f.frame_index: f for f in read_pseudolabels(tmp_path / "pl", apply_split=True, void_ignored=True)}
    out = sorted(read_shards(tmp_path / "self"), key=lambda f: f.frame_index)
    assert [f.frame_index for f in out] == sorted(pseudo)
    for f in out:
        p = pseudo[f.frame_index]
        kept = p.instance > 0
        assert np.array_equal(f.instance[kept], p.instance[kept]) and np.array_equal(f.semantic[kept], p.semantic[kept])
        assert np.array_equal(f.image, p.image)
        assert set(np.unique(f.semantic)) <= {0, 1, 2, 3, 4, 5, 255}


def test_demo_recipe_config_loads():
    cfg = load_config(["configs/demo.yaml", "configs/pseudolabel/synthdrive_256x512.yaml", "configs/train/demo.yaml"])
    assert cfg.train.lr_schedule == "cosine" and cfg.model.semantic_thing_classes
    assert math.isfinite(lr_at(cfg.train.max_steps, cfg.train))
