"""Ray engine: end-to-end frames/s vs the local engine, replica scaling, memory, streaming latency.

    .venv/bin/python benchmarks/bench_ray.py [--quick]

Measured in one run on the same machine (print of the load average alongside, since the
development boxes are shared):

1. pass-2 frames/s on SynthDrive at 256x512 with the default cues: local single-process
   engine (baseline), Ray with 1 replica per cue pool, Ray with 2 replicas; every engine gets
   the same centroids (pass 1 excluded) and the Ray shards are checked equal to the local ones;
2. peak resident memory of the Ray processes labelling N and 10*N tiny videos (flat = bounded
   in-flight work);
3. streaming latency p50/p95 (arrival of frame t -> its first label) at a given input rate.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from videocups_ray.config import Config, with_overrides  # noqa: E402
from videocups_ray.data.shards import read_shards  # noqa: E402
from videocups_ray.data.synthdrive import write_synth_dataset  # noqa: E402
from videocups_ray.pipelines.pseudolabel import run_local  # noqa: E402
from videocups_ray.pipelines.ray_pseudolabel import run_ray  # noqa: E402
from videocups_ray.pipelines.streaming import run_stream  # noqa: E402


class PeakRss:
    """Peak summed RSS of this process and its descendants (Ray workers), sampled at 5 Hz.

    Shared pages (torch libraries, the object store's mapping) count once per process, so the
    absolute value overstates; the ratio between corpus sizes is the figure of merit.
    """

    def __init__(self):
        import psutil

        self._proc, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total = 0
            for p in [self._proc, *self._proc.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def labels_equal(a: Path, b: Path) -> bool:
    fa = {(f.video_id, f.frame_index): f for f in read_shards(a)}
    fb = {(f.video_id, f.frame_index): f for f in read_shards(b)}
    return sorted(fa) == sorted(fb) and all(
        np.array_equal(fa[k].semantic, fb[k].semantic) and np.array_equal(fa[k].instance, fb[k].instance)
        and np.array_equal(fa[k].extra["ignore"], fb[k].extra["ignore"]) for k in fa)


def bench_throughput(tmp: Path, sequences: int, frames: int) -> list[tuple]:
    import ray

    cfg = with_overrides(Config(), synth={"sequences": sequences, "frames": frames, "height": 256, "width": 512})
    corpus = tmp / "synth"
    write_synth_dataset(cfg.synth, corpus, progress=False)
    local = tmp / "local"
    s = run_local(cfg, corpus, local, progress=False)
    rows = [("local (1 process)", s["frames_per_s"], 1.0, "-", "-")]
    for replicas in (1, 2):
        res = {"replicas": replicas, "num_cpus": 0.5}
        rcfg = with_overrides(cfg, ray={"flow": res, "depth": res, "features": res,
                                        "max_videos_in_flight": max(2, sequences)})
        out = tmp / f"ray{replicas}"
        out.mkdir()
        shutil.copy(local / "centroids.npy", out / "centroids.npy")  # same centroids, pass 1 excluded
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, object_store_memory=768 * 2**20,
                 _temp_dir=tempfile.mkdtemp(prefix="vcr", dir="/tmp"))
        try:
            r = run_ray(rcfg, corpus, out, progress=False)
        finally:
            ray.shutdown()
        util = " ".join(f"{k}={v:.0%}" for k, v in r["utilisation"].items())
        rows.append((f"ray, {replicas} cue replica(s)", r["frames_per_s"], r["frames_per_s"] / s["frames_per_s"],
                     labels_equal(local, out), util))
    return rows


def bench_memory(tmp: Path, small: int, large: int) -> list[tuple]:
    import ray

    out_rows = []
    for n in (small, large):
        cfg = with_overrides(Config(), synth={"sequences": n, "frames": 4, "height": 96, "width": 192},
                             labeling={"num_clusters": 8, "kmeans_frames_per_video": 2})
        corpus = tmp / f"mem{n}"
        write_synth_dataset(cfg.synth, corpus, progress=False)
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, object_store_memory=512 * 2**20,
                 _temp_dir=tempfile.mkdtemp(prefix="vcr", dir="/tmp"))
        try:
            with PeakRss() as mem:
                r = run_ray(cfg, corpus, tmp / f"memout{n}", progress=False)
        finally:
            ray.shutdown()
        out_rows.append((n, r["frames"], mem.peak / 2**20))
    return out_rows


def bench_stream(tmp: Path, fps: float, frames: int) -> dict:
    cfg = with_overrides(Config(), synth={"sequences": 1, "frames": frames, "height": 256, "width": 512})
    corpus = tmp / "stream_synth"
    write_synth_dataset(cfg.synth, corpus, progress=False)
    video = corpus / "images" / sorted(os.listdir(corpus / "images"))[0]
    from videocups_ray.data.sources import open_source

    src = open_source(corpus)
    return run_stream(cfg, iter(src), tmp / "stream_out", fps=fps) | {"video": video.name}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames and videos (a few minutes on 2 cores)")
    ap.add_argument("--fps", type=float, default=5.0, help="streaming input rate, frames/s")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray"))
    seqs, frames = (2, 8) if args.quick else (4, 20)
    mem_small, mem_large = (3, 12) if args.quick else (10, 100)
    print(f"machine: {os.cpu_count()} logical CPUs, no GPU use; load average before: {os.getloadavg()}")

    rows = bench_throughput(tmp, seqs, frames)
    print(f"\n1. pass-2 throughput, SynthDrive {seqs}x{frames} frames at 256x512, default cues "
          f"(load {os.getloadavg()[0]:.1f})")
    print(f"{'engine':<26}{'frames/s':>10}{'vs local':>10}{'equal':>8}  utilisation")
    for name, fps, ratio, eq, util in rows:
        print(f"{name:<26}{fps:>10.2f}{ratio:>10.2f}{str(eq):>8}  {util}")
    print(f"replica scaling 1 -> 2: {rows[2][1] / rows[1][1]:.2f}x")

    mem = bench_memory(tmp, mem_small, mem_large)
    print(f"\n2. peak summed RSS of driver + Ray workers, shared pages counted per process (load {os.getloadavg()[0]:.1f})")
    print(f"{'videos':>8}{'frames':>8}{'peak MiB':>10}{'vs first':>10}")
    for n, fr, mib in mem:
        print(f"{n:>8}{fr:>8}{mib:>10.0f}{mib / mem[0][2]:>10.2f}")

    s = bench_stream(tmp, args.fps, 12 if args.quick else 40)
    period = 1.0 / args.fps
    print(f"\n3. streaming at {args.fps:g} frames/s input, 256x512, policy {s['policy']} "
          f"(load {os.getloadavg()[0]:.1f})")
    print(f"latency p50 {s['latency_p50_s']:.3f} s = {s['latency_p50_s'] / period:.2f} periods; "
          f"p95 {s['latency_p95_s']:.3f} s = {s['latency_p95_s'] / period:.2f} periods; "
          f"dropped {s['dropped']} of {s['received']}")
    print(f"\nload average after: {os.getloadavg()}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
