"""Node loss on a simulated cluster (``pipelines/sim_cluster.py``): a worker node is killed while
the corpus job runs; the job completes on the remaining nodes, with every frame stored exactly
once, a manifest whose shards verify, and the labels of an undisturbed local run.

The actors are the production ones, on fake GPUs, with the ``simulated`` cue backend (its cost
makes pass 2 last long enough to lose a node in the middle of it). Shard writers are pinned to
the head node (``ray.writer.resources``), as on a real cluster where they run on stable CPU
nodes: a lost writer fails the job by design (``WriterLost``; the rerun resumes).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from videocups_ray.config import Config, with_overrides
from videocups_ray.data.shards import read_manifest, read_shards, shard_files
from videocups_ray.pipelines.pseudolabel import run_local, synth_source
from videocups_ray.pipelines.sim_cluster import HEAD_TYPE, NodeSpec, node_type_resource, wait_for

pytestmark = pytest.mark.ray

CUES = ("flow", "depth", "features")


def loss_config(cost_ms: float) -> Config:
    """3 SynthDrive videos x 10 frames at 64x128; cue actors at 0.5 fake GPU."""
    cues = {k: {"backend": "simulated", "cost_ms": cost_ms, "device": "cuda"} for k in CUES}
    res = {"num_cpus": 0.1, "num_gpus": 0.5}
    return with_overrides(
        Config(), cues=cues,
        synth={"sequences": 3, "frames": 10, "height": 64, "width": 128, "seed": 31},
        labeling={"num_clusters": 5, "kmeans_iters": 4, "kmeans_samples_per_frame": 64, "kmeans_frames_per_video": 2},
        ray={**{k: res for k in CUES}, "max_videos_in_flight": 2, "max_frames_in_flight": 4,
             "reader": {"num_cpus": 0.1}, "tracker": {"num_cpus": 0.1},
             "writer": {"num_cpus": 0.1, "resources": {node_type_resource(HEAD_TYPE): 0.01}}})


def alive_actors() -> list[dict]:
    from ray._private import state

    return [a for a in state.actors().values() if a["State"] == "ALIVE"]


def stored_once(out) -> dict:
    frames = list(read_shards(out))
    keys = [(f.video_id, f.frame_index) for f in frames]
    assert len(keys) == len(set(keys)), "a frame is stored twice"
    return dict(zip(keys, frames))


def test_corpus_job_survives_the_loss_of_a_worker_node(sim_cluster, tmp_path):
    """Quick cluster test (default suite): 2 GPU nodes; the node hosting the depth actor (stream
    state) is killed once pass 2 runs. Every frame once, manifest verified, labels as local."""
    from videocups_ray.pipelines.ray_pseudolabel import run_ray

    cfg = loss_config(cost_ms=150)
    source = synth_source(cfg.synth)
    expected = {(v, i) for v in source.videos() for i in range(source.num_frames(v))}
    cluster = sim_cluster([NodeSpec("gpu", count=2, cpus=2, gpus=2)], head_cpus=2)
    result: dict = {}
    errors: list[BaseException] = []

    def job() -> None:
        try:
            result.update(run_ray(cfg, source, tmp_path / "ray", progress=False))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread, which re-raises it
            errors.append(exc)

    worker = threading.Thread(target=job, daemon=True)
    worker.start()
    # pass 2 has started when the trackers are alive; then the depth actor's node goes
    wait_for(lambda: not worker.is_alive() or any(a["ActorClassName"] == "TrackerActor" for a in alive_actors()), 240)
    assert worker.is_alive(), f"the job ended before pass 2 started: {errors or result}"
    time.sleep(1.0)
    depth_nodes = {a["Address"]["NodeID"] for a in alive_actors() if a["ActorClassName"] == "DepthActor"}
    (victim,) = [n for n in cluster.worker_nodes if n.node_id in depth_nodes]
    on_victim = sorted(a["ActorClassName"] for a in alive_actors() if a["Address"]["NodeID"] == victim.node_id)
    cluster.remove_node(victim)
    assert worker.is_alive(), "the job ended before the node was lost: nothing was tested"
    worker.join(timeout=300)
    assert not worker.is_alive(), "the job did not finish within 300 s of the node loss"
    if errors:
        raise errors[0]

    assert "DepthActor" in on_victim, on_victim
    assert result["written"] == len(expected) == 30 and not result["skipped_videos"], result
    assert result["retries"] >= 1, result  # the lost depth state made chunks be redone
    stored = stored_once(tmp_path / "ray")
    assert set(stored) == expected
    manifest = read_manifest(tmp_path / "ray")
    assert sum(e["rows"] for e in manifest["shards"]) == len(expected)
    assert shard_files(tmp_path / "ray", verify="checksum")  # every committed shard's checksum matches

    # the same labels as an undisturbed run of the local engine (the cue cost does not change cues)
    local_cfg = with_overrides(cfg, cues={k: {"cost_ms": 0, "device": "cpu"} for k in CUES})
    run_local(local_cfg, source, tmp_path / "local", progress=False)
    ref = stored_once(tmp_path / "local")
    for key, f in ref.items():
        for name in ("semantic", "instance"):
            assert np.array_equal(getattr(f, name), getattr(stored[key], name)), f"{key} {name} differs"


@pytest.mark.slow
def test_live_streams_on_a_lost_node_fail_loudly_and_the_others_go_on(sim_cluster, tmp_path):
    """4 live streams; one depth actor on each of 2 "depth" nodes (streams alternate between them),
    the shared flow and feature actors on a "cue" node, trackers and writers on the head. One depth
    node is lost mid-stream: its streams fail loudly (their stream state died), the other streams
    are labelled completely, and no committed frame is lost or stored twice.

    (Measured: when the lost node also hosts a shared flow or feature actor, every stream with a
    call in flight on it fails, because Ray reports such a call as ``ActorUnavailableError`` and
    the streaming engine does not replay it; so the shared pools are pinned to a node kept here.)"""
    from videocups_ray.pipelines.stream_service import StreamService

    cfg = with_overrides(loss_config(cost_ms=40), synth={"sequences": 4, "frames": 16},
                         ray={"depth": {"replicas": 2, "resources": {node_type_resource("depth"): 0.6}},
                              "flow": {"resources": {node_type_resource("cue"): 0.1}},
                              "features": {"resources": {node_type_resource("cue"): 0.1}},
                              "tracker": {"resources": {node_type_resource(HEAD_TYPE): 0.01}}},
                         stream={"latency": "exact"})
    source = synth_source(cfg.synth)
    run_local(with_overrides(cfg, cues={k: {"cost_ms": 0, "device": "cpu"} for k in CUES}), source,
              tmp_path / "local", progress=False)
    centroids = np.load(tmp_path / "local" / "centroids.npy")
    cluster = sim_cluster([NodeSpec("depth", count=2, cpus=1, gpus=1), NodeSpec("cue", count=1, cpus=1, gpus=1)],
                          head_cpus=2)
    import ray

    service = StreamService(cfg, centroids, tmp_path / "streams", engine="ray")
    depth_nodes = [ray._private.state.actors()[a._actor_id.hex()]["Address"]["NodeID"]  # noqa: SLF001
                   for a in service._shared.pools.depth]  # noqa: SLF001 - which node serves which stream
    assert len(set(depth_nodes)) == 2, depth_nodes  # one depth actor per depth node (the 0.6 share)
    videos = source.videos()
    for vid in videos:
        service.open(vid)
    victim = next(n for n in cluster.worker_nodes if n.node_id == depth_nodes[0])
    refused: dict[str, str] = {}

    def produce(vid: str) -> None:
        for i, frame in enumerate(source.frames(vid)):
            time.sleep(0.1)  # 10 frames/s
            try:
                service.push(vid, frame)
            except Exception as exc:  # noqa: BLE001 - the stream failed: the test checks it is reported
                refused[vid] = type(exc).__name__
                return

    threads = [threading.Thread(target=produce, args=(v,), daemon=True) for v in videos]
    try:
        for t in threads:
            t.start()
        # a stream gets its depth actor (round robin) at its first frame, in the order the producer
        # threads happen to push: read the assignment instead of assuming it
        deadline = time.monotonic() + 60
        while any(service._labelers[v]._depth is None for v in videos) and time.monotonic() < deadline:  # noqa: SLF001
            time.sleep(0.01)
        node_of = {a._actor_id.hex(): n for a, n in zip(service._shared.pools.depth, depth_nodes)}  # noqa: SLF001
        stream_node = {v: node_of[service._labelers[v]._depth._actor_id.hex()] for v in videos}  # noqa: SLF001
        time.sleep(0.8)
        cluster.remove_node(victim)
        for t in threads:
            t.join(timeout=300)
        summary = service.close()
    finally:
        service.close()
    lost = {v for v in videos if stream_node[v] == victim.node_id}
    kept = set(videos) - lost
    assert len(lost) == len(kept) == 2
    assert set(summary["failed"]) == lost, summary["failed"]  # loudly: each names its error
    assert all(summary["failed"][v] for v in lost) and set(refused) <= lost
    stored = stored_once(tmp_path / "streams")  # nothing stored twice, in any stream
    for vid in kept:
        assert {i for v, i in stored if v == vid} == set(range(source.num_frames(vid))), vid
    ref = stored_once(tmp_path / "local")
    for key, f in stored.items():
        if key[0] in kept:
            assert np.array_equal(f.semantic, ref[key].semantic), key
