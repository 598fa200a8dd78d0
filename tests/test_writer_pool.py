"""The shard writer pool: WriterActor called directly, the driver-side WriterPool on Ray, kills."""

from __future__ import annotations

import numpy as np
import pytest

from videocups_ray.actors.base import FailurePlan
from videocups_ray.actors.writer import SKIPPED_KEY, WriterActor
from videocups_ray.config import Config, with_overrides
from videocups_ray.data.manifest import Manifest
from videocups_ray.data.shard_store import Store
from videocups_ray.data.shards import CommittedFrames, open_for_commit, read_manifest, read_shards
from videocups_ray.data.types import DataError


def _row(vid: str, i: int, inst_id: int = 1) -> dict:
    inst = np.zeros((8, 8), np.int32)
    inst[2:5, 2:5] = inst_id
    return {"video_id": vid, "frame_index": i, "image": np.full((8, 8, 3), i, np.uint8),
            "semantic": np.full((8, 8), 3, np.uint8), "instance": inst, "ignore": np.zeros((8, 8), bool)}


def _keys(out) -> list[tuple[str, int]]:
    keys = [(f.video_id, f.frame_index) for f in read_shards(out)]
    assert len(keys) == len(set(keys)), "a frame is stored twice"
    return sorted(keys)


def test_writer_actor_exactly_once_and_held_chunks(tmp_path):
    """Called directly (no Ray): the writer commits nothing; the test plays the driver."""
    cfg = Config().shards.model_copy(update={"rows_per_shard": 2})
    manifest = open_for_commit(tmp_path, cfg, "h", "v")
    w = WriterActor(str(tmp_path), cfg, index=3)
    assert w.setup().startswith("w03")
    entries = w.write("a@0", [_row("a", 0), _row("a", 1)], mapped=True)
    assert [e["rows"] for e in entries] == [2] and entries[0]["file"].startswith("part-w03")
    assert w.write("a@0", [_row("a", 1)], mapped=True) == []  # a redone chunk re-sends frame 1
    assert w.write("a@2", [_row("a", 2, inst_id=7)], mapped=False) == []  # held: no ID map yet
    assert _keys(tmp_path) == []  # a written, uncommitted shard is invisible to readers
    assert w.set_id_map("a@2", {7: 3}) == []
    w.release("a@2")
    last = w.finish()
    assert last["duplicates"] == 1 and last["written"] == 3 and [e["rows"] for e in last["entries"]] == [1]
    manifest.commit(entries + last["entries"], video_meta={SKIPPED_KEY: {"bad": "DataError: frame 3"}})
    frames = {f.frame_index: f for f in read_shards(tmp_path)}
    assert sorted(frames) == [0, 1, 2] and set(np.unique(frames[2].instance)) == {0, 3}
    assert read_manifest(tmp_path)["meta"][SKIPPED_KEY] == {"bad": "DataError: frame 3"}
    w2 = WriterActor(str(tmp_path), cfg)  # resume: committed frames are not written again
    w2.setup()
    assert w2.write("a@0", [_row("a", i) for i in range(4)], mapped=True) == []
    assert w2.finish()["skipped"] == 3 and w2.finish()["written"] == 1
    with pytest.raises(DataError, match="config hash"):
        open_for_commit(tmp_path, cfg, "other", "v")


def test_writer_refuses_to_finish_with_held_rows(tmp_path):
    open_for_commit(tmp_path, Config().shards, "h", "v")
    w = WriterActor(str(tmp_path), Config().shards)
    w.setup()
    w.write("a@5", [_row("a", 5)], mapped=False)
    with pytest.raises(DataError, match="a@5"):
        w.finish()


def _pool_config(writers: int, rows_per_shard: int = 3) -> Config:
    return with_overrides(Config(), shards={"rows_per_shard": rows_per_shard},
                          ray={"writer": {"replicas": writers, "num_cpus": 0.25}})


def _feed(ray, pool, videos: dict[str, int], chunk: int) -> None:
    """Chunks of ``chunk`` frames round-robin over the writers; later chunks wait for an ID map."""
    for vid, n in videos.items():
        for k, start in enumerate(range(0, n, chunk)):
            key = f"{vid}@{start}"
            rows = [_row(vid, i, inst_id=5) for i in range(start, min(n, start + chunk))]
            pool.write(key, ray.put(rows), k == 0)
            if k > 0:
                pool.set_id_map(key, {5: 9})
            pool.release(key)
            pool.drain(keep=4)
        pool.record_video("stats", vid, {"frames": n})


