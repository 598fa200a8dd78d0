"""Shared test fixtures: environment for Numba/Ray, the real KITTI-STEP sample, a Ray session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")

KITTI_SAMPLE = ROOT.parent / "shared" / "data" / "kitti_step_0001"


@pytest.fixture(scope="session")
def kitti_sample() -> Path:
    if not KITTI_SAMPLE.is_dir():
        pytest.skip(f"KITTI-STEP sample not found at {KITTI_SAMPLE} (../shared/data missing)")
    return KITTI_SAMPLE


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (starting one costs seconds)."""
    import ray

    tmp = tempfile.mkdtemp(prefix="vcr", dir="/tmp")
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=512 * 1024**2,
             _temp_dir=tmp, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


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
