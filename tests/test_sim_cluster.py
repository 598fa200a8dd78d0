"""A simulated multi-node cluster with fake GPUs, and GPU pinning of the real cue actors on it.

Ray schedules the actors by the resources the nodes declare and sets ``CUDA_VISIBLE_DEVICES``
for each, exactly as on GPU nodes; the actors are the production classes (``actors/cues.py``)
with a ``placement()`` probe added (``sim_cluster.probed``), running the ``simulated`` backend.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from videocups_ray.actors.base import remote_class
from videocups_ray.actors.cues import FeatureActor, FlowActor, PairBatch
from videocups_ray.config import Config, with_overrides
from videocups_ray.data.synthdrive import generate_sequence
from videocups_ray.pipelines.sim_cluster import (
    NODE_IP,
    NodeSpec,
    node_type_resource,
    probed,
    uniform,
)

pytestmark = pytest.mark.ray

SIM_CUES = {k: {"backend": "simulated", "cost_ms": 1, "device": "cuda"} for k in ("flow", "depth", "features")}


def gpu_config(**ray_sections) -> Config:
    return with_overrides(Config(), cues=SIM_CUES, ray=ray_sections)


def placements(ray, actors, timeout: float = 300) -> list[dict]:
    return ray.get([a.placement.remote() for a in actors], timeout=timeout)


def check_pinning(places: list[dict], fraction: float) -> Counter:
    """Each actor sees exactly the one device Ray assigned it; returns actors per (node, device)."""
    for p in places:
        assert len(p["gpu_ids"]) == 1, p
        assert p["cuda_visible_devices"] == p["gpu_ids"][0], p
    per_device = Counter((p["node_id"], p["gpu_ids"][0]) for p in places)
    assert max(per_device.values()) * fraction <= 1.0, per_device  # no device over-subscribed
    return per_device


def test_two_nodes_pin_whole_and_fractional_gpus(sim_cluster):
    """Quick cluster test (default suite): 2 nodes x 1 fake GPU; a flow actor at 1 GPU and 2
    feature actors at 0.5 fill both devices; one more GPU actor waits; the actors do real work.
    (Few actors on purpose: every actor process imports torch, seconds of CPU each.)"""
    cluster = sim_cluster(uniform(2, gpus_per_node=1, cpus_per_node=2))
    import ray

    assert ray.cluster_resources()["GPU"] == 2
    assert ray.cluster_resources()[node_type_resource("gpu")] == 2
    cfg = gpu_config(flow={"num_cpus": 0.1, "num_gpus": 1}, features={"num_cpus": 0.1, "num_gpus": 0.5})
    Flow = remote_class(probed(FlowActor), cfg.ray, "flow")
    Feat = remote_class(probed(FeatureActor), cfg.ray, "features")
    flows = [Flow.remote(cfg, "cuda")]
    whole = check_pinning(placements(ray, flows), 1.0)  # placed first, so the halves cannot scatter
    feats = [Feat.remote(cfg, "cuda") for _ in range(2)]
    half = check_pinning(placements(ray, feats), 0.5)
    assert list(half.values()) == [2]  # the two half-GPU actors share the free device
    assert not set(whole) & set(half)  # a whole-GPU actor shares its device with nobody
    assert len({node for node, _ in set(whole) | set(half)}) == 2
    assert {p["node_type"] for p in placements(ray, flows + feats)} == {"gpu"}

    extra = Feat.remote(cfg, "cuda")  # 2.0 of 2 GPUs are taken: it must wait, not double up
    ready, _ = ray.wait([extra.ready.remote()], timeout=3)
    assert not ready
    ray.kill(feats[0])
    (p,) = placements(ray, [extra])  # it takes the freed half-device
    assert (p["node_id"], p["gpu_ids"][0]) in half

    frames = list(generate_sequence(with_overrides(cfg, synth={"frames": 2, "height": 32, "width": 64}).synth, 0))
    fr, busy = ray.get(flows[0].process.remote(PairBatch("v", 0, frames[:1], frames[1:])), timeout=60)
    assert fr.fw.shape == (1, 32, 64, 2) and busy >= 0.001  # simulated cost_ms: 1 ms per pair

    # Cluster traffic stays on loopback: every node advertises the loopback address, and so does the GCS.
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {NODE_IP}
    assert cluster.address.startswith(NODE_IP + ":")


@pytest.mark.slow
def test_quarter_gpus_pack_four_per_device(sim_cluster):
    """8 depth actors at 0.25 GPU on one node with 2 fake GPUs: 4 per device, and a 9th waits.
    (Each actor process imports torch: 8 of them is what 2 loaded cores start in a few minutes.)"""
    sim_cluster(uniform(1, gpus_per_node=2, cpus_per_node=4))
    import ray

    cfg = gpu_config(depth={"num_cpus": 0.1, "num_gpus": 0.25})
    from videocups_ray.actors.cues import DepthActor

    Depth = remote_class(probed(DepthActor), cfg.ray, "depth")
    actors = [Depth.remote(cfg, "cuda") for _ in range(8)]
    per_device = check_pinning(placements(ray, actors), 0.25)
    assert len(per_device) == 2 and set(per_device.values()) == {4}
    ninth = Depth.remote(cfg, "cuda")
    ready, _ = ray.wait([ninth.ready.remote()], timeout=3)
    assert not ready


@pytest.mark.slow
def test_heterogeneous_node_types_and_pinning_by_type(sim_cluster):
    """Two node types with different fake GPU counts and memory; work pinned by type resource."""
    sim_cluster([NodeSpec("big", count=1, cpus=2, gpus=4, gpu_memory_gb=4 * 80),
                 NodeSpec("small", count=1, cpus=2, gpus=1, gpu_memory_gb=24)])
    import ray

    assert ray.cluster_resources()["GPU"] == 5 and ray.cluster_resources()["gpu_memory_gb"] == 344
    cfg = gpu_config(flow={"num_cpus": 0.1, "num_gpus": 1})
    Flow = probed(FlowActor)
    on_big = [ray.remote(num_cpus=0.1, num_gpus=1, resources={node_type_resource("big"): 0.01})(Flow)
              .remote(cfg, "cuda") for _ in range(4)]
    on_small = ray.remote(num_cpus=0.1, num_gpus=1, resources={node_type_resource("small"): 0.01})(Flow).remote(cfg, "cuda")
    big = placements(ray, on_big)
    assert {p["node_type"] for p in big} == {"big"} and sorted(p["gpu_ids"][0] for p in big) == ["0", "1", "2", "3"]
    (small,) = placements(ray, [on_small])
    assert small["node_type"] == "small" and small["cuda_visible_devices"] == "0"
    # An actor that needs more GPU memory than a small node has can only land on the big one.
    heavy = ray.remote(num_cpus=0.1, num_gpus=1, resources={"gpu_memory_gb": 40})(Flow).remote(cfg, "cuda")
    ready, _ = ray.wait([heavy.ready.remote()], timeout=3)
    assert not ready  # the big node's 4 GPUs are taken and the small one lacks the memory
    ray.kill(on_big[0])
    assert placements(ray, [heavy])[0]["node_type"] == "big"


@pytest.mark.slow
def test_node_loss_kills_only_that_nodes_actors(sim_cluster):
    """Scaffolding for the node-loss tests: a removed node takes its actors with it, Ray reports
    them dead, and the other node's actors go on."""
    cluster = sim_cluster(uniform(2, gpus_per_node=1, cpus_per_node=2))
    import ray

    cfg = gpu_config(flow={"num_cpus": 0.1, "num_gpus": 0.5})
    Flow = remote_class(probed(FlowActor), cfg.ray, "flow", max_restarts=0)
    actors = [Flow.remote(cfg, "cuda") for _ in range(4)]
    places = placements(ray, actors)
    by_node = defaultdict(list)
    for a, p in zip(actors, places):
        by_node[p["node_id"]].append(a)
    assert sorted(len(v) for v in by_node.values()) == [2, 2]
    victim = cluster.worker_nodes[0]
    cluster.remove_node(victim)
    lost, kept = by_node[victim.node_id], [a for n, v in by_node.items() if n != victim.node_id for a in v]
    for a in lost:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(a.placement.remote(), timeout=60)
    assert {p["node_id"] for p in placements(ray, kept)} != {victim.node_id}
    assert ray.cluster_resources()["GPU"] == 1  # the lost node's GPU is gone from the cluster


