"""MaskTrack association, the track memory over frames, and panoptic fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videocups_ray.config import ModelConfig
from videocups_ray.model import ClassMeta, VideoTrackMemory, associate, association_scores, panoptic_fusion

CFG = ModelConfig()
META = ClassMeta(stuff_classes=(0, 1), thing_classes=(7, 8))


def _objects(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(n, 16, generator=g) * 3
    xy = torch.rand(n, 2, generator=g) * 400
    boxes = torch.cat([xy, xy + 40], dim=1)
    labels = torch.randint(1, 3, (n,), generator=g)
    return embeds, boxes, labels


def test_association_follows_slightly_moved_objects():
    embeds, boxes, labels = _objects(5, seed=0)
    perm = torch.tensor([3, 0, 4, 1, 2])
    g = torch.Generator().manual_seed(1)
    det_embeds = embeds[perm] + 0.3 * torch.randn(5, 16, generator=g)
    det_boxes = boxes[perm] + 3.0  # moved by 3 px
    new = torch.randn(1, 16, generator=g) * 3  # an object never seen, far away
    det_embeds = torch.cat([det_embeds, new])
    det_boxes = torch.cat([det_boxes, torch.tensor([[900.0, 900.0, 940.0, 940.0]])])
    det_labels = torch.cat([labels[perm], torch.tensor([1])])
    scores = association_scores(embeds, boxes, labels, det_embeds, det_boxes, det_labels, torch.full((6,), 0.9),
                                score_weight=1.0, iou_weight=2.0, class_weight=10.0,
                                temperature=CFG.track_temperature)
    assert scores.shape == (6, 6)
    match = associate(scores)
    assert match[:5].tolist() == perm.tolist()
    assert match[5] == -1


@pytest.mark.parametrize("det_scores", [(0.9, 0.6), (0.6, 0.9)])
def test_association_is_one_to_one_and_the_confident_detection_wins(det_scores):
    embeds, boxes, labels = _objects(1, seed=2)
    # two detections of the same object: only one may continue the track, the more confident
    scores = association_scores(embeds, boxes, labels, embeds.repeat(2, 1), boxes.repeat(2, 1), labels.repeat(2),
                                torch.tensor(det_scores), score_weight=1.0, iou_weight=2.0, class_weight=10.0,
                                temperature=CFG.track_temperature)
    match = associate(scores)
    winner = int(np.argmax(det_scores))
    assert match[winner] == 0 and match[1 - winner] == -1


def test_track_memory_keeps_ids_while_objects_move_and_expires_lost_tracks():
    memory = VideoTrackMemory(ModelConfig(track_memory=2))
    embeds, boxes, labels = _objects(3, seed=3)
    ids0 = memory.step(embeds, boxes, labels)
    assert ids0.tolist() == [1, 2, 3]
    for t in range(1, 4):  # objects drift 2 px per frame, detection order reversed
        ids = memory.step(embeds.flip(0), boxes.flip(0) + 2.0 * t, labels.flip(0))
        assert ids.tolist() == [3, 2, 1]
    state = memory.state_dict()
    memory.step(embeds[:0], boxes[:0], labels[:0])
    memory.step(embeds[:0], boxes[:0], labels[:0])
    memory.step(embeds[:0], boxes[:0], labels[:0])  # 3 empty frames > track_memory = 2
    assert memory.step(embeds[:1], boxes[:1], labels[:1]).tolist() == [4]
    memory.load_state_dict(state)  # resume: the same objects continue their tracks
    assert memory.step(embeds, boxes + 8.0, labels).tolist() == [1, 2, 3]


def test_panoptic_fusion_things_over_stuff_by_score():
    h, w = 20, 30
    logits = torch.zeros(3, h, w)
    logits[0, :10] = 5  # stuff 0 on top
    logits[1, 10:] = 5  # stuff 1 below
    logits[2, :, 25:] = 9  # "thing" with no instance -> void
    masks = torch.zeros(3, 1, h, w)
    masks[0, 0, 2:12, 2:12] = 0.9  # score 0.6
    masks[1, 0, 5:15, 5:15] = 0.9  # score 0.9: on top
    masks[2, 0, 6:14, 6:14] = 0.9  # score 0.8: fully under mask 1 -> dropped
    semantic, instance = panoptic_fusion(
        masks, torch.tensor([0.6, 0.9, 0.8]), torch.tensor([7, 8, 7]), torch.tensor([11, 12, 13]), logits, META,
    )
    assert semantic.dtype == np.uint8 and instance.dtype == np.int32
    assert (instance[5:15, 5:15] == 12).all() and (semantic[5:15, 5:15] == 8).all()
    visible_11 = instance == 11
    assert visible_11.sum() == 100 - 7 * 7  # overlap 5:12 x 5:12 went to the higher score
    assert (semantic[visible_11] == 7).all()
    assert 13 not in instance
    assert semantic[0, 20] == 0 and semantic[18, 20] == 1 and semantic[0, 27] == 255


def test_track_logits_are_scaled_cosines_bounded_for_any_embedding_norm():
    from videocups_ray.model.heads import track_logits

    g = torch.Generator().manual_seed(5)
    key, ref = torch.randn(6, 16, generator=g), torch.randn(4, 16, generator=g)
    t = CFG.track_temperature
    small = track_logits(key, ref, t)
    huge = track_logits(key * 1e4, ref * 1e6, t)  # what an unnormalised head can output early in training
    assert torch.allclose(small, huge, atol=1e-4)  # the norm no longer matters
    assert small.shape == (6, 5) and (small[:, 0] == 0).all()
    assert huge.abs().max() <= 1 / t + 1e-4
    cos = torch.nn.functional.cosine_similarity(key[2], ref[1], dim=0)
    assert torch.isclose(small[2, 2], cos / t, atol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        track_logits(key, ref, 0.0)
