"""Training data: shards -> decoded frames -> frame pairs per video -> augmented pairs (Ray Data).

The dataset is ``read_parquet`` (committed shards only) -> ``map_batches(decode)`` (codec
decode and the manifest's thing/stuff split) -> ``groupby(video_id).map_groups(pairs)``
(Ray Data gives no ordering guarantee, so consecutive frames are found by sorting each video's
frames by ``frame_index``). Augmentation (``augment_pairs``: a horizontal flip and a photometric
jitter applied alike to both frames of a pair, so the motion between them stays true) runs in
the train loop, seeded by (seed, video, key frame, epoch), so two runs see the same pairs.

One group holds a whole video's decoded frames: fine for clips of a few hundred frames (a
300-frame 256x512 video is ~350 MB decoded); cut longer videos into chunks when sharding.

The batch functions are plain numpy so tests call them without Ray; only
:func:`build_pair_dataset` touches Ray Data.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from videocups_ray.config import Config, EvalConfig, TrainConfig
from videocups_ray.data.shards import decode_batch, read_manifest, shard_files
from videocups_ray.data.types import DataError
from videocups_ray.labeling import apply_thing_stuff
from videocups_ray.model import ClassMeta

log = logging.getLogger(__name__)

PSEUDOLABEL_META_KEY = "pseudolabel"  # written by pipelines/pseudolabel.py
MAX_GROUP_PARTITIONS = 64  # upper bound on groupby reduce partitions


# --------------------------------------------------------------------------- classes
def shard_class_meta(shard_dir: str | os.PathLike, eval_cfg: EvalConfig) -> tuple[ClassMeta, bool]:
    """(class metadata, whether the thing/stuff split must be applied at read time).

    Pseudo-label shards carry ``meta["pseudolabel"]`` (K clusters, thing classes decided on the
    corpus): stuff = the other clusters, and the split is applied when reading. Ground-truth
    shards (SynthDrive, KITTI-STEP, fine-tuning) have none: classes are ``eval.num_classes``
    with ``eval.things`` as things, and the labels are used as they are.
    """
    manifests = []
    for path in _manifest_paths(shard_dir):
        manifests.append(read_manifest(path).get("meta", {}).get(PSEUDOLABEL_META_KEY))
    if any(m is not None for m in manifests):
        if any(m is None for m in manifests):
            raise DataError(f"{shard_dir}: some shard directories hold pseudo-labels and some do not")
        first = manifests[0]
        for m in manifests[1:]:
            if m["thing_classes"] != first["thing_classes"] or m["num_clusters"] != first["num_clusters"]:
                raise DataError(f"{shard_dir}: shard directories disagree on the thing/stuff split "
                                f"({first['thing_classes']} vs {m['thing_classes']})")
        k, things = int(first["num_clusters"]), tuple(int(c) for c in first["thing_classes"])
        if not things:
            raise DataError(f"{shard_dir}: the pseudo-label manifest has no thing classes "
                            f"(psi={first.get('psi')}); the model needs at least one")
        stuff = tuple(c for c in range(k) if c not in things)
        return ClassMeta(stuff, things, int(first.get("ignore_label", 255))), True
    things = tuple(eval_cfg.things)
    stuff = tuple(c for c in range(eval_cfg.num_classes) if c not in things)
    log.info("%s: no pseudo-label meta; training on ground-truth classes (things %s)", shard_dir, things)
    return ClassMeta(stuff, things, eval_cfg.ignore_label), False


def count_videos(shard_dir: str | os.PathLike) -> int:
    """Distinct video IDs over the committed shards (from the manifests; no data read)."""
    videos: set[str] = set()
    for path in _manifest_paths(shard_dir):
        for entry in read_manifest(path)["shards"]:
            videos.update(entry["keys"])
    return len(videos)


def _manifest_paths(shard_dir: str | os.PathLike) -> list[str]:
    """Shard directories under ``shard_dir`` (itself, or its subdirectories with a manifest)."""
    files = shard_files(shard_dir)
    return sorted({f.rsplit("/", 1)[0] for f in files}) or [os.fspath(shard_dir)]


# --------------------------------------------------------------------------- batch functions
def decode_frames(batch: dict[str, np.ndarray], *, thing_classes: tuple[int, ...], ignore_label: int,
                  apply_split: bool) -> dict[str, np.ndarray]:
    """``map_batches`` step: decode shard rows and (pseudo-labels) apply the thing/stuff split."""
    out = decode_batch(batch)
    keep = {k: out[k] for k in ("video_id", "frame_index", "image", "semantic", "instance", "ignore")}
    if apply_split:
        sems, insts, igns = [], [], []
        for i in range(len(keep["video_id"])):
            s, n, g = apply_thing_stuff(keep["semantic"][i], keep["instance"][i], keep["ignore"][i],
                                        thing_classes, ignore_label=ignore_label)
            sems.append(s)
            insts.append(n)
            igns.append(g)
        keep["semantic"], keep["instance"], keep["ignore"] = np.stack(sems), np.stack(insts), np.stack(igns)
    for name in ("image", "semantic", "instance", "ignore"):
        if keep[name].dtype == object:
            raise DataError(f"shard batch of video {keep['video_id'][0]!r}: frames of different sizes in one "
                            f"batch ({name}); training needs one frame size per corpus")
    return keep


def assemble_pairs(group: dict[str, np.ndarray], *, stride: int = 1) -> dict[str, np.ndarray]:
    """``map_groups`` step: all frames of one video -> (t, t + stride) pairs, both frames present.

    Output columns: video_id, key_index, images uint8 [n, 2, H, W, 3], semantic uint8
    [n, 2, H, W], instance int32 [n, 2, H, W], ignore bool [n, 2, H, W]. A video with fewer than
    ``stride + 1`` frames yields no pair.
    """
    index = np.asarray(group["frame_index"], dtype=np.int64)
    vids = {str(v) for v in group["video_id"]}
    if len(vids) > 1:
        raise DataError(f"assemble_pairs: one group holds several videos {sorted(vids)[:5]}")
    if len(set(index.tolist())) != len(index):
        dup = sorted({int(i) for i in index if (index == i).sum() > 1})
        raise DataError(f"video {next(iter(vids))!r}: frames {dup[:5]} appear more than once in the shards")
    order = np.argsort(index)
    pos = {int(index[o]): int(o) for o in order}
    pairs = [(pos[i], pos[i + stride]) for i in sorted(pos) if i + stride in pos]
    n = len(pairs)
    out: dict[str, np.ndarray] = {
        "video_id": np.asarray([str(group["video_id"][0])] * n if n else [], dtype=object),
        "key_index": np.asarray([int(index[a]) for a, _ in pairs], dtype=np.int64),
    }
    src = {"images": "image", "semantic": "semantic", "instance": "instance", "ignore": "ignore"}
    for col, name in src.items():
        arr = group[name]
        if n:
            out[col] = np.stack([np.stack([arr[a], arr[b]]) for a, b in pairs])
        else:
            out[col] = np.zeros((0, 2, *arr.shape[1:]), dtype=arr.dtype)
    return out


def _pair_seed(seed: int, video_id: str, key_index: int, salt: int) -> int:
    return zlib.crc32(f"{seed}/{video_id}/{key_index}/{salt}".encode())


def augment_pairs(batch: dict[str, np.ndarray], *, flip_prob: float, color_jitter: float, seed: int = 0,
                  salt: int | None = None) -> dict[str, np.ndarray]:
    """``map_batches`` step: per pair, a horizontal flip with ``flip_prob`` and a brightness /
    contrast change of up to ``color_jitter`` (relative), the same for both frames.

    ``salt`` None draws fresh randomness each call (every epoch sees new augmentations); an
    integer makes the result a function of (seed, video, key frame, salt), for tests.
    """
    out = dict(batch)
    images = batch["images"].copy()
    semantic, instance, ignore = batch["semantic"].copy(), batch["instance"].copy(), batch["ignore"].copy()
    entropy = np.random.SeedSequence().entropy if salt is None else salt
    for i in range(len(images)):
        rng = np.random.default_rng(_pair_seed(seed, str(batch["video_id"][i]), int(batch["key_index"][i]), entropy))
        if rng.random() < flip_prob:
            images[i] = images[i][:, :, ::-1]
            semantic[i], instance[i], ignore[i] = semantic[i][:, :, ::-1], instance[i][:, :, ::-1], ignore[i][:, :, ::-1]
        if color_jitter > 0:
            gain = 1.0 + rng.uniform(-color_jitter, color_jitter)
            contrast = 1.0 + rng.uniform(-color_jitter, color_jitter)
            img = images[i].astype(np.float32)
            mean = img.mean()
            images[i] = np.clip((img - mean) * contrast + mean * gain, 0, 255).round().astype(np.uint8)
    out.update(images=images, semantic=semantic, instance=instance, ignore=ignore)
    return out


def batch_to_pairs(batch: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """A numpy batch of pairs -> the model's pair dicts (``model.targets`` layout)."""
    pairs = []
    for i in range(len(batch["images"])):
        images = torch.from_numpy(np.ascontiguousarray(batch["images"][i])).permute(0, 3, 1, 2).contiguous()
        pairs.append({
            "images": images,  # uint8 [2, 3, H, W]
            "semantic": torch.from_numpy(np.ascontiguousarray(batch["semantic"][i])).long(),
            "instance": torch.from_numpy(np.ascontiguousarray(batch["instance"][i])).long(),
            "ignore": torch.from_numpy(np.ascontiguousarray(batch["ignore"][i])).bool(),
        })
    return pairs


