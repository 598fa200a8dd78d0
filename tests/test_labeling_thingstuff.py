"""Thing/stuff split (mergeable histograms), the read-time panoptic label, and proposals."""

from __future__ import annotations

import numpy as np
import pytest

from videocups_ray.config import LabelingConfig
from videocups_ray.data.types import DataError
from videocups_ray.labeling import (
    FrameCues,
    SemanticLabeler,
    ThingStuffStats,
    VideoTracker,
    apply_thing_stuff,
    merge_thing_stuff,
    propose_instances,
)


def random_frames(n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        sem = rng.integers(0, 6, size=(20, 30)).astype(np.uint8)
        inst = np.where((sem == 2) | ((sem == 4) & (rng.random((20, 30)) < 0.005)),
                        rng.integers(1, 4, size=(20, 30)), 0).astype(np.int32)
        ign = rng.random((20, 30)) < 0.1
        out.append((sem, inst, ign))
    return out


def test_merge_of_two_workers_equals_whole():
    frames = random_frames(10, seed=0)
    whole = ThingStuffStats(6)
    for f in frames:
        whole.add(*f)
    w1, w2 = ThingStuffStats(6), ThingStuffStats(6)
    for f in frames[:4]:
        w1.add(*f)
    for f in frames[4:]:
        w2.add(*f)
    merged = merge_thing_stuff([w1, w2])
    np.testing.assert_array_equal(merged.in_instance, whole.in_instance)
    np.testing.assert_array_equal(merged.total, whole.total)
    assert merged.thing_classes(0.01) == whole.thing_classes(0.01) == (2,)
    # class 4 has a ratio of about 0.005: a thing only under a lower psi
    assert 4 in whole.thing_classes(0.001)
    again = ThingStuffStats.from_state_dict(whole.state_dict())
    np.testing.assert_array_equal(again.ratios(), whole.ratios())
    with pytest.raises(DataError, match="classes"):
        merge_thing_stuff([ThingStuffStats(6), ThingStuffStats(5)])


def test_apply_thing_stuff_removes_stuff_instances_and_ignores_uncovered_things():
    sem = np.array([[1, 1, 2, 2], [1, 1, 2, 2]], np.uint8)
    inst = np.array([[5, 0, 7, 0], [5, 0, 7, 7]], np.int32)
    ign = np.array([[0, 0, 0, 0], [0, 1, 0, 0]], bool)
    s, i, g = apply_thing_stuff(sem, inst, ign, thing_classes=(2,))
    np.testing.assert_array_equal(i, [[0, 0, 7, 0], [0, 0, 7, 7]])  # instance on stuff 1 gone
    np.testing.assert_array_equal(g, [[0, 0, 0, 1], [0, 1, 0, 0]])  # uncovered thing pixel
    np.testing.assert_array_equal(s, [[1, 1, 2, 255], [1, 255, 2, 2]])
    assert inst[0, 0] == 5  # inputs untouched


def test_region_growing_proposals_and_border_margin():
    h, w = 64, 96
    depth = np.full((h, w), 20.0, np.float32)
    flow = np.zeros((h, w, 2), np.float32)
    motion = np.zeros((h, w), np.float32)
    # two touching movers with different flow, and one at the left edge
    motion[20:40, 30:50] = 0.9
    flow[20:40, 30:50] = (4.0, 0.0)
    motion[20:40, 50:70] = 0.9
    flow[20:40, 50:70] = (-4.0, 0.0)
    motion[10:30, 0:12] = 0.9
    flow[10:30, 0:12] = (2.0, 1.0)
    cfg = LabelingConfig()
    lab = propose_instances(depth, flow, motion, cfg)
    assert lab.dtype == np.int32
    assert len(np.unique(lab[20:40, 30:70])) == 2  # the flow test separates the touching pair
    assert len(np.unique(lab[lab > 0])) == 3
    cropped = propose_instances(depth, flow, motion, cfg.model_copy(update={"border_margin": 12}))
    assert len(np.unique(cropped[cropped > 0])) == 2 and (cropped[:, :12] == 0).all()
    with pytest.raises(DataError, match="do not agree"):
        propose_instances(depth, flow[:10], motion, cfg)


def test_tracker_consumes_raw_cues():
    """FrameCues -> proposals (region growing + k-means) -> tracked labels, one moving object."""
    cfg = LabelingConfig(num_clusters=3, clip_length=5)
    cents = np.eye(3, 4, dtype=np.float32)
    h, w = 40, 64
    tr = VideoTracker(cfg, semantics=SemanticLabeler(cents, cfg), emit="clip")
    out = []
    for t in range(5):
        motion = np.zeros((h, w), np.float32)
        motion[10:22, 5 + 4 * t:17 + 4 * t] = 0.9
        flow = np.zeros((h, w, 2), np.float32)
        flow[motion > 0] = (4.0, 0.0)
        feats = np.zeros((4, h // 4, w // 4), np.float32)
        feats[0] = 1.0
        cues = FrameCues("cam", t, np.full((h, w), 15.0, np.float32), motion,
                         flow if t < 4 else None, -flow if t > 0 else None, None, None, feats, feats)
        out += tr.push(cues)
    out += tr.flush()
    assert [f.frame_index for f in out] == [0, 1, 2, 3, 4]
    ids = {int(f.instance[15, 10 + 4 * f.frame_index]) for f in out}
    assert len(ids) == 1 and 0 not in ids
    assert all((f.semantic == 0).all() for f in out)
    with pytest.raises(DataError, match="no SemanticLabeler"):
        VideoTracker(cfg).push(cues)
