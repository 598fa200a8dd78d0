"""Parquet shards: exact round trips, atomic resumable writes, integrity checks, Ray Data reads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from videocups_ray.config import ShardConfig
from videocups_ray.data import shards as shards_mod
from videocups_ray.data.shard_codec import SHARD_SCHEMA, decode_batch
from videocups_ray.data.manifest import Manifest
from videocups_ray.data.shards import (
    ShardIntegrityError,
    ShardWriter,
    frames_to_shards,
    read_manifest,
    read_shards,
    shard_files,
)
from videocups_ray.data.formats import open_source
from videocups_ray.data.types import DataError, Frame

H, W = 20, 32


def _frames(n: int, video_id: str = "vid", seed: int = 0, *, geometry: bool = False) -> list[Frame]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sem = rng.integers(0, 30, (H, W)).astype(np.uint8)
        sem[0, :4] = 255
        inst = rng.integers(0, 50, (H, W)).astype(np.int32)
        f = Frame(video_id, i, rng.integers(0, 256, (H, W, 3), dtype=np.uint8), sem, inst)
        f.extra["ignore"] = rng.random((H, W)) > 0.7
        if geometry:
            f.depth = rng.uniform(0.5, 90, (H, W)).astype(np.float32)
            f.flow = rng.normal(0, 3, (H, W, 2)).astype(np.float32)
            f.flow_valid = rng.random((H, W)) > 0.2
            f.flow[~f.flow_valid] = 0
        out.append(f)
    return out


def _assert_same(a: Frame, b: Frame) -> None:
    assert (a.video_id, a.frame_index) == (b.video_id, b.frame_index)
    for name in ("image", "semantic", "instance", "depth", "flow", "flow_valid"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)
            assert x.dtype == y.dtype, name
    np.testing.assert_array_equal(a.extra["ignore"], b.extra["ignore"])


def _write(out, frames, cfg, config_hash="h1") -> ShardWriter:
    with ShardWriter(out, cfg, config_hash, "test") as w:
        for f in frames:
            w.add_frame(f)
    return w


def _keys(path) -> list[tuple[str, int]]:
    return [(f.video_id, f.frame_index) for f in read_shards(path)]


@pytest.mark.parametrize("codec", ["png", "raw"])
def test_round_trip_is_exact(tmp_path, codec):
    frames = _frames(5, geometry=True)
    frames[1].instance[3, 3] = 70000  # beyond 16 bit: the PNG codec must switch layout
    frames[2].depth = frames[2].flow = frames[2].flow_valid = None  # nullable columns
    cfg = ShardConfig(rows_per_shard=2, rows_per_row_group=2, image_encoding=codec, label_encoding=codec)
    w = _write(tmp_path, frames, cfg)
    assert (w.summary.written, w.summary.shards) == (5, 3)
    back = list(read_shards(tmp_path))
    assert len(back) == 5
    for a, b in zip(frames, back):
        _assert_same(a, b)
    manifest = read_manifest(tmp_path)
    assert [e["rows"] for e in manifest["shards"]] == [2, 2, 1]
    assert manifest["shards"][0]["keys"] == {"vid": [[0, 1]]}
    assert (manifest["config_hash"], manifest["code_version"], manifest["generation"]) == ("h1", "test", 3)
    assert len(shard_files(tmp_path, verify="checksum")) == 3
    import pyarrow.parquet as pq

    assert pq.read_schema(shard_files(tmp_path)[0]).remove_metadata().equals(SHARD_SCHEMA.remove_metadata())
    assert pq.ParquetFile(shard_files(tmp_path)[0]).metadata.row_group(0).column(6).compression == "ZSTD"
    _write(tmp_path / "groups", frames, cfg.model_copy(update={"rows_per_shard": 5}))
    meta = pq.ParquetFile(shard_files(tmp_path / "groups")[0]).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2, 2, 1]


def test_killed_before_rename_leaves_no_partial_and_no_duplicate(tmp_path, monkeypatch, caplog):
    frames = _frames(10)
    cfg = ShardConfig(rows_per_shard=4)
    real_commit = shards_mod._Store.commit_tmp
    calls = {"n": 0}

    def dying_commit(self, tmp, name):
        if name.endswith(".parquet"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt("simulated kill between write and rename")
        return real_commit(self, tmp, name)

    monkeypatch.setattr(shards_mod._Store, "commit_tmp", dying_commit)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, frames, cfg)
    monkeypatch.setattr(shards_mod._Store, "commit_tmp", real_commit)
    assert len(list(tmp_path.glob("_pending/*.tmp"))) == 1  # the killed shard's temp file
    assert _keys(tmp_path) == [("vid", i) for i in range(4)]

    with caplog.at_level(logging.WARNING):
        w = ShardWriter(tmp_path, cfg, "h1", "test")
    assert "left by a writer killed before its commit" in caplog.text
    assert not list(tmp_path.glob("**/*.tmp"))
    assert w.committed_keys() == {("vid", i) for i in range(4)}
    for f in frames:
        w.add_frame(f)
    w.close()
    assert (w.summary.skipped, w.summary.written) == (4, 6)
    keys = _keys(tmp_path)
    assert sorted(keys) == [("vid", i) for i in range(10)] and len(set(keys)) == 10


def test_killed_before_manifest_update_is_rewritten_once(tmp_path, monkeypatch, caplog):
    frames = _frames(6)
    cfg = ShardConfig(rows_per_shard=3)

    def dying_commit(self, shards=(), **kw):
        raise KeyboardInterrupt("simulated kill after the shard file, before its commit")

    monkeypatch.setattr(Manifest, "commit", dying_commit)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, frames, cfg)
    monkeypatch.undo()
    assert len(list(tmp_path.glob("_pending/part-*.parquet"))) == 1 and not list(tmp_path.glob("*.parquet"))
    assert not list((tmp_path / "_manifest").glob("log-*.json"))
    assert _keys(tmp_path) == []  # the shard file exists, but no generation lists it
    with caplog.at_level(logging.WARNING):
        w = _write(tmp_path, frames, cfg)
    assert "killed before its commit" in caplog.text
    assert w.summary.written == 6
    keys = _keys(tmp_path)
    assert sorted(keys) == [("vid", i) for i in range(6)] and len(keys) == 6
    assert len(shard_files(tmp_path)) == 2 == len(list(tmp_path.glob("*.parquet")))


def test_error_inside_writer_block_commits_nothing_more(tmp_path):
    cfg = ShardConfig(rows_per_shard=4)
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path, cfg, "h1", "test") as w:
            for f in _frames(6):
                w.add_frame(f)
            raise RuntimeError("boom")
    assert _keys(tmp_path) == [("vid", i) for i in range(4)]


def test_checksum_mismatch_and_missing_shard_name_the_file(tmp_path):
    _write(tmp_path, _frames(4), ShardConfig(rows_per_shard=2))
    name = read_manifest(tmp_path)["shards"][1]["file"]
    target = tmp_path / name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    target.write_bytes(bytes(data))
    with pytest.raises(ShardIntegrityError, match=rf"{name}: sha256 .* does not match"):
        list(read_shards(tmp_path))
    with pytest.raises(ShardIntegrityError, match=name):
        shard_files(tmp_path, verify="checksum")
    shard_files(tmp_path)  # the default check is size only: same size passes
    target.unlink()
    with pytest.raises(ShardIntegrityError, match=rf"{name}: shard listed in the manifest is missing"):
        shard_files(tmp_path)
    legacy = tmp_path / "old"
    legacy.mkdir()
    (legacy / "manifest.json").write_text('{"format": "videocups-shards/1", "shards": [')
    with pytest.raises(ShardIntegrityError, match=r"manifest\.json: invalid manifest"):
        read_manifest(legacy)


def test_config_change_duplicates_and_meta(tmp_path):
    cfg = ShardConfig(rows_per_shard=8)
    frames = _frames(2)
    w = _write(tmp_path, frames, cfg)
    w.set_meta("thing_classes", [3, 7])
    assert read_manifest(tmp_path)["meta"] == {"thing_classes": [3, 7]}
    with pytest.raises(DataError, match="config hash 'h1'.*'h2'"):
        ShardWriter(tmp_path, cfg, "h2", "test")
    w = ShardWriter(tmp_path, cfg, "h1", "test")
    assert w.add_frame(frames[0]) is False
    extra = _frames(1, video_id="other")[0]
    assert w.add_frame(extra) is True
    with pytest.raises(DataError, match="'other' frame 0 added twice"):
        w.add_frame(extra)
    with pytest.raises(DataError, match="ignore has shape"):
        w.add("other", 5, extra.image, extra.semantic, extra.instance, np.zeros((3, 3), bool))
    w.close()
    assert read_manifest(tmp_path)["meta"] == {"thing_classes": [3, 7]}  # kept across writers


def test_uri_storage_and_writer_subdirectories(tmp_path):
    """``file://`` URIs go through pyarrow.fs.FileSystem.from_uri, like s3:// and gs://."""
    cfg = ShardConfig(rows_per_shard=3, image_encoding="raw")
    _write((tmp_path / "w0").as_uri(), _frames(3, "a"), cfg)
    _write((tmp_path / "w1").as_uri(), _frames(2, "b"), cfg)
    assert len(shard_files(tmp_path.as_uri())) == 2
    assert sorted(_keys(tmp_path)) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]


