"""Streaming latency modes (one_frame vs exact), VideoTracker.preview, backpressure reporting."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from videocups_ray.config import Config, with_overrides
from videocups_ray.data.shards import read_shards
from videocups_ray.data.types import DataError
from videocups_ray.labeling import FrameProposal, LabelledFrame, VideoTracker
from videocups_ray.pipelines.streaming import StreamingPseudoLabeler, StreamRunner, run_stream


@pytest.fixture(scope="module")
def tiny(tiny_local):
    return tiny_local


def _stream(cfg, cents, frames, latency):
    """Push every frame; returns provisional frames, final frames and the frame whose arrival
    first labelled each frame (-1: labelled by ``end()``)."""
    s = StreamingPseudoLabeler(cfg, cents, latency=latency)
    provisional: dict[int, LabelledFrame] = {}
    finals: dict[int, LabelledFrame] = {}
    when: dict[int, int] = {}
    order: list[int] = []
    pushed = [(f.frame_index, s.push(f)) for f in frames] + [(-1, s.end())]
    s.close()
    for arrival, got in pushed:
        for lf in got:
            when.setdefault(lf.frame_index, arrival)
            if lf.final:
                assert lf.frame_index not in finals
                finals[lf.frame_index] = lf
            else:
                assert lf.frame_index not in provisional, "a frame was labelled provisionally twice"
                provisional[lf.frame_index] = lf
                order.append(lf.frame_index)
    assert order == sorted(order)
    return provisional, finals, when


@pytest.fixture(scope="module")
def both_modes(tiny):
    cfg, frames, out, cents = tiny
    return {mode: _stream(cfg, cents, frames, mode) for mode in ("one_frame", "exact")}


def test_one_frame_labels_t_when_t_plus_1_arrives(tiny, both_modes):
    _, frames, _, _ = tiny
    provisional, finals, when = both_modes["one_frame"]
    last = frames[-1].frame_index
    assert sorted(provisional) == list(range(last))  # every frame but the last, also clip ends (3)
    assert all(when[t] == t + 1 for t in range(last))
    assert when[last] == -1 and last in finals and last not in provisional


def test_exact_mode_labels_t_when_t_plus_2_arrives(both_modes):
    provisional, _, when = both_modes["exact"]
    # clip_length 4: frames 3 (last of clip 0) and 6 (last of the video) come only as finals
    assert sorted(provisional) == [0, 1, 2, 4, 5]
    assert all(when[t] == t + 2 for t in (0, 1, 2, 4))
    assert when[5] == -1  # its t+2 never comes: labelled when the stream ends


def test_finals_are_exact_in_both_modes(tiny, both_modes):
    _, _, out, _ = tiny
    local = {f.frame_index: f for f in read_shards(out)}
    for mode, (_, finals, _) in both_modes.items():
        assert sorted(finals) == sorted(local) == list(range(7)), mode
        for i, lf in finals.items():
            assert np.array_equal(lf.semantic, local[i].semantic), (mode, i)
            assert np.array_equal(lf.instance, local[i].instance), (mode, i)
            assert np.array_equal(lf.ignore, local[i].extra["ignore"]), (mode, i)


def test_one_frame_provisional_keeps_exact_track_ids(both_modes):
    fast, _, _ = both_modes["one_frame"]
    exact, _, _ = both_modes["exact"]
    assert set(exact) <= set(fast)
    for t in exact:
        assert np.array_equal(fast[t].instance, exact[t].instance), t
        assert np.array_equal(fast[t].ignore, exact[t].ignore), t
        agree = float(np.mean(fast[t].semantic == exact[t].semantic))
        assert agree > 0.5, f"frame {t}: stand-in vote changed {1 - agree:.0%} of the semantics"


def test_bad_latency_mode_is_rejected(tiny):
    cfg, _, _, cents = tiny
    with pytest.raises(ValueError, match="latency"):
        StreamingPseudoLabeler(cfg, cents, latency="zero")
    with pytest.raises(Exception, match="stream.latency"):
        with_overrides(cfg, stream={"latency": "zero"})


# --------------------------------------------------------------------------- VideoTracker.preview
def _proposal(t: int, semantic_value: int, h: int = 24, w: int = 32) -> FrameProposal:
    inst = np.zeros((h, w), np.int32)
    inst[4:12, 2 + t:10 + t] = 1  # a box moving 1 px/frame to the right
    inst[14:20, 20:28] = 2  # a still box
    sem = np.full((h, w), semantic_value, np.uint8)
    fw = np.zeros((h, w, 2), np.float32)
    fw[4:12, 2 + t:10 + t, 0] = 1.0
    bw = np.zeros((h, w, 2), np.float32)
    bw[4:12, 2 + t:10 + t, 0] = -1.0
    occ = np.zeros((h, w), bool)
    return FrameProposal("v", t, inst, sem, fw, bw, occ, occ.copy())


def _same_state(a, b) -> bool:
    """Deep equality of state_dict trees (dicts, lists, arrays, scalars)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