# --------------------------------------------------------------------------- dataset
def build_pair_dataset(shard_dir: str | os.PathLike, meta: ClassMeta, apply_split: bool, cfg: TrainConfig):
    """The Ray Data pipeline of augmented pairs for ``TorchTrainer(datasets={"train": ...})``."""
    import ray.data

    files = shard_files(shard_dir)
    if not files:
        raise DataError(f"{shard_dir}: no committed shards to train on")
    ds = ray.data.read_parquet(files)
    ds = ds.map_batches(decode_frames, batch_format="numpy", batch_size=8,
                        fn_kwargs={"thing_classes": meta.thing_classes, "ignore_label": meta.ignore_label,
                                   "apply_split": apply_split})
    # One reduce partition per video (at most MAX_GROUP_PARTITIONS): Ray's default of 200 hash
    # partitions costs ~40 s of task overhead on a small corpus on 2 cores.
    partitions = max(1, min(count_videos(shard_dir), MAX_GROUP_PARTITIONS))
    ds = ds.groupby("video_id", num_partitions=partitions).map_groups(assemble_pairs, batch_format="numpy",
                                           fn_kwargs={"stride": cfg.pair_stride})
    if cfg.cache_pairs:
        ds = ds.materialize()
        if ds.count() == 0:
            raise DataError(f"{shard_dir}: no video has two frames {cfg.pair_stride} apart; no training pairs")
    return ds  # augmentation runs in the train loop (``augment_pairs`` salted by the epoch: reproducible)