def test_frames_to_shards_from_kitti_sample_resumes(tmp_path, kitti_sample):
    src = open_source(kitti_sample)
    cfg = ShardConfig(rows_per_shard=6)
    first = frames_to_shards(src, tmp_path, cfg)
    assert (first.written, first.shards) == (10, 2)
    again = frames_to_shards(src, tmp_path, cfg)
    assert (again.written, again.skipped) == (0, 10)
    back = list(read_shards(tmp_path))
    for orig, got in zip(src, back):
        np.testing.assert_array_equal(orig.instance, got.instance)
        np.testing.assert_array_equal(got.extra["ignore"], orig.semantic == 255)
    with pytest.raises(DataError, match="has no labels"):
        frames_to_shards(open_source(str(kitti_sample / "images")), tmp_path / "x", cfg)


@pytest.mark.ray
def test_ray_data_reads_shard_dir(tmp_path, ray_session):
    frames = _frames(6, geometry=True)
    _write(tmp_path, frames, ShardConfig(rows_per_shard=4, rows_per_row_group=2))
    ds = ray_session.data.read_parquet(shard_files(tmp_path))
    assert ds.count() == 6
    # the folder itself: an uncommitted shard in _pending/ and the _manifest/ objects are skipped
    (tmp_path / "_pending").mkdir(exist_ok=True)
    (tmp_path / "_pending" / "part-uncommitted.parquet").write_bytes(Path(shard_files(tmp_path)[0]).read_bytes())
    assert ray_session.data.read_parquet(str(tmp_path)).count() == 6
    rows = ds.map_batches(decode_batch, batch_format="numpy", batch_size=4).take_all()
    assert len(rows) == 6
    by_key = {(f.video_id, f.frame_index): f for f in frames}
    for r in rows:
        f = by_key[str(r["video_id"]), int(r["frame_index"])]
        np.testing.assert_array_equal(r["image"], f.image)
        np.testing.assert_array_equal(r["semantic"], f.semantic)
        np.testing.assert_array_equal(r["instance"], f.instance)
        np.testing.assert_array_equal(r["ignore"], f.extra["ignore"])
        np.testing.assert_array_equal(r["depth"], f.depth)
        np.testing.assert_array_equal(r["flow_valid"], f.flow_valid)


