"""The local pseudo-label engine: stages, shards, resume, and evaluation of the shards."""

from __future__ import annotations


import numpy as np
import pytest

from videocups_ray.config import Config, with_overrides
from videocups_ray.data.shards import read_manifest, read_shards
from videocups_ray.data.formats import open_source
from videocups_ray.data.synthdrive import write_synth_dataset
from videocups_ray.data.types import DataError
from videocups_ray.data.inputs import MemorySource, synth_source
from videocups_ray.data.pseudolabels import pseudolabel_meta, read_pseudolabels
from videocups_ray.pipelines.evaluate import evaluate_paths, evaluate_pseudolabels
from videocups_ray.pipelines.pseudolabel import run_local
from videocups_ray.stages import CueStages
from videocups_ray.stages.centroids import fit_positions
from videocups_ray.stages.scheduler import video_cues


def tiny_config(**labeling) -> Config:
    return with_overrides(
        Config(),
        synth={"sequences": 2, "frames": 8, "height": 96, "width": 192, "seed": 3},
        labeling={"num_clusters": 6, "kmeans_iters": 8, "kmeans_samples_per_frame": 128,
                  "kmeans_frames_per_video": 3, "clip_length": 5, **labeling},
        shards={"rows_per_shard": 5},
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cfg = tiny_config()
    root = tmp_path_factory.mktemp("synth")
    write_synth_dataset(cfg.synth, root, progress=False)
    return cfg, root


@pytest.fixture(scope="module")
def labelled(corpus, tmp_path_factory):
    cfg, root = corpus
    out = tmp_path_factory.mktemp("pl") / "shards"
    summary = run_local(cfg, root, out, progress=False)
    return cfg, root, out, summary


def test_run_local_writes_every_frame_once(labelled):
    cfg, root, out, summary = labelled
    assert summary["frames"] == summary["written"] == 16
    frames = list(read_shards(out))
    keys = sorted((f.video_id, f.frame_index) for f in frames)
    assert keys == sorted((v, i) for v in ("0000", "0001") for i in range(8))
    f = frames[0]
    assert f.semantic.shape == (96, 192) and f.semantic.dtype == np.uint8
    assert f.image.shape == (96, 192, 3)
    k = cfg.labeling.num_clusters
    for f in frames:  # every pixel keeps its pseudo-class; unreliable ones are in the mask
        assert (f.semantic < k).all()
    assert any(f.extra["ignore"].any() for f in frames) and not all(f.extra["ignore"].all() for f in frames)
    # some instances were found and tracked across frames (same ID in several frames)
    ids = [set(np.unique(f.instance[f.instance > 0]).tolist()) for f in frames if f.video_id == "0000"]
    assert any(a & b for a, b in zip(ids, ids[1:]))


def test_manifest_meta_holds_split_and_centroids(labelled):
    cfg, _, out, summary = labelled
    meta = pseudolabel_meta(out)
    assert meta["num_clusters"] == cfg.labeling.num_clusters
    assert meta["config_hash"] == cfg.hash()
    assert (out / meta["centroids"]).is_file()
    ratios = np.array(meta["ratios"])
    assert sorted(meta["thing_classes"]) == np.flatnonzero(ratios > cfg.labeling.psi).tolist()
    assert summary["thing_classes"] == meta["thing_classes"]
    cents = np.load(out / meta["centroids"])
    assert cents.shape[0] == cfg.labeling.num_clusters


def test_read_pseudolabels_applies_split(labelled):
    _, _, out, _ = labelled
    things = set(pseudolabel_meta(out)["thing_classes"])
    for f in read_pseudolabels(out):
        on_stuff = ~np.isin(f.semantic, list(things)) & (f.semantic != 255)
        assert not f.instance[on_stuff].any()
        thing_px = np.isin(f.semantic, list(things))
        assert (f.instance[thing_px] > 0).all()  # uncovered thing pixels became ignore
    voided = next(iter(read_pseudolabels(out, void_ignored=True)))
    assert (voided.semantic[voided.extra["ignore"]] == 255).all()


def test_rerun_skips_everything(labelled):
    cfg, root, out, _ = labelled
    before = read_manifest(out)
    again = run_local(cfg, root, out, progress=False)
    assert again["frames"] == 0 and again["written"] == 0
    after = read_manifest(out)
    assert [e["file"] for e in after["shards"]] == [e["file"] for e in before["shards"]]
    assert len(list(read_shards(out))) == 16


def test_resume_after_partial_run_is_identical(labelled, tmp_path, monkeypatch):
    """A run killed after the first video redoes only the second, with the same labels."""
    import videocups_ray.pipelines.pseudolabel as engine

    cfg, root, out, _ = labelled
    part = tmp_path / "part"
    real = engine.label_video

    def dies_on_second(cfg_, source, vid, *args):
        if vid == "0001":
            raise KeyboardInterrupt
        return real(cfg_, source, vid, *args)

    monkeypatch.setattr(engine, "label_video", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_local(cfg, root, part, progress=False)
    monkeypatch.setattr(engine, "label_video", real)
    committed = [(f.video_id, f.frame_index) for f in read_shards(part)]
    assert committed and {v for v, _ in committed} == {"0000"}
    summary = run_local(cfg, root, part, progress=False)
    assert summary["written"] == 16 - len(committed)  # committed frames are not written twice
    rows = {(f.video_id, f.frame_index): f for f in read_shards(part)}
    assert len(rows) == 16
    for f in read_shards(out):
        g = rows[(f.video_id, f.frame_index)]
        assert np.array_equal(f.semantic, g.semantic) and np.array_equal(f.instance, g.instance)


def test_centroids_of_a_changed_corpus_are_refused(labelled, tmp_path):
    """Centroids fitted on video 0000 alone, frames labelled with them, then the corpus grows:
    reusing them silently would label 0001 with classes fitted without it (issue 17 #4)."""
    cfg, root, _, _ = labelled
    first = MemorySource(list(open_source(root).frames("0000")))
    part = tmp_path / "part"
    run_local(cfg, first, part, progress=False)
    with pytest.raises(DataError, match="fitted on a different corpus.*0001"):
        run_local(cfg, root, part, progress=False)
    # nothing labelled yet: the stale centroids are refitted instead
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("centroids.npy", "centroids.json"):
        (fresh / name).write_bytes((part / name).read_bytes())
    run_local(cfg, root, fresh, progress=False)
    assert not np.array_equal(np.load(fresh / "centroids.npy"), np.load(part / "centroids.npy"))


def test_eval_of_shards_matches_benchmark_function(labelled):
    cfg, root, out, _ = labelled
    via_paths = evaluate_paths(root, out, fmt="kitti-step", cfg=cfg.eval, unsupervised=True)
    via_bench = evaluate_pseudolabels(out, open_source(root), cfg.eval)
    assert via_paths["num_frames"] == 16
    assert via_paths["STQ"] == pytest.approx(via_bench["STQ"], abs=1e-12)
    assert via_paths["AQ"] == pytest.approx(via_bench["AQ"], abs=1e-12)
    assert 0.0 < via_paths["STQ"] <= 1.0
    assert via_paths["mapping"]["pseudo_things"]  # the split's things carry instances


def test_batch_size_does_not_change_cues(corpus):
    cfg, root = corpus
    frames = list(open_source(root).frames("0001"))
    runs = []
    for batch in (1, 3):
        stages = CueStages.from_config(cfg)
        stages.setup()
        runs.append([c for _, c in video_cues(stages, frames, batch)])
    assert [c.frame_index for c in runs[0]] == list(range(8))
    for a, b in zip(*runs):
        assert np.array_equal(a.depth, b.depth) and np.array_equal(a.motion_prob, b.motion_prob)
        assert np.array_equal(a.features_high, b.features_high)
        for key in ("flow_fw", "flow_bw", "occ_fw", "occ_bw"):
            x, y = getattr(a, key), getattr(b, key)
            assert (x is None and y is None) or np.array_equal(x, y)
    assert runs[0][0].flow_bw is None and runs[0][-1].flow_fw is None


def test_oracle_cues_run_on_in_memory_synthdrive(tmp_path):
    cfg = with_overrides(tiny_config(), synth={"sequences": 1, "frames": 5},
                         cues={"flow": {"backend": "oracle"}, "depth": {"backend": "oracle"}})
    src = synth_source(cfg.synth)
    summary = run_local(cfg, src, tmp_path / "o", progress=False)
    assert summary["written"] == 5
    res = evaluate_pseudolabels(tmp_path / "o", src, cfg.eval)
    assert 0.0 < res["STQ"] <= 1.0


def test_oracle_flow_needs_backward_ground_truth(corpus, tmp_path):
    cfg, root = corpus
    cfg = with_overrides(cfg, cues={"flow": {"backend": "oracle"}})
    with pytest.raises(DataError, match="flow_bw"):
        run_local(cfg, root, tmp_path / "x", progress=False)


def test_single_frame_video_is_an_error(tmp_path):
    cfg = tiny_config()
    frame = next(iter(synth_source(with_overrides(cfg, synth={"sequences": 1, "frames": 2}).synth)))
    with pytest.raises(DataError, match="2 frames"):
        run_local(cfg, MemorySource([frame]), tmp_path / "one", progress=False)


def test_fit_positions():
    assert fit_positions(1, 4) == []
    assert fit_positions(10, 4) == [0, 3, 5, 8]
    assert fit_positions(3, 8) == [0, 1]


def test_undecodable_frame_skips_the_video_in_the_local_engine_too(labelled, tmp_path):
    """Issue 17 #4: one policy for both engines. A truncated PNG (frame 5 of 0001, not sampled
    for the centroids): the video is skipped and recorded with the reason, the run exits
    normally; once repaired, a rerun into the same output labels it exactly like a clean run."""
    import shutil

    cfg, root, clean, _ = labelled
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    png = sorted((broken / "images" / "0001").glob("*.png"))[5]
    good = png.read_bytes()
    png.write_bytes(good[: len(good) // 3])
    out = tmp_path / "out"
    summary = run_local(cfg, broken, out, progress=False)
    assert set(summary["skipped_videos"]) == {"0001"} and png.name in summary["skipped_videos"]["0001"]
    assert read_manifest(out)["meta"]["skipped_videos"] == summary["skipped_videos"]
    assert all(v == "0000" or i < 5 for v, i in ((f.video_id, f.frame_index) for f in read_shards(out)))
    png.write_bytes(good)
    again = run_local(cfg, broken, out, progress=False)
    assert again["skipped_videos"] == {} and "0001" not in read_manifest(out)["meta"].get("skipped_videos", {})
    ref = {(f.video_id, f.frame_index): f for f in read_shards(clean)}
    got = {(f.video_id, f.frame_index): f for f in read_shards(out)}
    assert sorted(got) == sorted(ref)
    for k, f in ref.items():
        assert np.array_equal(f.semantic, got[k].semantic) and np.array_equal(f.instance, got[k].instance)


def test_video_left_out_of_the_fit_then_repaired_is_refused(corpus, tmp_path):
    """A frame sampled for the centroids (frame 3 of 0001) is unreadable: the video is left out
    of the fit; after the repair the centroids no longer fit the corpus, and frames were labelled
    with them, so the rerun refuses with a message instead of mixing two sets of classes."""
    import shutil

    cfg, root = corpus
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    png = sorted((broken / "images" / "0001").glob("*.png"))[3]
    good = png.read_bytes()
    png.write_bytes(b"not a png")
    out = tmp_path / "out"
    assert set(run_local(cfg, broken, out, progress=False)["skipped_videos"]) == {"0001"}
    again = run_local(cfg, broken, out, progress=False)  # still broken: a plain resume, nothing to do
    assert again["written"] == 0 and set(again["skipped_videos"]) == {"0001"}
    png.write_bytes(good)
    with pytest.raises(DataError, match=r"fitted on a different corpus \(video '0001' was not in the fit"):
        run_local(cfg, broken, out, progress=False)
