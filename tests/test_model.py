"""The VPS model: every head trains, Video DropLoss zeroes dropped proposals, checkpoints load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models import resnet50

from videocups_ray.config import ModelConfig, TrainConfig
from videocups_ray.model import (
    CheckpointError,
    ClassMeta,
    VideoPanopticPredictor,
    build_model,
    collate_pairs,
    drop_loss_weights,
    frame_targets,
    load_backbone_checkpoint,
    load_backbone_state,
    load_checkpoint,
    save_checkpoint,
)
from videocups_ray.model.backbone import ResNetFPN

H, W = 64, 128
META = ClassMeta(stuff_classes=(0, 1, 2), thing_classes=(7, 8))


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(
        fpn_channels=16, box_head_dim=32, mask_head_channels=8, semantic_head_channels=8, embed_dim=8,
        min_size=H, max_size=W, backbone_norm="bn", trainable_backbone_layers=5, rois_per_image=32,
        rpn_pre_nms_train=200, rpn_post_nms_train=100, rpn_pre_nms_test=100, rpn_post_nms_test=50,
    )
    base.update(kw)
    return ModelConfig(**base)


def make_pair(seed: int = 0, shift: int = 3) -> dict:
    """Two frames: road/sky stuff, two cars (class 7, 8) moving right by ``shift`` px."""
    g = torch.Generator().manual_seed(seed)
    sem = torch.zeros(2, H, W, dtype=torch.long)
    sem[:, 32:] = 1
    sem[:, :8] = 2
    inst = torch.zeros(2, H, W, dtype=torch.long)
    for f in range(2):
        inst[f, 10:40, 20 + f * shift : 60 + f * shift] = 5
        inst[f, 20:50, 80 + f * shift : 110 + f * shift] = 9
        sem[f][inst[f] == 5] = 7
        sem[f][inst[f] == 9] = 8
    ignore = torch.zeros(2, H, W, dtype=torch.bool)
    ignore[:, 60:] = True
    return {"images": torch.rand(2, 3, H, W, generator=g), "semantic": sem, "instance": inst, "ignore": ignore}


@pytest.fixture(scope="module")
def batch():
    return collate_pairs([make_pair(0), make_pair(1)], META)


def test_frame_targets_map_classes_and_ignore():
    pair = make_pair()
    t = frame_targets(pair["semantic"][0], pair["instance"][0], pair["ignore"][0], META)
    assert t["track_ids"].tolist() == [5, 9]
    assert t["labels"].tolist() == [1, 2]  # 7 -> thing 1, 8 -> thing 2
    assert t["boxes"][0].tolist() == [20.0, 10.0, 60.0, 40.0]
    assert int(t["masks"][0].sum()) == 30 * 40
    sem = t["semantic"]
    assert (sem[60:] == 255).all()  # ignore mask -> no semantic loss
    assert sem[0, 0] == 2 and sem[35, 0] == 1  # stuff 2 -> index 2, stuff 1 -> index 1
    assert sem[15, 30] == META.num_stuff  # thing pixel -> merged thing class


@pytest.mark.parametrize("drop", [True, False])
def test_every_head_trains(batch, drop):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), META.num_stuff, META.num_thing, TrainConfig(drop_loss=drop)).train()
    assert model.drop_loss_iou == (0.5 if drop else None)
    losses = model(**batch)
    expected = {"loss_objectness", "loss_rpn_box_reg", "loss_mask", "loss_track", "loss_semantic"}
    expected |= {f"loss_{kind}_s{k}" for kind in ("cls", "box") for k in range(3)}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_track"] > 0 and losses["loss_mask"] > 0 and losses["loss_semantic"] > 0
    sum(losses.values()).backward()
    heads = {
        "rpn": model.rpn.head.cls_logits.weight,
        "fpn": model.backbone.fpn.layer_blocks[0][0].weight,
        "conv1": model.backbone.body.conv1.weight,
        "mask": model.roi_heads.mask_head.logits.weight,
        "track": model.roi_heads.track_head.fc2.weight,
        "semantic": model.semantic_head.predictor.weight,
        **{f"cls_s{k}": h.cls_score.weight for k, h in enumerate(model.roi_heads.box_heads)},
        **{f"box_s{k}": h.bbox_pred.weight for k, h in enumerate(model.roi_heads.box_heads)},
    }
    for name, param in heads.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"


def _force_thing_predictions(model) -> None:
    """Every box head predicts thing class 1 for every proposal, whatever its features."""
    with torch.no_grad():
        for head in model.roi_heads.box_heads:
            head.cls_score.weight.zero_()
            head.cls_score.bias.zero_()
            head.cls_score.bias[1] = 5.0


def test_drop_loss_gives_dropped_proposals_zero_gradient(batch):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), META.num_stuff, META.num_thing, TrainConfig(drop_loss=True)).train()
    _force_thing_predictions(model)
    losses = model(**batch)
    records = model.roi_heads.stage_records
    assert len(records) == 3
    for r in records:
        r.class_logits.retain_grad()
        r.box_deltas.retain_grad()
    sum(losses.values()).backward()
    for k, r in enumerate(records):
        dropped = r.max_iou <= 0.5  # all predictions are things, so this is the DropLoss rule
        assert dropped.sum() > 0 and (~dropped).sum() > 0, f"stage {k}: test needs both kinds"
        assert torch.equal(r.weights, (~dropped).float())
        assert (r.class_logits.grad[dropped] == 0).all(), f"stage {k}: dropped logits got gradient"
        assert (r.box_deltas.grad[dropped] == 0).all()
        assert (r.class_logits.grad[~dropped].abs().sum(dim=1) > 0).all()


def test_without_drop_loss_low_iou_proposals_learn_background(batch):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), META.num_stuff, META.num_thing, TrainConfig(drop_loss=False)).train()
    _force_thing_predictions(model)
    losses = model(**batch)
    records = model.roi_heads.stage_records
    for r in records:
        r.class_logits.retain_grad()
    sum(losses.values()).backward()
    for r in records:
        low = r.max_iou <= 0.5
        assert low.sum() > 0 and (r.weights == 1).all()
        assert (r.labels[low] == 0).all()
        # cross-entropy towards background: d loss / d background logit = p_bg - 1 < 0
        assert (r.class_logits.grad[low, 0] < 0).all()


def test_drop_loss_weights_rule():
    pred = torch.tensor([0, 1, 2, 1, 0])
    iou = torch.tensor([0.1, 0.5, 0.3, 0.51, 0.9])
    assert drop_loss_weights(pred, iou, 0.5).tolist() == [1, 0, 0, 1, 1]
    assert drop_loss_weights(pred, iou, None).tolist() == [1, 1, 1, 1, 1]


def _dino_state(prefix: str, with_fc: bool) -> dict:
    state = resnet50(weights=None).state_dict()
    return {prefix + k: v for k, v in state.items() if with_fc or not k.startswith("fc.")}


@pytest.mark.parametrize("prefix", ["", "module.", "backbone.", "module.backbone."])
def test_dino_resnet50_checkpoint_loads_with_report(tmp_path, prefix):
    state = _dino_state(prefix, with_fc=prefix == "module.")
    path = tmp_path / "dino_resnet50.pth"
    torch.save(state, path)
    net = ResNetFPN("resnet50", 8, norm="frozen_bn")
    report = load_backbone_checkpoint(net.body, path)
    assert report.missing == []
    assert report.unexpected == (["fc.bias", "fc.weight"] if prefix == "module." else [])
    assert len(report.loaded) == len(net.body.state_dict())
    key = "layer3.1.conv2.weight"
    assert torch.equal(net.body.state_dict()[key], state[prefix + key])


def test_backbone_checkpoint_errors(tmp_path):
    body = ResNetFPN("resnet18", 8).body
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone_checkpoint(body, tmp_path / "absent.pth")
    partial = {k: v for k, v in resnet50(weights=None).state_dict().items() if k.startswith("layer4")}
    torch.save(partial, tmp_path / "r50.pth")
    with pytest.raises(CheckpointError, match="layer4.0.conv1.weight"):
        load_backbone_checkpoint(body, tmp_path / "r50.pth")  # resnet50 weights into resnet18
    net = ResNetFPN("resnet50", 8)
    torch.save({k: v for k, v in partial.items()}, tmp_path / "part.pth")
    report = load_backbone_checkpoint(net.body, tmp_path / "part.pth")
    assert "conv1.weight" in report.missing and not report.unexpected


def test_checkpoint_roundtrip_carries_config_and_classes(tmp_path, batch):
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg, META.num_stuff, META.num_thing).eval()
    path = save_checkpoint(tmp_path / "ckpt" / "model.pt", model, cfg, META, extra={"step": 7})
    loaded, cfg2, meta2, extra = load_checkpoint(path)
    assert cfg2 == cfg and meta2 == META and extra == {"step": 7}
    image = batch["images"][0]
    a, b = model([image])[0], loaded([image])[0]
    assert torch.equal(a["semantic_logits"], b["semantic_logits"])
    assert torch.equal(a["boxes"], b["boxes"])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")


def test_predictor_keeps_track_ids_over_a_video(batch):
    torch.manual_seed(0)
    cfg = tiny_cfg(score_threshold=0.05, detections_per_image=10)
    model = build_model(cfg, META.num_stuff, META.num_thing)
    with torch.no_grad():  # zero embeddings: association is decided by box IoU and class alone
        model.roi_heads.track_head.fc2.weight.zero_()
        model.roi_heads.track_head.fc2.bias.zero_()
    predictor = VideoPanopticPredictor(model, META, cfg)
    image = (batch["images"][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    first, second = predictor.predict_video([image, image])
    assert len(first.track_ids) > 0
    assert sorted(first.track_ids) == list(range(1, len(first.track_ids) + 1))
    assert np.array_equal(first.track_ids, second.track_ids)  # same objects, same IDs
    assert second.semantic.dtype == np.uint8 and second.instance.dtype == np.int32
    assert second.semantic.shape == (H, W) == second.instance.shape
    assert set(np.unique(second.instance)) <= {0, *second.track_ids.tolist()}
    assert set(np.unique(second.semantic)) <= {*META.stuff_classes, *META.thing_classes, 255}
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        predictor.push(image.astype(np.float32))


def test_eval_returns_maps_at_the_input_size():
    torch.manual_seed(0)
    cfg = tiny_cfg(score_threshold=0.05, detections_per_image=5)
    model = build_model(cfg, META.num_stuff, META.num_thing).eval()
    pred = model([torch.rand(3, 50, 101)])[0]  # resized to 63x128 inside, mapped back
    assert pred["semantic_logits"].shape == (META.num_stuff + 1, 50, 101)
    assert pred["masks"].shape[-2:] == (50, 101)
    assert len(pred["boxes"]) == len(pred["embeddings"]) == len(pred["labels"]) > 0
    assert (pred["boxes"][:, 2] <= 101).all() and (pred["boxes"][:, 3] <= 50).all()
    assert ((pred["labels"] >= 1) & (pred["labels"] <= META.num_thing)).all()


def test_bad_targets_name_the_key(batch):
    model = build_model(tiny_cfg(), META.num_stuff, META.num_thing).train()
    targets = [dict(t) for t in batch["targets"]]
    del targets[1]["track_ids"]
    with pytest.raises(KeyError, match=r"targets\[1\] lacks 'track_ids'"):
        model(batch["images"], targets)
    with pytest.raises(ValueError, match="cascade_ious"):
        build_model(tiny_cfg(cascade_ious=(0.5, 0.6)), 3, 2)


def test_backbone_checkpoint_with_no_matching_key_is_an_error(tmp_path):
    """A file for another network loads nothing: an error listing missing and unexpected keys."""
    body = ResNetFPN("resnet18", 8).body
    foreign = {"encoder.blocks.0.attn.qkv.weight": torch.zeros(3, 3), "head.weight": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"no key matches.*missing: .*conv1.weight.*unexpected: .*head.weight"):
        load_backbone_state(body, foreign, source="vit.pth")
    torch.save(foreign, tmp_path / "vit.pth")
    with pytest.raises(CheckpointError, match="vit.pth"):
        load_backbone_checkpoint(body, tmp_path / "vit.pth")


def test_tracking_loss_stays_bounded_when_the_track_head_outputs_are_huge(batch):
    """Embeddings are L2-normalised before the cosine / T logits, so scaling the track head's
    weights by 1e4 cannot blow the MaskTrack cross-entropy up (issue 14: it reached ~90)."""
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = build_model(cfg, META.num_stuff, META.num_thing, TrainConfig()).train()
    with torch.no_grad():
        model.roi_heads.track_head.fc2.weight.mul_(1e4)
        model.roi_heads.track_head.fc2.bias.mul_(1e4)
    loss = model(**batch)["loss_track"]
    refs = max(len(t["boxes"]) for t in batch["ref_targets"])
    bound = float(np.log(1 + refs)) + 2 / cfg.track_temperature  # CE with logits in [-1/T, 1/T]
    assert torch.isfinite(loss) and 0 < float(loss.detach()) <= bound
    loss.backward()
    grad = model.roi_heads.track_head.fc2.weight.grad
    assert grad is not None and torch.isfinite(grad).all()


def test_reference_frame_without_grad_still_trains_every_head(batch):
    """``model.ref_frame_grad=False`` (the cheap CPU step): the reference frame's backbone pass
    builds no graph, yet the track head trains on both frames and the backbone on the key frame."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(ref_frame_grad=False), META.num_stuff, META.num_thing, TrainConfig()).train()
    losses = model(**batch)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_track"] > 0
    sum(losses.values()).backward()
    for name, param in {"conv1": model.backbone.body.conv1.weight, "track": model.roi_heads.track_head.fc1.weight,
                        "semantic": model.semantic_head.predictor.weight}.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
