"""Actors called directly (no Ray): writer exactly-once, chunk plans, ID stitching, streaming."""

from __future__ import annotations

import numpy as np
import pytest

from videocups_ray.actors.base import FailurePlan
from videocups_ray.stages.chunks import apply_id_map
from videocups_ray.config import Config, with_overrides
from videocups_ray.data.shards import read_shards
from videocups_ray.data.types import DataError
from videocups_ray.stages.chunks import plan_chunks, stitch_ids
from videocups_ray.pipelines.streaming import StreamingPseudoLabeler, StreamRunner


def test_plan_chunks_cover_every_frame_once():
    cfg = with_overrides(Config(), labeling={"clip_length": 5}, ray={"chunk_frames": 12, "chunk_overlap": 2})
    chunks = plan_chunks("v", 23, cfg)  # 12 rounds down to 10 (whole clips); a 3-frame remainder stays
    assert [(c.start, c.stop, c.tail) for c in chunks] == [(0, 10, 2), (10, 20, 2), (20, 23, 0)]
    owned = [i for c in chunks for i in range(c.start, c.stop)]
    assert owned == list(range(23))
    chunks = plan_chunks("v", 21, cfg)  # a 1-frame remainder joins the previous chunk
    assert [(c.start, c.stop) for c in chunks] == [(0, 10), (10, 21)]
    with pytest.raises(DataError, match="at least 2"):
        plan_chunks("v", 1, cfg)


def test_stitch_ids_matches_tracks_over_the_overlap():
    tail = {10: np.zeros((6, 6), np.int32), 11: np.zeros((6, 6), np.int32)}
    head = {10: np.zeros((6, 6), np.int32), 11: np.zeros((6, 6), np.int32)}
    for m in tail.values():
        m[0:3, 0:3], m[4:6, 4:6] = 40, 41
    for m in head.values():
        m[0:3, 0:3], m[3:4, 0:2] = 2, 1  # local 2 is global 40; local 1 is new
    id_map, nxt = stitch_ids(tail, head, [1, 2, 5], next_id=42, tau=0.4, where="v")
    assert id_map == {2: 40, 1: 42, 5: 43} and nxt == 44
    assert apply_id_map(head[10], id_map)[0, 0] == 40
    first, nxt = stitch_ids(None, {}, [3, 1], next_id=1, tau=0.4, where="v")
    assert first == {3: 3, 1: 1} and nxt == 4


def test_failure_plan_fires_once(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        FailurePlan("nobody", 1, str(tmp_path / "m"))
    (tmp_path / "m").write_text("")  # already fired in an earlier incarnation
    from videocups_ray.actors.base import FailureInjector

    inj = FailureInjector("flow", (FailurePlan("flow", 1, str(tmp_path / "m")),))
    inj.tick()  # does not exit
    assert inj.calls == 1


@pytest.fixture(scope="module")
def tiny(tiny_local):
    return tiny_local[:3]


def test_streaming_emits_in_order_and_finals_equal_local(tiny):
    cfg, frames, out = tiny
    cents = np.load(out / "centroids.npy")
    s = StreamingPseudoLabeler(cfg, cents)
    provisional, finals, when = [], {}, {}
    for f in frames:
        for lf in s.push(f):
            (finals.__setitem__(lf.frame_index, lf) if lf.final else provisional.append(lf.frame_index))
            when.setdefault(lf.frame_index, f.frame_index)
    for lf in s.end():
        if lf.final:
            finals[lf.frame_index] = lf
    assert provisional == sorted(provisional)  # in order
    assert all(when[t] - t <= 2 for t in when)  # first label of t no later than frame t+2's arrival
    local = {f.frame_index: f for f in read_shards(out)}
    assert sorted(finals) == sorted(local) == list(range(7))
    for i, lf in finals.items():
        assert np.array_equal(lf.semantic, local[i].semantic) and np.array_equal(lf.instance, local[i].instance)


def test_stream_runner_backpressure_drop_is_counted(tiny):
    cfg, frames, out = tiny
    cents = np.load(out / "centroids.npy")
    got = []
    runner = StreamRunner(StreamingPseudoLabeler(cfg, cents), got.append, max_pending=1, policy="drop")
    accepted = [runner.offer(f) for f in frames]  # pushed faster than it can be processed
    stats = runner.close()
    assert stats.dropped == accepted.count(False) >= 1 and stats.received == len(frames)
    labelled = {lf.frame_index for lf in got if lf.final}
    dropped = {f.frame_index for f, ok in zip(frames, accepted) if not ok}
    assert not labelled & dropped
    with pytest.raises(ValueError, match="policy"):
        StreamRunner(StreamingPseudoLabeler(cfg, cents), got.append, max_pending=1, policy="maybe")


# --------------------------------------------------------------------------- issue 17 review fixes
def test_cuda_stage_in_an_actor_without_gpu_is_an_error():
    """device_for used to warn and run on CPU; a configured device that is absent is an error."""
    from videocups_ray.actors.base import DeviceError, device_for
    from videocups_ray.config import ActorResources

    with pytest.raises(DeviceError, match=r"depth actor: stage cues\.depth .*'cuda'.*num_gpus"):
        device_for(ActorResources(num_gpus=0), "cuda", actor="depth", stage="cues.depth")
    assert device_for(ActorResources(num_gpus=0.5), "cuda:0", actor="depth", stage="cues.depth") == "cuda:0"
    assert device_for(ActorResources(), "cpu", actor="flow", stage="cues.flow") == "cpu"


class _FakeRay:
    """``wait`` / ``get`` over plain values; a value that is an exception is raised by ``get``."""

    @staticmethod
    def wait(refs, num_returns, timeout=None, fetch_local=True):
        return refs[:num_returns], refs[num_returns:]

    @staticmethod
    def get(ref):
        for r in ref if isinstance(ref, list) else [ref]:
            if isinstance(r, BaseException):
                raise r
        return ref


def test_progress_counts_failed_calls_and_logs_unexpected_errors(caplog):
    """Progress.collect swallowed every exception at debug level; expected failures (a task
    or an actor that failed, handled where its result is used) are counted, others logged."""
    from videocups_ray.pipelines.ray_progress import Progress

    p = Progress(10, {"flow": 1}, enabled=False)
    for ref in (0.5, DataError("frame 3 undecodable"), ZeroDivisionError("bug"), 0.25):
        p.add_busy_ref("flow", ref)
    with caplog.at_level("ERROR"):
        p.collect(_FakeRay())
    assert p.busy["flow"] == pytest.approx(0.75) and p.failed_calls == 1
    assert any("could not be read" in r.message and r.exc_info for r in caplog.records)


def test_write_drain_threshold_is_a_config_field():
    from videocups_ray.config import RayConfig

    assert RayConfig().write_drain_keep == 16
    with pytest.raises(Exception, match="write_drain_keep"):
        with_overrides(Config(), ray={"write_drain_keep": -1})


def test_s3_output_never_creates_a_local_folder(tmp_path, monkeypatch):
    """``--out s3://b/x`` used to write ./s3:/b/x; with no reachable endpoint it is one line."""
    from videocups_ray.data.inputs import MemorySource, synth_source
    from videocups_ray.pipelines.pseudolabel import run_local

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    cfg = with_overrides(Config(), synth={"sequences": 1, "frames": 2, "height": 32, "width": 64})
    src = MemorySource(list(synth_source(cfg.synth)))
    with pytest.raises(DataError) as err:
        run_local(cfg, src, "s3://no-such-bucket-videocups/x", progress=False)
    assert "s3://no-such-bucket-videocups/x" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "s3:").exists() and list(tmp_path.iterdir()) == []