def test_decode_batch_mixed_sizes_give_object_arrays(tmp_path):
    frames = _frames(2)
    big = _frames(1, "big", seed=3)[0]
    big.image = np.zeros((H + 2, W, 3), np.uint8)
    big.semantic = np.zeros((H + 2, W), np.uint8)
    big.instance = np.zeros((H + 2, W), np.int32)
    big.extra["ignore"] = np.zeros((H + 2, W), bool)
    _write(tmp_path, frames + [big], ShardConfig(rows_per_shard=8))
    import pyarrow.parquet as pq

    table = pq.read_table(shard_files(tmp_path)[0])
    batch = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    out = decode_batch(batch)
    assert out["image"].dtype == object and out["image"][2].shape == (H + 2, W, 3)
    assert "depth" not in out
    only_same = decode_batch({k: v[:2] for k, v in batch.items()})
    assert only_same["image"].shape == (2, H, W, 3)
    np.testing.assert_array_equal(only_same["instance"][1], frames[1].instance)
    assert json.dumps(read_manifest(tmp_path)["shards"][0]["keys"]) == '{"big": [[0, 0]], "vid": [[0, 1]]}'


def test_synthdrive_ground_truth_to_shards(tmp_path):
    """The demo path: SynthDrive export -> open_source -> frames_to_shards -> read_shards."""
    from videocups_ray.config import SynthConfig
    from videocups_ray.data.synthdrive import write_synth_dataset

    write_synth_dataset(SynthConfig(height=48, width=96, frames=3, sequences=2), tmp_path / "synth", progress=False)
    src = open_source(tmp_path / "synth")
    summary = frames_to_shards(src, tmp_path / "shards", ShardConfig(rows_per_shard=4))
    assert (summary.written, summary.shards) == (6, 2)
    for orig, got in zip(src, read_shards(tmp_path / "shards")):
        assert (orig.video_id, orig.frame_index) == (got.video_id, got.frame_index)
        np.testing.assert_array_equal(orig.instance, got.instance)
        np.testing.assert_array_equal(orig.depth, got.depth)
        assert (orig.flow is None) == (got.flow is None)
        if orig.flow is not None:
            np.testing.assert_array_equal(orig.flow_valid, got.flow_valid)
            np.testing.assert_array_equal(orig.flow[orig.flow_valid], got.flow[got.flow_valid])


