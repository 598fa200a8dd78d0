"""Shared test fixtures: environment for Numba/Ray, the real KITTI-STEP sample, a Ray session."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")

KITTI_SAMPLE = ROOT.parent / "shared" / "data" / "kitti_step_0001"


@pytest.fixture(scope="session")
def kitti_sample() -> Path:
    """The real KITTI-STEP sample. Missing in CI (CI=true) is a failure, not a skip: CI has a
    copy of ../shared beside the clone, so a missing sample means a broken checkout layout."""
    return require_sample(KITTI_SAMPLE)


def require_sample(path: Path) -> Path:
    """``path`` if it is a folder; else fail in CI (CI=true), skip with the reason elsewhere."""
    if not path.is_dir():
        msg = f"KITTI-STEP sample not found at {path} (../shared/data missing)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


_SESSION_RAY: dict = {}  # "stack": the ExitStack holding the session's local Ray instance


def _start_session_ray():
    """The pipelines' own runtime, so the instance is private (127.0.0.1) and its temp folder is
    removed at the end."""
    from videocups_ray.config import RayConfig
    from videocups_ray.pipelines.ray_runtime import ray_session as start

    stack = contextlib.ExitStack()
    ray = stack.enter_context(start(RayConfig(num_cpus=4, object_store_memory=512 * 1024**2)))
    _SESSION_RAY["stack"] = stack
    return ray


def _stop_session_ray() -> bool:
    """Stop the session's Ray instance; True if one was running."""
    stack = _SESSION_RAY.pop("stack", None)
    if stack is not None:
        stack.close()
    return stack is not None


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (starting one costs seconds)."""
    ray = _start_session_ray()
    try:
        yield ray
    finally:
        _stop_session_ray()


@pytest.fixture
def sim_cluster():
    """Start simulated multi-node clusters (``videocups_ray/pipelines/sim_cluster.py``):
    ``sim_cluster(nodes, connect=True, cls=SimCluster, **kwargs)`` -> a started cluster (``cls`` may be
    ``AutoscalingSimCluster``) that this process is connected to.

    Every cluster is shut down in ``finally`` and must leave no process behind. A driver joins one
    Ray instance at a time, so the session's local instance (``ray_session``), if it is up, is
    stopped for the test and started again afterwards.
    """
    import ray

    from videocups_ray.pipelines.sim_cluster import SimCluster

    paused = _stop_session_ray()
    if ray.is_initialized():
        ray.shutdown()
    clusters: list[SimCluster] = []

    def make(nodes, *, connect: bool = True, cls: type[SimCluster] = SimCluster, **kwargs) -> SimCluster:
        cluster = cls(nodes, **kwargs)
        clusters.append(cluster)
        cluster.start()
        if connect:
            cluster.connect()
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.shutdown()
        left = {c.temp_dir: c.pids() for c in clusters if c.pids()}
        if paused:
            _start_session_ray()
        assert not left, f"processes outlived their simulated cluster: {left}"


@pytest.fixture(scope="session")
def tiny_local(tmp_path_factory):
    """A 7-frame SynthDrive video pseudo-labelled by the local engine: (cfg, frames, shard dir,
    centroids). The reference output the Ray and streaming engines are compared with."""
    import numpy as np

    from videocups_ray.config import Config, with_overrides
    from videocups_ray.data.synthdrive import generate_sequence
    from videocups_ray.pipelines.pseudolabel import MemorySource, run_local

    cfg = with_overrides(Config(), synth={"sequences": 1, "frames": 7, "height": 96, "width": 192, "seed": 5},
                         labeling={"num_clusters": 5, "kmeans_iters": 5, "kmeans_samples_per_frame": 64,
                                   "kmeans_frames_per_video": 2, "clip_length": 4})
    frames = list(generate_sequence(cfg.synth, 0))
    out = tmp_path_factory.mktemp("local") / "shards"
    run_local(cfg, MemorySource(frames), out, progress=False)
    return cfg, frames, out, np.load(out / "centroids.npy")


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> Path:
    """One ``videocups demo --quick`` run folder shared by the CLI and report tests (minutes)."""
    from videocups_ray.cli import main

    run = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", "--out", str(run), "--quick"]) == 0
    return run


def sigkill_cli_when(args: list[str], ready, log: Path, timeout: float = 400, grace: float = 0.0) -> None:
    """Run ``python -m videocups_ray.cli *args`` in its own process group and SIGKILL the whole
    group once ``ready()`` is true (after ``grace`` more seconds); the command must still be
    running then (its stderr tail is shown otherwise)."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "videocups_ray.cli", *args], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                time.sleep(grace)
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before it could be killed:\n{log.read_text()[-3000:]}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
