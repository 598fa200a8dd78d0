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
