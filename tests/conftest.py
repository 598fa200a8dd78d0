"""Shared test fixtures: environment for Numba/Ray, the real KITTI-STEP sample, a Ray session."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (starting one costs seconds); the
    pipelines' own runtime, so it is private (127.0.0.1) and its temp folder is removed."""
    from videocups_ray.config import RayConfig
    from videocups_ray.pipelines.ray_runtime import ray_session as start

    with start(RayConfig(num_cpus=4, object_store_memory=512 * 1024**2)) as ray:
        yield ray


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
