"""What travels to which actor (``stages/payload.py``), concurrent cue calls, and the pipelined
streaming engine: ground truth goes only to the cue whose backend reads it, and with flow, depth
and features running at once and several frames of a stream in flight, every engine still
writes the local engine's shards bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from videocups_ray.config import Config, with_overrides
from videocups_ray.data.synthdrive import generate_sequence
from videocups_ray.stages import PairBatch
from videocups_ray.stages.payload import PayloadPlan, base_batch, gt_batch, merge_batch

from test_ray_pseudolabel import assert_same_labels, frames_by_key
from test_ray_pseudolabel import tiny_config as ray_tiny_config

GT_ARRAYS = ("semantic", "instance", "depth", "flow", "flow_valid")
SIM = {k: {"backend": "simulated", "cost_ms": 5} for k in ("flow", "depth", "features")}


def _batch(n: int = 3) -> PairBatch:
    cfg = ray_tiny_config()
    frames = list(generate_sequence(cfg.synth, 0))[: n + 1]
    return PairBatch("s", 0, frames[:-1], frames[1:])


def test_base_part_carries_the_image_and_small_metadata_only():
    batch = _batch()
    base = base_batch(batch)
    for f, full in zip(base.frames_t + base.frames_t1, batch.frames_t + batch.frames_t1):
        assert f.image is full.image and (f.video_id, f.frame_index) == (full.video_id, full.frame_index)
        assert all(getattr(f, a) is None for a in GT_ARRAYS)
        assert set(f.extra) == {"K", "pose"}, set(f.extra)  # no motion mask, no backward flow
    assert base.frames_t[1] is base.frames_t1[0], "pairs must keep sharing one frame object"


def test_default_cues_ship_one_part_and_keep_the_dependency_chain():
    from videocups_ray.pipelines.ray_pseudolabel import CueWiring

    w = CueWiring.from_config(Config())
    assert w.plan.num_parts == 1 and set(w.plan.part_of.values()) == {None}
    assert w.depth_after_flow and w.features_after_depth  # geometry depth reads flow, handmade features depth


def test_simulated_cues_get_only_their_ground_truth_and_run_at_once():
    from videocups_ray.pipelines.ray_pseudolabel import CueWiring

    cfg = with_overrides(Config(), cues=SIM)
    w = CueWiring.from_config(cfg)
    assert w.plan.num_parts == 4 and not w.depth_after_flow and not w.features_after_depth
    batch = _batch()
    parts = w.plan.split(batch)
    flow = parts[1 + w.plan.part_of["flow"]].frames_t1[0]  # frame 1: it has a backward flow
    depth = parts[1 + w.plan.part_of["depth"]].frames_t[0]
    feats = parts[1 + w.plan.part_of["features"]].frames_t[0]
    assert flow.flow is not None and "flow_bw" in flow.extra and flow.depth is None and flow.semantic is None
    assert depth.depth is not None and "motion" in depth.extra and depth.flow is None and depth.semantic is None
    assert feats.semantic is not None and feats.instance is None and feats.depth is None
    assert all(p.frames_t[0].image.size == 0 for p in parts[1:]), "the image travels once, in the base part"
    merged = merge_batch(parts[0], parts[1 + w.plan.part_of["flow"]])
    for a, b in zip(merged.frames_t + merged.frames_t1, batch.frames_t + batch.frames_t1):
        assert np.array_equal(a.flow, b.flow) and np.array_equal(a.image, b.image)
        if "flow_bw" in b.extra:
            assert np.array_equal(a.extra["flow_bw"], b.extra["flow_bw"])


def test_a_mismatched_ground_truth_part_is_an_error():
    from videocups_ray.data.types import DataError

    batch = _batch()
    other = PairBatch("s", 1, batch.frames_t, batch.frames_t1)
    with pytest.raises(DataError, match="does not match"):
        merge_batch(base_batch(batch), gt_batch(other, ("depth",)))


@pytest.mark.ray
def test_reader_sends_cue_actors_no_ground_truth_they_do_not_read(ray_session):
    """The reader actor's parts, fetched as the cue actors get them: no panoptic labels anywhere
    (no cue reads them), flow ground truth only in the flow part; default cues: the image alone."""
    from videocups_ray.actors.base import remote_class
    from videocups_ray.actors.reader import ReaderActor
    from videocups_ray.stages import ChunkSpec

    for cues in (SIM, {}):
        cfg = with_overrides(ray_tiny_config(), cues=cues)
        plan = PayloadPlan.from_config(cfg)
        reader = remote_class(ReaderActor, cfg.ray, "reader").remote("synth:", cfg.synth)
        try:
            ray_session.get(reader.open.remote("s", ChunkSpec("0000", 0, None), cfg.synth.frames, 2))
            refs = reader.batch.options(num_returns=plan.num_parts).remote("s", 0, plan)
            parts = ray_session.get(list(refs) if plan.num_parts > 1 else [refs])
        finally:
            ray_session.kill(reader, no_restart=True)
        assert len(parts) == (4 if cues else 1)
        for f in parts[0].frames_t + parts[0].frames_t1:
            assert f.image.shape == (96, 192, 3) and all(getattr(f, a) is None for a in GT_ARRAYS)
        for i, p in enumerate(parts[1:]):
            for f in p.frames_t:
                assert f.instance is None  # nobody reads the instance ids
                assert (f.flow is not None) == (i == plan.part_of["flow"])


@pytest.mark.ray
@pytest.mark.slow  # ~90 s on 2 cores; the default suite covers pipelined streams in test_engines_identical
def test_simulated_cues_concurrent_and_pipelined_streams_are_bit_identical(ray_session, tmp_path):
    """Simulated cues (flow, depth, features at once; ground truth in parts), the Ray corpus
    engine and the Ray streaming engine with 3 frames of a stream in flight: the local engine's
    shards, and the streams really had several frames in flight."""
    from videocups_ray.pipelines.pseudolabel import run_local
    from videocups_ray.pipelines.ray_pseudolabel import run_ray
    from videocups_ray.pipelines.ray_streaming import RayStreamLabeler
    from videocups_ray.pipelines.stream_service import StreamService

    cfg = with_overrides(ray_tiny_config(), cues=SIM, stream={"max_frames_in_flight": 3})
    run_local(cfg, "synth:", tmp_path / "local", progress=False)
    ref = frames_by_key(tmp_path / "local")
    assert len(ref) == 16
    run_ray(cfg, "synth:", tmp_path / "ray", progress=False)
    got = frames_by_key(tmp_path / "ray")
    assert sorted(got) == sorted(ref)
    assert_same_labels(ref, got, sorted(ref))

    seen: list[int] = []
    push = RayStreamLabeler.push

    def counting_push(self, frame):
        out = push(self, frame)
        seen.append(self.pending)
        return out

    cents = np.load(tmp_path / "local" / "centroids.npy")
    RayStreamLabeler.push = counting_push
    try:
        with StreamService(cfg, cents, tmp_path / "stream", engine="ray") as service:
            seqs = {f"{k:04d}": list(generate_sequence(cfg.synth, k)) for k in range(cfg.synth.sequences)}
            for vid in seqs:
                service.open(vid)
            for i in range(cfg.synth.frames):
                for vid, frames in seqs.items():
                    service.push(vid, frames[i])
        summary = service.close()
    finally:
        RayStreamLabeler.push = push
    assert summary["failed"] == {} and summary["written"] == 16, summary
    assert max(seen) >= 2, f"never more than one frame in flight: {seen}"
    assert max(seen) <= 3
    streamed = frames_by_key(tmp_path / "stream")
    assert sorted(streamed) == sorted(ref)
    assert_same_labels(ref, streamed, sorted(ref))