def test_preview_leaves_state_unchanged_and_matches_push_ids():
    cfg = Config().labeling.model_copy(update={"num_clusters": 5, "clip_length": 10})
    tracker = VideoTracker(cfg, emit="online")
    assert tracker.preview(None) is None  # nothing waiting
    tracker.push(_proposal(0, 1))
    tracker.push(_proposal(1, 1))  # frame 0 labelled, frame 1 waiting
    before = tracker.state_dict()
    stand_in = _proposal(2, 3)  # semantics disagree with frame 1 everywhere
    fast = tracker.preview(stand_in)
    assert _same_state(before, tracker.state_dict())
    assert fast is not None and fast.frame_index == 1 and not fast.final
    with pytest.raises(DataError, match="frame 3"):
        tracker.preview(_proposal(3, 1))  # not the frame after the waiting one
    pushed = tracker.push(_proposal(2, 1))
    assert [lf.frame_index for lf in pushed] == [1]
    assert np.array_equal(fast.instance, pushed[0].instance)
    assert set(np.unique(fast.instance)) == {0, 1, 2}  # IDs continued from frame 0, none new
    # vote {1 (t-1), 1 (t), 3 (stand-in)} keeps 1; a preview without t+1 keeps S_t too
    assert np.all(fast.semantic == 1) and np.all(pushed[0].semantic == 1)


# --------------------------------------------------------------------------- backpressure
def test_block_policy_waits_and_reports(tiny):
    cfg, frames, _, cents = tiny
    got: list[LabelledFrame] = []
    runner = StreamRunner(StreamingPseudoLabeler(cfg, cents), got.append, max_pending=1, policy="block")
    assert all(runner.offer(f) for f in frames)  # offered faster than processed: waits, never drops
    summary = runner.close().summary()
    assert summary["dropped"] == 0 and summary["blocked"] >= 1 and summary["blocked_s"] > 0
    assert summary["received"] == len(frames) == summary["final"]
    assert summary["provisional"] == len(frames) - 1
    assert len(runner.stats.processing_s) == len(frames)
    assert summary["latency_p95_s"] >= summary["latency_p50_s"] > 0


def test_drop_policy_counts_in_run_stream_summary(tiny, tmp_path):
    cfg, frames, _, cents = tiny
    cfg = with_overrides(cfg, stream={"backpressure": "drop", "max_pending": 2})
    labelled = {}
    ready = threading.Condition()

    def on_labels(lf: LabelledFrame) -> None:
        with ready:
            labelled.setdefault(lf.frame_index, lf.final)
            ready.notify_all()

    def producer():
        """Frames 0-3 at the pace of processing (frame t after t-2 is labelled, so the queue of 2
        never overflows), then a burst of 3 frames into it while frame 3 is processed."""
        for f in frames[:4]:
            with ready:
                assert ready.wait_for(lambda: f.frame_index < 2 or f.frame_index - 2 in labelled, timeout=120)
            yield f
        yield from frames[4:]

    summary = run_stream(cfg, producer(), tmp_path / "out", centroids=cents, on_labels=on_labels)
    assert summary["policy"] == "drop" and summary["stream_latency"] == "one_frame"
    assert summary["dropped"] >= 1 and summary["blocked"] == 0
    assert summary["received"] == len(frames)
    written = sorted(f.frame_index for f in read_shards(tmp_path / "out"))
    assert written[:4] == [0, 1, 2, 3]  # the paced clip is complete
    assert summary["written"] == len(written) == summary["final"]
    assert len(written) + summary["dropped"] <= len(frames)  # dropped frames are never written
