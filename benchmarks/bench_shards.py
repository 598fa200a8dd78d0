"""PNG vs raw+zstd for the image and label columns of shards: size, write time, read time.

Frames: the real KITTI-STEP sample (375x1242) and the same frames downscaled to 256x512
(the SynthDrive default size); horizontally flipped copies double the count without
byte-identical rows (identical rows would let zstd deduplicate and flatter "raw").
For every (image codec, label codec) pair it writes one shard with ShardWriter (encode +
Parquet + sha256 + fsync + rename + manifest) and reads it back with read_shards
(checksum + Parquet + decode). Ratios are against raw/raw measured in the same run.

    .venv/bin/python benchmarks/bench_shards.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq

from videocups_ray.config import ShardConfig
from videocups_ray.data.shards import ShardWriter, read_shards, shard_files
from videocups_ray.data.formats import open_source
from videocups_ray.data.types import Frame

KITTI_SAMPLE = Path("/work/shared/data/kitti_step_0001")
COMBOS = [("raw", "raw"), ("raw", "png"), ("png", "raw"), ("png", "png")]


def _resize(f: Frame, h: int, w: int) -> Frame:
    image = cv2.resize(f.image, (w, h), interpolation=cv2.INTER_AREA)
    sem = cv2.resize(f.semantic, (w, h), interpolation=cv2.INTER_NEAREST)
    inst = cv2.resize(f.instance, (w, h), interpolation=cv2.INTER_NEAREST)
    return Frame(f.video_id, f.frame_index, image, sem, inst)


def _frames(h: int, w: int, flips: bool) -> list[Frame]:
    base = list(open_source(KITTI_SAMPLE))
    if (h, w) != base[0].shape:
        base = [_resize(f, h, w) for f in base]
    out = list(base)
    if flips:
        out += [Frame(f.video_id, f.frame_index + 100, np.ascontiguousarray(f.image[:, ::-1]),
                      np.ascontiguousarray(f.semantic[:, ::-1]), np.ascontiguousarray(f.instance[:, ::-1]))
                for f in base]
    for f in out:
        f.extra["ignore"] = f.semantic == 255
    return out


def _measure(frames: list[Frame], cfg: ShardConfig, repeats: int) -> dict[str, float]:
    n = len(frames)
    writes, reads, sizes = [], [], {}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            t0 = time.perf_counter()
            with ShardWriter(tmp, cfg, "bench", "bench") as w:
                for f in frames:
                    w.add_frame(f)
            writes.append((time.perf_counter() - t0) / n * 1e3)
            t0 = time.perf_counter()
            count = sum(1 for _ in read_shards(tmp))
            reads.append((time.perf_counter() - t0) / n * 1e3)
            assert count == n
            (path,) = shard_files(tmp)
            meta = pq.ParquetFile(path).metadata
            per_col: dict[str, int] = {}
            for rg in range(meta.num_row_groups):
                for c in range(meta.num_columns):
                    col = meta.row_group(rg).column(c)
                    per_col[col.path_in_schema] = per_col.get(col.path_in_schema, 0) + col.total_compressed_size
            sizes = {"total": os.path.getsize(path), "image": per_col["image"],
                     "labels": per_col["semantic"] + per_col["instance"] + per_col["ignore"]}
    return {"mb": sizes["total"] / n / 1e6, "img_mb": sizes["image"] / n / 1e6,
            "lab_mb": sizes["labels"] / n / 1e6, "write_ms": statistics.median(writes),
            "read_ms": statistics.median(reads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 frames, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    print(f"load average before: {os.getloadavg()}")
    for h, w in ((256, 512), (375, 1242)):
        frames = _frames(h, w, flips=not args.quick)
        print(f"\n{h}x{w}, {len(frames)} frames, {repeats} repeat(s), zstd level 3, png level 1")
        print(f"{'image':>5} {'label':>5} | {'MB/frame':>8} {'img MB':>7} {'lab MB':>7} {'x size':>6} | "
              f"{'write ms':>8} {'x write':>7} | {'read ms':>7} {'x read':>6}")
        base = None
        _measure(frames[:2], ShardConfig(rows_per_shard=2), 1)  # warm-up: imports, codec tables, page cache
        for image_codec, label_codec in COMBOS:
            cfg = ShardConfig(rows_per_shard=len(frames), image_encoding=image_codec, label_encoding=label_codec)
            r = _measure(frames, cfg, repeats)
            base = base or r
            print(f"{image_codec:>5} {label_codec:>5} | {r['mb']:8.3f} {r['img_mb']:7.3f} {r['lab_mb']:7.3f} "
                  f"{r['mb'] / base['mb']:6.2f} | {r['write_ms']:8.1f} {r['write_ms'] / base['write_ms']:7.2f} | "
                  f"{r['read_ms']:7.1f} {r['read_ms'] / base['read_ms']:6.2f}")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