@pytest.mark.ray
def test_pool_of_writers_commits_every_frame_once(ray_session, tmp_path):
    """Chunks of one video land on different writers; stitching maps reach the right writer."""
    from videocups_ray.pipelines.writer_pool import WriterPool

    cfg = _pool_config(writers=3)
    pool = WriterPool(ray_session, cfg, str(tmp_path))
    try:
        tokens = pool.setup()
        _feed(ray_session, pool, {"a": 11, "b": 7}, chunk=4)
        counts = pool.finish()
    finally:
        pool.kill()
    assert len(set(tokens)) == 3 and counts["written"] == 18 and counts["writers"] == 3
    assert _keys(tmp_path) == [("a", i) for i in range(11)] + [("b", i) for i in range(7)]
    writers = {e["file"].split("-")[1][:3] for e in read_manifest(tmp_path)["shards"]}
    assert writers == {"w00", "w01", "w02"}  # every writer wrote shards
    for f in read_shards(tmp_path):  # chunk 0 keeps its IDs, later chunks got the map
        assert set(np.unique(f.instance)) == {0, 5 if f.frame_index < 4 else 9}
    assert read_manifest(tmp_path)["meta"]["stats"] == {"a": {"frames": 11}, "b": {"frames": 7}}
    assert 1 <= pool.commits <= counts["shards"] + 2  # one generation per batch of entries, not per row


@pytest.mark.ray
def test_killed_writer_fails_with_one_line_and_rerun_is_exactly_once(ray_session, tmp_path):
    from videocups_ray.pipelines.writer_pool import WriterLost, WriterPool

    cfg = _pool_config(writers=2, rows_per_shard=2)
    videos = {"a": 9, "b": 9, "c": 5}
    pool = WriterPool(ray_session, cfg, str(tmp_path), failures=(FailurePlan("writer", 4, str(tmp_path / "dead")),))
    try:
        pool.setup()
        with pytest.raises(WriterLost, match=r"^\S+: shard writer \d of 2 died \(\w+\); .* rerun the same command"):
            _feed(ray_session, pool, videos, chunk=3)
            pool.finish()
    finally:
        pool.kill()
    assert (tmp_path / "dead").exists()
    first = _keys(tmp_path)
    assert 0 < len(first) < 23  # the surviving writer's shards were committed
    pool = WriterPool(ray_session, cfg, str(tmp_path))  # the rerun: same inputs
    try:
        pool.setup()
        _feed(ray_session, pool, videos, chunk=3)
        counts = pool.finish()
    finally:
        pool.kill()
    assert counts["skipped"] == len(first) and counts["written"] == 23 - len(first)
    assert _keys(tmp_path) == [(v, i) for v, n in videos.items() for i in range(n)]
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == sorted(
        e["file"] for e in read_manifest(tmp_path)["shards"])  # debris of the dead writer removed


def test_committed_frames_load_per_video(tmp_path):
    cfg = Config().shards.model_copy(update={"rows_per_shard": 2, "manifest_compact_every": 2})
    manifest = open_for_commit(tmp_path, cfg, "h", "v")
    w = WriterActor(str(tmp_path), cfg)
    w.setup()
    for vid in ("a", "b", "c"):
        manifest.commit(w.write(f"{vid}@0", [_row(vid, i) for i in range(4)], mapped=True))
    reopened = Manifest.open(Store(tmp_path))
    assert reopened.generation == 3 and reopened.committed_counts() == {"a": 4, "b": 4, "c": 4}
    frames = CommittedFrames(reopened)
    assert ("b", 3) in frames and ("b", 4) not in frames and ("z", 0) not in frames
    assert set(frames._frames) == {"b"}  # only the video looked up (with committed frames) was loaded
    assert len(list((tmp_path / "_manifest").glob("seg-0-*.seg"))) == 1  # 2 commits compacted


def test_reader_survives_a_compaction_by_the_committer(tmp_path):
    """A writer actor's read-only manifest whose segments were merged away lists again."""
    cfg = Config().shards.model_copy(update={"rows_per_shard": 1, "manifest_compact_every": 2,
                                             "manifest_fanout": 2})
    committer = open_for_commit(tmp_path, cfg, "h", "v")
    w = WriterActor(str(tmp_path), cfg)
    w.setup()
    for i in range(4):
        committer.commit(w.write(f"a@{i}", [_row("a", i)], mapped=True))
    reader = Manifest.open(Store(tmp_path))  # two level-0 segments
    for i in range(4, 8):
        committer.commit(w.write(f"a@{i}", [_row("a", i)], mapped=True))  # merged into level 1 and 2
    assert reader.committed_frames(["a"]) == {"a": set(range(8))}
