"""The Ray engine: equality with the local engine, fault injection, resume, chunks, bad input.

One local Ray instance for the session (``ray_session`` in conftest). Inputs are tiny
SynthDrive corpora (96x192, K=6) so every ``run_ray`` takes seconds.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from videocups_ray.actors.base import FailurePlan
from videocups_ray.config import Config, with_overrides
from videocups_ray.data.shards import read_manifest, read_shards
from videocups_ray.data.formats import open_source
from videocups_ray.data.synthdrive import write_synth_dataset
from videocups_ray.labeling import load_centroids
from videocups_ray.pipelines.pseudolabel import pseudolabel_meta, run_local
from videocups_ray.pipelines.ray_pseudolabel import run_ray
from videocups_ray.pipelines.streaming import StreamingPseudoLabeler
from videocups_ray.pipelines.writer_pool import WriterLost


def tiny_config(frames: int = 8, **ray) -> Config:
    return with_overrides(
        Config(),
        synth={"sequences": 2, "frames": frames, "height": 96, "width": 192, "seed": 3},
        labeling={"num_clusters": 6, "kmeans_iters": 8, "kmeans_samples_per_frame": 128,
                  "kmeans_frames_per_video": 3, "clip_length": 5},
        shards={"rows_per_shard": 5},
        ray={"max_videos_in_flight": 2, "max_frames_in_flight": 4, **ray},
    )


def frames_by_key(out: Path) -> dict:
    frames = list(read_shards(out))
    keys = [(f.video_id, f.frame_index) for f in frames]
    assert len(keys) == len(set(keys)), "a frame is stored twice"
    return dict(zip(keys, frames))


def assert_same_labels(a: dict, b: dict, keys=None) -> None:
    keys = sorted(a) if keys is None else keys
    for key in keys:
        for name in ("image", "semantic", "instance"):
            assert np.array_equal(getattr(a[key], name), getattr(b[key], name)), f"{key} {name} differs"
        assert np.array_equal(a[key].extra["ignore"], b[key].extra["ignore"]), f"{key} ignore differs"


def local_corpus(cfg: Config, tmp_path_factory) -> tuple[Path, Path]:
    """SynthDrive of ``cfg`` on disk and its shards from the local engine (the reference)."""
    root = tmp_path_factory.mktemp("synth")
    write_synth_dataset(cfg.synth, root, progress=False)
    local = tmp_path_factory.mktemp("local") / "shards"
    run_local(cfg, root, local, progress=False)
    return root, local


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cfg = tiny_config()
    return (cfg, *local_corpus(cfg, tmp_path_factory))


def test_ray_engine_matches_local_bit_for_bit(ray_session, corpus, tmp_path):
    cfg, root, local = corpus
    out = tmp_path / "ray"
    summary = run_ray(cfg, root, out, progress=False)
    assert summary["written"] == summary["frames"] == 16 and summary["skipped_videos"] == {}
    a, b = frames_by_key(local), frames_by_key(out)
    assert sorted(a) == sorted(b)
    assert_same_labels(a, b)
    assert np.array_equal(np.load(local / "centroids.npy"), np.load(out / "centroids.npy"))
    assert pseudolabel_meta(out)["thing_classes"] == pseudolabel_meta(local)["thing_classes"]
    assert set(summary["utilisation"]) == {"flow", "depth", "features", "tracker"}


def _shard_digests(out: Path) -> dict[str, str]:
    return {e["file"]: hashlib.sha256((out / e["file"]).read_bytes()).hexdigest()
            for e in read_manifest(out)["shards"]}


def test_killed_job_resumes_and_survives_actor_deaths(ray_session, corpus, tmp_path):
    cfg, root, local = corpus
    out = tmp_path / "ray"
    # Run 1: the writer dies at its 4th call (after some shards were committed): the job fails
    # with one line (WriterLost), not a raw actor error.
    with pytest.raises(WriterLost, match=r"shard writer 0 of 1 died .*rerun the same command"):
        run_ray(cfg, root, out, progress=False,
                failures=(FailurePlan("writer", 4, str(tmp_path / "writer.dead")),))
    before = _shard_digests(out)
    assert before, "the killed run should have committed at least one shard"
    mtimes = {f: (out / f).stat().st_mtime_ns for f in before}
    # Run 2, same command: a flow actor and a tracker actor die mid-run; the job finishes.
    plans = (FailurePlan("flow", 2, str(tmp_path / "flow.dead")),
             FailurePlan("tracker", 3, str(tmp_path / "tracker.dead")))
    summary = run_ray(cfg, root, out, progress=False, failures=plans)
    assert (tmp_path / "flow.dead").exists() and (tmp_path / "tracker.dead").exists()
    assert summary["retries"] >= 1  # the tracker's chunk was redone
    after = _shard_digests(out)
    assert {f: after[f] for f in before} == before  # committed shards were not rewritten
    assert {f: (out / f).stat().st_mtime_ns for f in before} == mtimes
    assert summary["written"] + sum(e["rows"] for e in read_manifest(out)["shards"]
                                    if e["file"] in before) == 16
    a, b = frames_by_key(local), frames_by_key(out)
    assert sorted(a) == sorted(b)  # every frame exactly once
    assert_same_labels(a, b)
    # Run 3: nothing left to do.
    again = run_ray(cfg, root, out, progress=False)
    assert again["written"] == 0 and again["frames"] == 0 and _shard_digests(out) == after


def test_chunked_video_and_corrupt_input(ray_session, tmp_path):
    cfg = tiny_config(frames=12, chunk_frames=5, chunk_overlap=2)
    root = tmp_path / "synth"
    write_synth_dataset(cfg.synth, root, progress=False)
    bad = sorted((root / "images").rglob("*.png"))
    bad = [p for p in bad if "0001" in str(p.parent)][6]
    bad.write_bytes(b"not a png at all")
    out = tmp_path / "ray"
    summary = run_ray(cfg, root, out, progress=False)
    skipped = read_manifest(out)["meta"]["skipped_videos"]
    assert set(skipped) == {"0001"} and summary["skipped_videos"] == skipped
    assert bad.name in skipped["0001"] or "PNG" in skipped["0001"].upper()
    got = frames_by_key(out)
    assert sorted(k for k in got if k[0] == "0000") == [("0000", i) for i in range(12)]
    assert summary["chunks"] >= 3
    # Chunk 0 owns frames 0-4 and sees frames 5-6 beyond them: exactly the full-video labels.
    cents = load_centroids(out / "centroids.npy", cfg.labeling.num_clusters)
    streamer = StreamingPseudoLabeler(cfg, cents)
    finals = {}
    for f in open_source(root).frames("0000"):
        finals.update({lf.frame_index: lf for lf in streamer.push(f) if lf.final})
    finals.update({lf.frame_index: lf for lf in streamer.end() if lf.final})
    for i in range(5):
        assert np.array_equal(got[("0000", i)].semantic, finals[i].semantic)
        assert np.array_equal(got[("0000", i)].instance, finals[i].instance)
    # Tracks crossing the cut at frame 5 keep their IDs when the overlap agrees.
    ids_before = set(np.unique(got[("0000", 4)].instance)) - {0}
    ids_after = set(np.unique(got[("0000", 5)].instance)) - {0}
    full_before = set(np.unique(finals[4].instance)) - {0}
    full_after = set(np.unique(finals[5].instance)) - {0}
    if full_before & full_after:  # the full run continues a track across 4 -> 5
        assert ids_before & ids_after
