"""Kill tests of the Ray engine with several shard writers (slow: several full Ray runs each).

Every test ends with the same check: after the kill and a rerun of the same command, every
frame is stored exactly once, with the labels of an uninterrupted run. The quick pool-level
kill test is in test_writer_pool.py (default suite).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import sigkill_cli_when
from videocups_ray.actors.base import FailurePlan
from videocups_ray.config import load_config
from videocups_ray.data.shards import read_manifest, read_shards
from videocups_ray.data.synthdrive import write_synth_dataset
from videocups_ray.pipelines.ray_pseudolabel import run_ray
from videocups_ray.pipelines.writer_pool import WriterLost

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# Two 12-frame videos cut in chunks of 5: chunks of one video land on different writers.
OVERRIDES = ["synth.sequences=2", "synth.frames=12", "synth.height=64", "synth.width=128", "synth.seed=4242",
             "labeling.num_clusters=5", "labeling.kmeans_iters=4", "labeling.kmeans_samples_per_frame=64",
             "labeling.kmeans_frames_per_video=2", "labeling.clip_length=5", "shards.rows_per_shard=2",
             "ray.chunk_frames=5", "ray.chunk_overlap=2", "ray.max_videos_in_flight=2",
             "ray.max_frames_in_flight=4", "ray.writer.replicas=3"]


def _frames(out: Path) -> dict:
    frames = list(read_shards(out))
    keys = [(f.video_id, f.frame_index) for f in frames]
    assert len(keys) == len(set(keys)), "a frame is stored twice"
    return dict(zip(keys, frames))


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        for name in ("image", "semantic", "instance"):
            assert np.array_equal(getattr(a[key], name), getattr(b[key], name)), f"{key} {name} differs"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_session):
    cfg = load_config([], OVERRIDES)
    root = tmp_path_factory.mktemp("synth")
    write_synth_dataset(cfg.synth, root, progress=False)
    ref = tmp_path_factory.mktemp("ref") / "shards"
    summary = run_ray(cfg, root, ref, progress=False)
    assert summary["written"] == 24 and summary["chunks"] >= 6
    writers = {e["file"].split("-")[1][:3] for e in read_manifest(ref)["shards"]}
    assert len(writers) == 3, writers  # the pool really spread the chunks
    return cfg, root, _frames(ref)


def test_killed_writer_of_three_then_rerun(setup, tmp_path):
    cfg, root, ref = setup
    out = tmp_path / "shards"
    with pytest.raises(WriterLost, match="shard writer \\d of 3 died"):
        run_ray(cfg, root, out, progress=False, failures=(FailurePlan("writer", 2, str(tmp_path / "w.dead")),))
    committed = len(_frames(out))
    assert 0 < committed < 24
    summary = run_ray(cfg, root, out, progress=False)
    assert summary["written"] == 24 - committed
    _same(_frames(out), ref)
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(e["file"] for e in read_manifest(out)["shards"])


def test_killed_driver_then_rerun(setup, tmp_path):
    """SIGKILL of the whole `videocups pseudolabel` process group once its first shard file exists."""
    cfg, root, ref = setup
    out = tmp_path / "shards"
    args = ["pseudolabel", "--input", str(root), "--out", str(out), "--quiet",
            *[a for o in OVERRIDES for a in ("--set", o)]]
    # SIGKILL once a writer has published its first shard
    sigkill_cli_when(args, lambda: bool(list(out.glob("_pending/part-*.parquet"))), tmp_path / "pseudolabel.log")
    committed = len(_frames(out))
    assert committed < 24
    summary = run_ray(cfg, root, out, progress=False)
    assert summary["written"] == 24 - committed
    _same(_frames(out), ref)


def test_corrupted_shard_is_relabelled_by_the_ray_engine(setup, tmp_path):
    cfg, root, ref = setup
    out = tmp_path / "shards"
    run_ray(cfg, root, out, progress=False)
    victim = read_manifest(out)["shards"][3]
    path = out / victim["file"]
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(255 - b for b in data[mid:mid + 64])  # same size, 64 bytes changed
    path.write_bytes(bytes(data))
    summary = run_ray(cfg, root, out, progress=False)
    assert summary["written"] == victim["rows"]
    _same(_frames(out), ref)


def test_killed_reader_mid_run_then_rerun(setup, tmp_path):
    """A reader dies at its 4th batch call of pass 2 (its open streams die with it): the run
    redoes those chunks and ends; a rerun adds nothing; every frame is stored once, as in an
    uninterrupted run."""
    cfg, root, ref = setup
    out = tmp_path / "shards"
    marker = tmp_path / "reader.dead"
    first = run_ray(cfg, root, out, progress=False, failures=(FailurePlan("reader", 4, str(marker)),))
    assert marker.exists(), "the reader was not killed"
    assert first["retries"] >= 1 and first["skipped_videos"] == {}
    rerun = run_ray(cfg, root, out, progress=False)
    assert first["written"] + rerun["written"] == 24 and rerun["written"] == 0
    _same(_frames(out), ref)
    assert sorted(p.name for p in out.glob("*.parquet")) == sorted(e["file"] for e in read_manifest(out)["shards"])