def test_directory_scans_see_only_committed_whole_shards(tmp_path):
    """pyarrow.dataset on the folder itself: uncommitted shards wait in _pending/ (skipped),
    manifest objects live in _manifest/ (skipped); a commit not yet moved is found by readers."""
    import pyarrow.dataset as ds

    from videocups_ray.data.shard_store import Store
    from videocups_ray.data.shards import ShardFileWriter, open_for_commit, publish

    cfg = ShardConfig(rows_per_shard=2)
    manifest = open_for_commit(tmp_path, cfg, "h", "v")
    files = ShardFileWriter(Store(tmp_path), cfg)
    entries = []
    for f in _frames(6):
        row = files.encode(f.video_id, f.frame_index, f.image, f.semantic, f.instance, f.extra["ignore"])
        entries += [e for e in [files.add_encoded((f.video_id, f.frame_index), row)] if e]
    assert ds.dataset(tmp_path, format="parquet").count_rows() == 0 and _keys(tmp_path) == []
    manifest.commit(entries[:2])  # committed, files not moved yet (the committer "died" here)
    assert len(_keys(tmp_path)) == 4 and len(shard_files(tmp_path)) == 2  # readers find them in _pending/
    assert ds.dataset(tmp_path, format="parquet").count_rows() == 0  # a scan lags, never runs ahead
    publish(Store(tmp_path), entries[:2])
    assert ds.dataset(tmp_path, format="parquet").count_rows() == 4
    open_for_commit(tmp_path, cfg, "h", "v")  # the next run: the uncommitted third shard is debris
    assert not list((tmp_path / "_pending").iterdir())
    assert ds.dataset(tmp_path, format="parquet").count_rows() == 4 and len(_keys(tmp_path)) == 4