@pytest.mark.slow
def test_cli_cluster_up_runs_the_pipeline_then_down_leaves_nothing(tmp_path):
    """`videocups cluster up` -> the unchanged `pseudolabel` command with --set ray.address=... and
    GPU cue actors on fake GPUs -> `videocups cluster down`, after which no process is left."""
    import json
    import os
    import subprocess
    import sys

    from videocups_ray.pipelines.sim_cluster import SimCluster

    state = tmp_path / "state.json"
    cli = [sys.executable, "-m", "videocups_ray.cli"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    up = subprocess.Popen([*cli, "cluster", "up", "--nodes", "2", "--gpus-per-node", "1", "--cpus-per-node", "2",
                           "--state", str(state)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        info = json.loads(up.stdout.readline())
        assert info["nodes"] == {"gpu": 2} and info["gpus"] == 2 and json.loads(state.read_text())["pid"] == up.pid
        sets = [f"ray.address={info['address']}", "synth.sequences=2", "synth.frames=4", "synth.height=64",
                "synth.width=128", "labeling.num_clusters=4", "labeling.kmeans_frames_per_video=2",
                *(f"cues.{k}.backend=simulated" for k in ("flow", "depth", "features")),
                *(f"cues.{k}.device=cuda" for k in ("flow", "depth", "features")),
                *(f"ray.{k}.num_gpus=0.5" for k in ("flow", "depth", "features"))]
        run = subprocess.run([*cli, "pseudolabel", "--input", "synth:", "--out", str(tmp_path / "shards"), "--quiet",
                              *(a for s in sets for a in ("--set", s))],
                             capture_output=True, text=True, env=env, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        assert json.loads(run.stdout)["written"] == 8
        down = subprocess.run([*cli, "cluster", "down", "--state", str(state)], capture_output=True, text=True,
                              env=env, timeout=120)
        assert down.returncode == 0, down.stderr
        assert up.wait(timeout=30) == 0 and not state.exists()
        assert SimCluster([], temp_dir=info["temp_dir"]).pids() == []
    finally:
        if up.poll() is None:
            up.terminate()
            up.wait(timeout=60)


@pytest.mark.slow
def test_autoscaler_adds_gpu_nodes_for_a_growing_pool_and_removes_them_idle(sim_cluster, record_property):
    """Ray's autoscaler (fake multi-node provider) on a simulated cluster: a cue actor pool grown from
    1 to 4 replicas at 1 GPU each brings up a second 2-GPU node; idle nodes go away. Time-to-scale
    is reported (``record_property``), not asserted: it is a benchmark number."""
    from videocups_ray.pipelines.sim_cluster import AutoscalingSimCluster, wait_for

    cluster = sim_cluster([NodeSpec("gpu", count=2, cpus=2, gpus=2)], connect=False,
                          cls=AutoscalingSimCluster, idle_timeout_s=6)
    ray = cluster.connect()
    assert ray.cluster_resources().get("GPU", 0) == 0  # min_workers 0: no worker node yet
    cfg = gpu_config(flow={"num_cpus": 0.1, "num_gpus": 1})
    Flow = remote_class(probed(FlowActor), cfg.ray, "flow")
    pool = [Flow.remote(cfg, "cuda")]
    t_first = wait_for(lambda: ray.cluster_resources().get("GPU", 0) >= 2, 300)
    pool += [Flow.remote(cfg, "cuda") for _ in range(3)]
    t_grow = wait_for(lambda: ray.cluster_resources().get("GPU", 0) >= 4, 300)
    places = placements(ray, pool)
    check_pinning(places, 1.0)
    assert len({p["node_id"] for p in places}) == 2
    for a in pool:
        ray.kill(a)
    t_shrink = wait_for(lambda: ray.cluster_resources().get("GPU", 0) == 0, 300)
    for key, value in (("first_node_s", t_first), ("second_node_s", t_grow), ("scale_down_s", t_shrink)):
        record_property(key, round(value, 1))
    print(f"time to scale: first node {t_first:.1f} s, second node {t_grow:.1f} s, idle scale-down {t_shrink:.1f} s")


@pytest.mark.slow
def test_training_survives_the_loss_of_a_worker_node(sim_cluster, tmp_path):
    """Ray Train on the simulated cluster, elastic 1..2 workers, one per worker node (3 logical
    CPUs each, 2 per train worker, 1 left for Ray Data's tasks, which take a whole CPU). A node is lost after the step-2 checkpoint: FailureConfig
    restarts the run on the remaining node from that checkpoint, and training finishes (measured:
    (step, workers, resumed_from) = (1,2,0) (2,2,0) (3,2,0) (3,1,2) (4,1,2) (5,1,2) (6,1,2)). The node
    goes once step 3 is logged: by then the step-2 checkpoint is surely reported (a node lost
    between writing a checkpoint and reporting it rightly restarts from the one before)."""
    import json
    import threading

    from test_train import tiny_config  # the Ray Train test's tiny model and synthetic corpus

    from videocups_ray.data.shards import frames_to_shards
    from videocups_ray.pipelines.pseudolabel import synth_source
    from videocups_ray.pipelines.train import run_train
    from videocups_ray.pipelines.sim_cluster import wait_for

    cfg = tiny_config(max_steps=6, checkpoint_every=2, workers=[1, 2], cpus_per_worker=2.0, max_failures=2)
    frames_to_shards(synth_source(cfg.synth), tmp_path / "shards", cfg.shards)
    cluster = sim_cluster([NodeSpec("cpu", count=2, cpus=3, gpus=0)], head_cpus=1)
    run = tmp_path / "run"
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(run_train(cfg, tmp_path / "shards", run)), daemon=True)
    worker.start()

    def reached(step: int) -> bool:
        path = run / "metrics.jsonl"
        return path.exists() and any(json.loads(l)["step"] >= step for l in path.read_text().splitlines())

    wait_for(lambda: reached(3) or not worker.is_alive(), 600)  # the fixture stops the cluster on a failure
    assert worker.is_alive(), f"training ended before step 3: {result}"
    cluster.remove_node(cluster.worker_nodes[0])
    worker.join(timeout=900)
    assert not worker.is_alive() and result["steps"] == 6
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    trace = [(r["step"], r["workers"], r["resumed_from"]) for r in records]
    assert records[0]["workers"] == 2 and records[-1]["workers"] == 1, trace
    resumed = {r["resumed_from"] for r in records} - {0}
    assert resumed and min(resumed) >= 2, trace  # restarted from a checkpoint, not from scratch
