"""Video copy-paste keeps images, semantics, track IDs, masks and boxes consistent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videocups_ray.config import TrainConfig
from videocups_ray.data.types import DataError
from videocups_ray.model import (
    ClassMeta,
    PanopticFrame,
    Tube,
    extract_tubes,
    frame_targets,
    tubes_from_predictions,
    use_self_enhanced,
    video_copy_paste,
)

H, W = 64, 128
META = ClassMeta(stuff_classes=(0, 1), thing_classes=(7, 8))
RED = torch.tensor([1.0, 0.0, 0.0])


def target_pair() -> dict:
    """A pair whose frames hold one big car (track 3, class 7) over road (class 1)."""
    sem = torch.ones(2, H, W, dtype=torch.long)
    inst = torch.zeros(2, H, W, dtype=torch.long)
    inst[:, 8:56, 16:112] = 3
    sem[inst == 3] = 7
    ignore = torch.zeros(2, H, W, dtype=torch.bool)
    ignore[:, :4] = True
    return {"images": torch.zeros(2, 3, H, W), "semantic": sem, "instance": inst, "ignore": ignore, "video_id": "v0"}


def source_pair(dx: int = 4) -> dict:
    """A red person (track 20, class 8) moving right by ``dx`` and a stuff-class region (track 21)."""
    pair = target_pair()
    pair["instance"][:] = 0
    pair["semantic"][:] = 0
    pair["images"][:] = 0.5
    for f in range(2):
        pair["instance"][f, 20:40, 30 + f * dx : 44 + f * dx] = 20
        pair["instance"][f, 50:60, 0:20] = 21  # majority class 0 (stuff): not a tube
        pair["semantic"][f][pair["instance"][f] == 20] = 8
        pair["images"][f][:, pair["instance"][f] == 20] = RED[:, None]
    return pair


def paste_cfg(**kw) -> TrainConfig:
    base = dict(copy_paste_min=1, copy_paste_max=1, copy_paste_scale=(1.0, 1.0), copy_paste_flip=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_extract_tubes_keeps_thing_tracks_in_both_frames():
    tubes = extract_tubes(source_pair(), META)
    assert len(tubes) == 1
    tube = tubes[0]
    assert tube.semantic_class == 8 and tube.images.shape == (2, 3, 20, 18)
    assert tube.masks[0, :, :14].all() and not tube.masks[0, :, 14:].any()  # union window
    assert tube.masks[1, :, 4:].all()
    with pytest.raises(DataError, match="ignore"):
        extract_tubes({k: v for k, v in source_pair().items() if k != "ignore"}, META)


def _centroid_x(mask: torch.Tensor) -> float:
    return float(torch.where(mask)[1].float().mean())


@pytest.mark.parametrize("flip,dtype", [(0.0, torch.float32), (1.0, torch.float32), (0.0, torch.uint8)])
def test_paste_is_consistent_in_both_frames(flip, dtype):
    tube = extract_tubes(source_pair(dx=4), META)[0]
    original = target_pair()
    original["images"] = original["images"].to(dtype)
    out = video_copy_paste(original, [tube], np.random.default_rng(0), paste_cfg(copy_paste_flip=flip))
    (new_id,) = out["pasted_track_ids"].tolist()
    assert new_id == 4  # fresh: above every existing ID
    pasted = out["instance"] == new_id
    assert pasted[0].sum() == pasted[1].sum() == 20 * 14
    motion = _centroid_x(pasted[1]) - _centroid_x(pasted[0])
    assert motion == (4.0 if flip == 0.0 else -4.0)  # the tube's own trajectory, mirrored if flipped
    for f in range(2):
        assert (out["semantic"][f][pasted[f]] == 8).all()
        assert not out["ignore"][f][pasted[f]].any()
        red = (RED * 255).to(torch.uint8) if dtype == torch.uint8 else RED
        assert out["images"].dtype == dtype
        assert torch.equal(out["images"][f][:, pasted[f]], red[:, None].expand(3, int(pasted[f].sum())))
        # occlusion: the car lost exactly the pixels the person covers, and nothing else changed
        car_before = original["instance"][f] == 3
        car_after = out["instance"][f] == 3
        assert torch.equal(car_after, car_before & ~pasted[f])
        assert torch.equal(out["semantic"][f][~pasted[f]], original["semantic"][f][~pasted[f]])
        # boxes are recomputed from the edited maps
        t = frame_targets(out["semantic"][f], out["instance"][f], out["ignore"][f], META)
        ys, xs = torch.where(pasted[f])
        j = t["track_ids"].tolist().index(new_id)
        assert t["boxes"][j].tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert t["labels"][j] == 2  # class 8 -> thing label 2
        assert torch.equal(t["masks"][j].bool(), pasted[f])
    assert torch.equal(original["instance"], target_pair()["instance"])  # input not modified


def test_random_pastes_keep_labels_consistent():
    tubes = extract_tubes(source_pair(dx=3), META) + [
        Tube(torch.rand(2, 3, 12, 30), torch.ones(2, 12, 30, dtype=torch.bool), 7)
    ]
    cfg = paste_cfg(copy_paste_max=8, copy_paste_scale=(0.25, 1.5), copy_paste_flip=0.5, copy_paste_min_pixels=4)
    counts = set()
    for seed in range(12):
        out = video_copy_paste(target_pair(), tubes, np.random.default_rng(seed), cfg)
        ids = out["pasted_track_ids"].tolist()
        counts.add(len(ids))
        assert 1 <= len(ids) <= 2 and len(set(ids)) == len(ids)
        for tid in ids:
            for f in range(2):
                m = out["instance"][f] == tid
                # a later paste may cover an earlier one, but never a whole frame of a
                # 2-paste draw with these sizes; each pixel carries one class for its ID
                classes = torch.unique(out["semantic"][f][m]).tolist()
                assert len(classes) <= 1 and (not classes or classes[0] in (7, 8))
            assert (out["instance"][0] == tid).any() or (out["instance"][1] == tid).any()
    assert counts == {1, 2}


def test_copy_paste_off_returns_an_unchanged_copy():
    out = video_copy_paste(target_pair(), extract_tubes(source_pair(), META), np.random.default_rng(0), TrainConfig(copy_paste=False))
    assert out["pasted_track_ids"].numel() == 0
    assert torch.equal(out["instance"], target_pair()["instance"])


def _prediction(track_ids, boxes, scores, classes, masks_at) -> PanopticFrame:
    instance = np.zeros((H, W), np.int32)
    for tid, (y0, y1, x0, x1) in zip(track_ids, masks_at):
        instance[y0:y1, x0:x1] = tid
    return PanopticFrame(0, np.zeros((H, W), np.uint8), instance, np.array(boxes, np.float32),
                         np.array(scores, np.float32), np.array(classes), np.array(track_ids))


def test_self_enhanced_tubes_are_confident_and_unexplained():
    pair = target_pair()
    pair["instance"][:, 8:56, 16:112] = 0  # pseudo instance: a small car only
    pair["instance"][:, 10:30, 10:40] = 3
    frames = []
    for f in range(2):
        regions = [(40, 60, 60 + f, 80 + f), (10, 30, 12, 40), (40, 60, 100, 120)]
        boxes = [[x0, y0, x1, y1] for y0, y1, x0, x1 in regions]
        # track 11: confident, free; 12: confident but on the pseudo car; 13: not confident
        frames.append(_prediction([11, 12, 13], boxes, [0.9, 0.95, 0.6], [7, 7, 8], regions))
    tubes = tubes_from_predictions(pair, tuple(frames), TrainConfig())
    assert len(tubes) == 1 and tubes[0].source == "self" and tubes[0].semantic_class == 7
    assert tubes[0].masks.shape == (2, 20, 21)
    cfg = TrainConfig(self_enhanced_after=100)
    assert not use_self_enhanced(99, cfg) and use_self_enhanced(100, cfg)
    assert not use_self_enhanced(500, TrainConfig(self_enhanced=False))
    every = TrainConfig(self_enhanced_after=100, self_enhanced_every=4)
    assert [s for s in range(95, 110) if use_self_enhanced(s, every)] == [100, 104, 108]