@contextmanager
def ordered_data() -> Iterator[None]:
    """Ray Data keeps block order (``preserve_order``) inside the block: materialised pairs and
    each worker's stream come in the same order every run, so a seeded run is reproducible.
    Ray Train's ingest options copy the flag from the current ``DataContext``; it is restored after."""
    import ray.data

    options = ray.data.DataContext.get_current().execution_options
    before = options.preserve_order
    options.preserve_order = True
    try:
        yield
    finally:
        options.preserve_order = before


# --------------------------------------------------------------------------- fine-tuning subset
def fraction_pair_starts(num_frames: int, fraction: float, stride: int = 1) -> list[int]:
    """Key positions of evenly spaced pairs covering about ``fraction`` of a video's frames.

    At least one pair when the video has a pair at all; pairs never share a frame.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    max_pairs = num_frames // (stride + 1)
    if num_frames <= stride or max_pairs == 0:
        return []
    want = min(max_pairs, max(1, round(fraction * num_frames / 2)))
    starts = np.linspace(0, num_frames - 1 - stride, want).round().astype(int).tolist()
    out: list[int] = []
    for s in starts:  # drop a start whose pair would overlap the previous one
        if not out or s > out[-1] + stride:
            out.append(int(s))
    return out


def iter_pairs_per_worker(shard: Any, batch_size: int, shuffle_buffer: int,
                          seed: int | None = None) -> Iterable[dict[str, np.ndarray]]:
    """Numpy batches of pairs from a worker's dataset shard (``get_dataset_shard("train")``);
    ``seed`` fixes the local shuffle (the loop passes one per run, rank and epoch)."""
    return shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True,
                              local_shuffle_buffer_size=shuffle_buffer or None,
                              local_shuffle_seed=seed if shuffle_buffer else None)


def config_payload(cfg: Config) -> dict:
    """The config as plain data for the train loop (workers rebuild the typed config)."""
    return cfg.model_dump(mode="json")
