"""Shards: codecs (size, write, read), manifest bookkeeping at 1k-100k commits, writer pool scaling.

Three sections (``--section codecs|bookkeeping|writers|all``):

**codecs**: PNG vs raw+zstd for the image and label columns of shards: size, write time, read time.

Frames: the real KITTI-STEP sample (375x1242) and the same frames downscaled to 256x512
(the SynthDrive default size); horizontally flipped copies double the count without
byte-identical rows (identical rows would let zstd deduplicate and flatter "raw").
For every (image codec, label codec) pair it writes one shard with ShardWriter (encode +
Parquet + sha256 + fsync + rename + manifest) and reads it back with read_shards
(checksum + Parquet + decode). Ratios are against raw/raw measured in the same run.

**bookkeeping** (issue 11 item 5): commit cost, resume time and resume peak memory of the
``_manifest/`` commit log at 1k / 10k / 100k committed shards of metadata-only rows (256 frames
per shard, 1000-frame videos, a per-video statistics record per finished video), next to the
old single-JSON manifest rewritten in full per commit, both measured in this run. The log's
state is built by the real ``Manifest.commit`` (compactions included) with fsync switched off,
reported as the amortised build cost per commit; then ``--window`` durable commits are timed
at that size. Resume runs in a fresh subprocess (module imports done before the clock starts): open the log,
per-video counts, per-video stats, the frame keys of the 4 videos being resumed, the committed
file names (debris check); its peak RSS is measured there. The old scheme's resume (json.loads + the set of every key)
runs under a ``--old-cap-gb`` address-space cap.

**writers** (issue 11 item 3): rows/s of a WriterPool with 1, 2 and 4 WriterActors at
375x1242 (KITTI frames and their mirror images), rows pre-put in the object store, shards of
8 rows; ratio to 1 writer in the same run and the load average (the machine has os.cpu_count()
cores: zstd compression and file I/O cannot scale beyond them).

    .venv/bin/python benchmarks/bench_shards.py [--section S] [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
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


def codecs_section(args: argparse.Namespace) -> None:
    repeats = 1 if args.quick else args.repeats
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


# --------------------------------------------------------------------------- bookkeeping
ROWS, VIDEO_FRAMES, K = 256, 1000, 27
STATS_KEY = "thingstuff_per_video"


def _video(v: int) -> str:
    return f"drive-{v:07d}"


def _entry(i: int) -> dict:
    """Shard i's manifest entry (metadata only): 256 frames of 1000-frame videos."""
    lo, hi = i * ROWS, i * ROWS + ROWS - 1
    keys = {}
    for v in range(lo // VIDEO_FRAMES, hi // VIDEO_FRAMES + 1):
        a, b = max(lo, v * VIDEO_FRAMES) - v * VIDEO_FRAMES, min(hi, v * VIDEO_FRAMES + VIDEO_FRAMES - 1) - v * VIDEO_FRAMES
        keys[_video(v)] = [[a, b]]
    return {"file": f"part-w00{i % 97:08x}-{i:06d}.parquet", "rows": ROWS, "bytes": 180_000_000 + i,
            "sha256": hashlib.sha256(str(i).encode()).hexdigest(), "keys": keys}


def _finished_videos(i: int) -> list[str]:
    """Videos whose last frame is in shard i (their statistics record is committed with it)."""
    lo, hi = i * ROWS, i * ROWS + ROWS - 1
    return [_video(v) for v in range(lo // VIDEO_FRAMES, hi // VIDEO_FRAMES + 1)
            if lo <= v * VIDEO_FRAMES + VIDEO_FRAMES - 1 <= hi]


def _stats(v: str) -> dict:
    rng = hashlib.sha256(v.encode()).digest()
    return {"in_instance": [int(b) * 1000 for b in rng[:K]], "total": [int(b) * 90000 for b in rng[:K]],
            "frames": VIDEO_FRAMES}


def _new_commit(manifest, i: int) -> None:
    vids = _finished_videos(i)
    manifest.commit([_entry(i)], video_meta={STATS_KEY: {v: _stats(v) for v in vids}} if vids else None)


def _build_new(root: str, n: int):
    """A commit log holding n shards, built by the real commit code with fsync switched off."""
    from videocups_ray.data import shard_store
    from videocups_ray.data.manifest import Manifest
    from videocups_ray.data.shard_store import Store

    manifest = Manifest.create(Store(root), "bench", "bench")
    real_fsync = shard_store._fsync
    shard_store._fsync = lambda path: None
    try:
        t0 = time.perf_counter()
        for i in range(n):
            _new_commit(manifest, i)
        build_us = (time.perf_counter() - t0) / max(n, 1) * 1e6
    finally:
        shard_store._fsync = real_fsync
    return manifest, build_us


def _time_new_commits(states: dict, window: int, per_round: int = 16) -> dict:
    """Durable commits on every state, interleaved in rounds so each size sees the same load."""
    times: dict[int, list[float]] = {n: [] for n in states}
    nxt = {n: n for n in states}
    for _ in range(max(1, window // per_round)):
        for n, manifest in states.items():
            for _ in range(per_round):
                t0 = time.perf_counter()
                _new_commit(manifest, nxt[n])
                times[n].append(time.perf_counter() - t0)
                nxt[n] += 1
    return {n: {"median_ms": statistics.median(t) * 1e3, "mean_ms": statistics.fmean(t) * 1e3,
                "max_ms": max(t) * 1e3, "objects": len(states[n].dir.list_names())} for n, t in times.items()}


def _old_manifest(n: int) -> dict:
    """The single-JSON manifest of the old code after n commits (same entries, same stats)."""
    shards, stats = [], {}
    for i in range(n):
        e = _entry(i)
        shards.append({**e, "config_hash": "bench", "code_version": "bench"})
        stats.update({v: _stats(v) for v in _finished_videos(i)})
    return {"format": "videocups-shards/1", "config_hash": "bench", "code_version": "bench",
            "meta": {STATS_KEY: stats}, "shards": shards}


def _old_commits(root: str, n: int, repeats: int) -> dict:
    """The old ShardWriter._write_manifest: serialise all of it, write, fsync, rename, fsync the folder."""
    from videocups_ray.data.shard_store import Store

    store, manifest = Store(root), _old_manifest(n)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        blob = json.dumps(manifest, indent=1, sort_keys=True).encode()
        store.write_atomic("manifest.json", blob)
        times.append(time.perf_counter() - t0)
    return {"median_ms": statistics.median(times) * 1e3, "mb": len(blob) / 1e6}


def _resume_child(scheme: str, root: str, n: int) -> None:
    """Runs in a fresh process: one resume, prints time and peak RSS as JSON."""
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if scheme == "new":
        import pyarrow.dataset  # noqa: F401 - imported by any engine anyway; ~0.2 s idle, 1.5 s at load 40

        from videocups_ray.data.manifest import Manifest
        from videocups_ray.data.shard_store import Store

        base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after the imports
        t0 = time.perf_counter()
        m = Manifest.open(Store(root))
        counts = m.committed_counts()
        stats = m.meta().get(STATS_KEY, {})
        last = (n * ROWS - 1) // VIDEO_FRAMES
        frames = m.committed_frames([_video(v) for v in range(max(0, last - 3), last + 1)])
        files = m.committed_files()
        check = (sum(counts.values()), len(stats), sum(map(len, frames.values())), len(files))
    else:
        with open(os.path.join(root, "manifest.json"), "rb") as f:
            manifest = json.loads(f.read())
        committed = set()
        for e in manifest["shards"]:
            for vid, ranges in e["keys"].items():
                for lo, hi in ranges:
                    committed.update((vid, i) for i in range(lo, hi + 1))
        stats = manifest["meta"].get(STATS_KEY, {})
        check = (len(committed), len(stats), 0, len(manifest["shards"]))
    seconds = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"s": seconds, "peak_mb": peak_kb / 1024, "delta_mb": (peak_kb - base_kb) / 1024,
                      "check": check}))


def _resume(scheme: str, root: str, n: int, cap_gb: float | None = None) -> dict:
    def limit() -> None:
        if cap_gb:
            resource.setrlimit(resource.RLIMIT_AS, (int(cap_gb * 2**30), int(cap_gb * 2**30)))

    cmd = [sys.executable, __file__, "--resume-child", scheme, root, str(n)]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit, timeout=1800,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
        return {"error": f"rc {proc.returncode}: {tail[0][:80]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bookkeeping_section(args: argparse.Namespace) -> None:
    sizes = (1000, 10000) if args.quick else (1000, 10000, 100000)
    print(f"\nmanifest bookkeeping: metadata-only shards of {ROWS} rows, {VIDEO_FRAMES}-frame videos; "
          f"new = _manifest/ commit log (compact_every 256, fanout 8), old = one JSON rewritten per commit; "
          f"{args.window} durable new commits per size, interleaved with the other sizes")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        states, build = {}, {}
        for n in sizes:
            states[n], build[n] = _build_new(os.path.join(tmp, f"new{n}"), n)
        new = _time_new_commits(states, args.window)
        rows = []
        for n in sizes:
            old_dir = os.path.join(tmp, f"old{n}")
            os.makedirs(old_dir)
            old = _old_commits(old_dir, n, repeats=3 if n <= 10000 else 2)
            r_new = _resume("new", os.path.join(tmp, f"new{n}"), n)
            r_old = _resume("old", old_dir, n, cap_gb=args.old_cap_gb)
            rows.append((n, old, r_new, r_old))
            os.remove(os.path.join(old_dir, "manifest.json"))
    print(f"{'shards':>7} | {'new commit ms':>13} {'mean':>6} {'max':>7} {'build us':>8} {'objs':>5} | "
          f"{'old commit ms':>13} {'old MB':>6} {'old/new':>7} | {'new resume s':>12} {'peak MB':>7} "
          f"{'delta MB':>8} | {'old resume s':>12} {'peak MB':>7}")
    for n, old, r_new, r_old in rows:
        c = new[n]
        old_r = (f"{r_old['s']:12.2f} {r_old['peak_mb']:7.0f}" if "s" in r_old
                 else f"over the {args.old_cap_gb} GB cap ({r_old['error']})")
        new_r = (f"{r_new['s']:12.2f} {r_new['peak_mb']:7.0f} {r_new['delta_mb']:8.0f}" if "s" in r_new
                 else f"{r_new['error']:>29}")
        print(f"{n:7d} | {c['median_ms']:13.2f} {c['mean_ms']:6.2f} {c['max_ms']:7.1f} {build[n]:8.0f} "
              f"{c['objects']:5d} | {old['median_ms']:13.1f} {old['mb']:6.1f} "
              f"{old['median_ms'] / c['median_ms']:7.0f} | {new_r} | {old_r}", flush=True)
    lo, hi = sizes[0], sizes[-1]
    print(f"new commit {hi} vs {lo} shards: median x{new[hi]['median_ms'] / new[lo]['median_ms']:.2f}, "
          f"mean x{new[hi]['mean_ms'] / new[lo]['mean_ms']:.2f} (target <= 2x); amortised build "
          f"x{build[hi] / build[lo]:.2f}")


# --------------------------------------------------------------------------- writer pool
def _writer_cpu_s() -> float:
    """CPU seconds so far of every WriterActor process of this Ray instance (children of the raylet
    this process started): whether the writers are CPU-bound is what caps their scaling."""
    import psutil

    total = 0.0
    for p in psutil.Process().children(recursive=True):
        try:
            if "WriterActor" in " ".join(p.cmdline()[:1]):
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


def writers_section(args: argparse.Namespace) -> None:
    import ray

    from videocups_ray.config import Config, with_overrides
    from videocups_ray.pipelines.writer_pool import WriterPool

    frames = _frames(375, 1242, flips=True)
    # a multiple of 4 chunks, so 4 writers get equal shares (6 chunks capped 4 writers at 3x)
    chunk, n_chunks = 8, 4 if args.quick else 8
    cores = os.cpu_count() or 1
    print(f"\nwriter pool: 375x1242, {chunk * n_chunks} rows (chunks of {chunk}, shards of {chunk} rows, "
          f"raw + zstd 3), {cores} cores")
    ray.init(num_cpus=max(4, cores), include_dashboard=False, log_to_driver=False,
             object_store_memory=768 * 2**20, _temp_dir=tempfile.mkdtemp(prefix="vcb", dir="/tmp"))
    try:
        refs = []
        for c in range(n_chunks):
            rows = []
            for j in range(chunk):
                f = frames[(c * chunk + j) % len(frames)]
                rows.append({"video_id": f"v{c:03d}", "frame_index": j, "image": f.image, "semantic": f.semantic,
                             "instance": f.instance, "ignore": f.extra["ignore"]})
            refs.append(ray.put(rows))
        sizes = (1, 2, 4)
        rates: dict[int, list[float]] = {n: [] for n in sizes}
        loads: dict[int, list[float]] = {n: [] for n in sizes}
        util: dict[int, list[float]] = {n: [] for n in sizes}  # writer CPU seconds / (wall * writers)
        cpu_row: dict[int, list[float]] = {n: [] for n in sizes}  # writer CPU ms per row
        for _ in range(args.repeats):  # sizes interleaved per repeat, so each sees the same load
            for writers in sizes:
                cfg = with_overrides(Config(), shards={"rows_per_shard": chunk},
                                     ray={"writer": {"replicas": writers, "num_cpus": 0.5}})
                with tempfile.TemporaryDirectory(dir=args.tmp) as out:
                    pool = WriterPool(ray, cfg, out)
                    try:
                        pool.setup()
                        c0, t0 = _writer_cpu_s(), time.perf_counter()
                        for c, ref in enumerate(refs):
                            pool.write(f"v{c:03d}@0", ref, True)
                            pool.release(f"v{c:03d}@0")
                        counts = pool.finish()
                        wall, cpu = time.perf_counter() - t0, _writer_cpu_s() - c0
                        rates[writers].append(counts["written"] / wall)
                        util[writers].append(cpu / wall / writers)
                        cpu_row[writers].append(1e3 * cpu / counts["written"])
                        loads[writers].append(os.getloadavg()[0])
                        assert counts["written"] == chunk * n_chunks
                    finally:
                        pool.kill()
        print(f"{'writers':>7} | {'rows/s':>7} {'x 1 writer':>10} | {'ms/row':>6} | {'CPU ms/row':>10} | "
              f"{'CPU/writer':>10} | {'ceiling':>7} | runs (rows/s) | 1-min load")
        base = statistics.median(rates[1])
        # if one writer keeps a core busy u1 of its wall time, n writers on `cores` cores can give at
        # most min(n, cores / u1) times its rows/s: the most this machine allows, whatever the pool
        u1 = statistics.median(util[1])
        for writers in sizes:
            rate = statistics.median(rates[writers])
            ceiling = min(writers, cores / max(u1, 1e-9))
            print(f"{writers:7d} | {rate:7.1f} {rate / base:10.2f} | {1e3 / rate:6.1f} | "
                  f"{statistics.median(cpu_row[writers]):10.1f} | {statistics.median(util[writers]):10.0%} | "
                  f"{ceiling:6.2f}x | {' '.join(f'{x:.1f}' for x in rates[writers])} | "
                  f"{' '.join(f'{x:.1f}' for x in loads[writers])}", flush=True)
        print(f"(CPU/writer: writer processes' CPU seconds / wall / writers; ceiling: min(writers, {cores} cores / "
              f"one writer's CPU share {u1:.0%}), the speed-up this machine allows a CPU-bound writer)")
    finally:
        ray.shutdown()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--resume-child":
        _resume_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=["codecs", "bookkeeping", "writers", "all"], default="all")
    parser.add_argument("--quick", action="store_true", help="fewer frames, sizes and repeats")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=int, default=256, help="durable commits timed at each size")
    parser.add_argument("--old-cap-gb", type=float, default=6.0, help="address-space cap of the old resume")
    parser.add_argument("--tmp", default="/tmp", help="folder for the temporary shard directories")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    print(f"load average before: {os.getloadavg()}")
    if args.section in ("codecs", "all"):
        codecs_section(args)
    if args.section in ("bookkeeping", "all"):
        bookkeeping_section(args)
    if args.section in ("writers", "all"):
        writers_section(args)
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
