"""A corrupted committed shard (issue 17, "found by trying it" #2), and storage through pyarrow.fs.

64 bytes overwritten in the middle of one shard, same size: a ``pseudolabel`` rerun on the same
``--out`` must find it and label exactly that shard's frames again; ``train --shards`` must stop
with one line naming it. Before the fix the rerun said ``"written": 0`` and training used it.
"""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pyarrow.fs as pafs
import pytest

from videocups_ray.config import Config, ShardConfig, with_overrides
from videocups_ray.data.manifest import Manifest
from videocups_ray.data.shard_store import Store
from videocups_ray.data.shards import (
    ShardIntegrityError,
    ShardWriter,
    read_manifest,
    read_shards,
    shard_files,
)
from videocups_ray.data.synthdrive import write_synth_dataset
from videocups_ray.data.types import Frame
from videocups_ray.pipelines.pseudolabel import run_local


def _tiny() -> Config:
    return with_overrides(
        Config(),
        synth={"sequences": 2, "frames": 8, "height": 64, "width": 128, "seed": 4242},
        labeling={"num_clusters": 5, "kmeans_iters": 4, "kmeans_samples_per_frame": 64,
                  "kmeans_frames_per_video": 2, "clip_length": 4},
        shards={"rows_per_shard": 6},
    )


def _corrupt(path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(255 - b for b in data[mid:mid + 64])  # 64 bytes changed, same size
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    cfg = _tiny()
    root = tmp_path_factory.mktemp("synth")
    write_synth_dataset(cfg.synth, root, progress=False)
    out = tmp_path_factory.mktemp("pl") / "shards"
    run_local(cfg, root, out, progress=False)
    return cfg, root, out, {(f.video_id, f.frame_index): f for f in read_shards(out)}


def test_rerun_relabels_only_the_corrupted_shard(labelled, tmp_path, caplog):
    cfg, root, clean, clean_frames = labelled
    out = tmp_path / "shards"
    shutil.copytree(clean, out)
    victim = read_manifest(out)["shards"][1]
    _corrupt(out / victim["file"])
    with caplog.at_level(logging.WARNING):
        summary = run_local(cfg, root, out, progress=False)
    assert victim["file"] in caplog.text and "sha256" in caplog.text
    assert summary["written"] == victim["rows"]  # only the damaged shard's frames, not 0, not all 16
    assert (out / "_quarantine" / victim["file"]).is_file() and not (out / victim["file"]).exists()
    files = [e["file"] for e in read_manifest(out)["shards"]]
    assert victim["file"] not in files
    got = {(f.video_id, f.frame_index): f for f in read_shards(out)}  # every checksum verified
    assert sorted(got) == sorted(clean_frames)
    for key, f in clean_frames.items():
        for name in ("image", "semantic", "instance"):
            np.testing.assert_array_equal(getattr(got[key], name), getattr(f, name), err_msg=f"{key} {name}")
    again = run_local(cfg, root, out, progress=False)
    assert again["written"] == 0


def test_train_on_a_corrupted_shard_is_one_line_naming_it(labelled, tmp_path, capsys):
    from videocups_ray.cli import main

    _, _, clean, _ = labelled
    out = tmp_path / "shards"
    shutil.copytree(clean, out)
    victim = read_manifest(out)["shards"][0]["file"]
    _corrupt(out / victim)
    rc = main(["train", "--shards", str(out), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert victim in err[0] and "sha256" in err[0] and "Traceback" not in err[0]


def _frames(vid: str, n: int) -> list[Frame]:
    rng = np.random.default_rng(len(vid) + n)
    out = []
    for i in range(n):
        f = Frame(vid, i, rng.integers(0, 256, (6, 8, 3), dtype=np.uint8),
                  rng.integers(0, 5, (6, 8)).astype(np.uint8), rng.integers(0, 3, (6, 8)).astype(np.int32))
        out.append(f)
    return out


@pytest.mark.parametrize("kind", ["mock", "subtree"])
def test_object_store_filesystems(tmp_path, kind):
    """The object-store code path (no rename, check-then-create) on pyarrow's in-memory
    filesystem and on a SubTreeFileSystem; compaction, resume, retraction, readers."""
    if kind == "mock":
        from pyarrow._fs import _MockFileSystem

        fs, base = _MockFileSystem(), "bucket/run"
    else:
        fs, base = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), "run"
    store = Store(base, fs=fs)
    assert not store.local
    cfg = ShardConfig(rows_per_shard=2, manifest_compact_every=3, manifest_fanout=2)
    with ShardWriter(store, cfg, "h", "v") as w:
        for f in _frames("a", 9):
            w.add_frame(f)
        w.set_video_meta("stats", "a", {"frames": 9})
    names = store.sub("_manifest").list_names()
    assert any(n.startswith("seg-1-") for n in names), names  # two levels of compaction happened
    m = Manifest.open(store)
    assert m.generation == 6 and m.committed_counts() == {"a": 9}
    assert m.meta()["stats"] == {"a": {"frames": 9}}
    assert [(f.video_id, f.frame_index) for f in read_shards(store)] == [("a", i) for i in range(9)]
    victim = m.shards()[2]["file"]
    with fs.open_output_stream(store.path(victim)) as o:
        o.write(b"x" * 10)
    with pytest.raises(ShardIntegrityError, match=victim):
        shard_files(store)
    w = ShardWriter(store, cfg, "h", "v")
    assert w.repair(["a"]) and w.committed_counts() == {"a": 7}
    for f in _frames("a", 9):
        w.add_frame(f)
    w.close()
    assert w.summary.written == 2 and w.summary.skipped == 7
    assert sorted((f.video_id, f.frame_index) for f in read_shards(store)) == [("a", i) for i in range(9)]


def test_legacy_single_json_manifest_is_read_and_migrated(tmp_path):
    """A directory written by the old code (one manifest.json) still reads, and resumes."""
    import hashlib
    import io
    import json

    import pyarrow.parquet as pq

    from videocups_ray.data.shard_codec import SHARD_SCHEMA, encode_row, rows_to_table

    rows = [encode_row("old", i, f.image, f.semantic, f.instance, f.semantic == 255, image_codec="raw",
                       label_codec="raw") for i, f in enumerate(_frames("old", 3))]
    buf = io.BytesIO()
    pq.write_table(rows_to_table(rows).cast(SHARD_SCHEMA), buf)
    (tmp_path / "part-000000.parquet").write_bytes(buf.getvalue())
    manifest = {"format": "videocups-shards/1", "config_hash": "h", "code_version": "0", "meta": {"x": 1},
                "shards": [{"file": "part-000000.parquet", "rows": 3, "bytes": len(buf.getvalue()),
                            "sha256": hashlib.sha256(buf.getvalue()).hexdigest(), "keys": {"old": [[0, 2]]}}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert [f.frame_index for f in read_shards(tmp_path)] == [0, 1, 2]
    assert read_manifest(tmp_path)["meta"] == {"x": 1}
    with ShardWriter(tmp_path, ShardConfig(rows_per_shard=2), "h", "v") as w:
        assert w.add_frame(_frames("old", 4)[3]) is True
        assert w.add_frame(_frames("old", 3)[0]) is False
    assert not (tmp_path / "manifest.json").exists() and (tmp_path / "_manifest" / "head.json").exists()
    assert sorted(f.frame_index for f in read_shards(tmp_path)) == [0, 1, 2, 3]
    assert read_manifest(tmp_path)["meta"] == {"x": 1}
