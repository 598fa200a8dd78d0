"""Ray engine: end-to-end frames/s vs the local engine, replica scaling, memory, streaming latency.

    .venv/bin/python benchmarks/bench_ray.py [--quick]

Measured in one run on the same machine (print of the load average alongside, since the
development boxes are shared):

1. pass-2 frames/s on SynthDrive at 256x512 with the default cues: local single-process
   engine (baseline), Ray with 1 replica per cue pool, Ray with 2 replicas; every engine gets
   the same centroids (pass 1 excluded) and the Ray shards are checked equal to the local ones;
2. peak resident memory of the Ray processes labelling N and 10*N tiny videos (flat = bounded
   in-flight work);
3. streaming, ``stream.latency`` one_frame vs exact on one SynthDrive sequence: latency
   p50/p95 (arrival of frame t -> its first label) at a given input rate, in frame periods,
   with the per-frame processing time (so machine load can be told from design), and the
   pseudo-label STQ of the first (provisional) labels and of the final ones;
4. ``--driver-cpu``: CPU seconds of the driver process (``time.process_time``, Ray's
   in-process threads included) per labelled frame of pass 2, at 256x512 and 1024x2048 (2 videos
   x 32 frames, 8 with ``--quick``), for this tree and for a baseline tree (``--baseline-code
   DIR``, e.g. main before the reader actors: ``git archive 8da9171``), each run in its own
   process with the same config and centroids; for this tree also setup vs labelling, the
   scheduling thread alone, and the idle rate of Ray's threads (per second, not per frame);
5. ``--streams``: the Ray streaming engine with 1, 2 and 4 concurrent sources at ``--fps``:
   p50/p95 latency per stream (arrival -> first label), and whether the streamed shards are
   bit-identical to the local and Ray corpus engines on the same frames.
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
# ``--code DIR`` (driver-CPU worker): import videocups_ray from another tree (the baseline, e.g. main)
CODE = sys.argv[sys.argv.index("--code") + 1] if "--code" in sys.argv else str(ROOT)
sys.path.insert(0, CODE)
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


def _first_labels(cfg: Config, cents: np.ndarray, frames: list, latency: str) -> tuple[list, list, list]:
    """Stream ``frames`` unpaced; the first label of every frame (what a live consumer sees
    first), the final ones, and the seconds of every ``push``."""
    from videocups_ray.pipelines.streaming import StreamingPseudoLabeler

    s = StreamingPseudoLabeler(cfg, cents, latency=latency)
    first, finals, push_s, pushed = {}, {}, [], []
    for f in frames:
        t0 = time.perf_counter()
        pushed.append(s.push(f))
        push_s.append(time.perf_counter() - t0)
    pushed.append(s.end())
    s.close()
    for got in pushed:
        for lf in got:
            first.setdefault(lf.frame_index, lf)
            if lf.final:
                finals[lf.frame_index] = lf
    return [first[k] for k in sorted(first)], [finals[k] for k in sorted(finals)], push_s[1:]


def _stq(cfg: Config, gt: list, labelled: list, things: tuple, ignore_label: int) -> float:
    """Pseudo-label STQ with the corpus thing/stuff split and unsupervised matching."""
    from videocups_ray.data.types import Frame
    from videocups_ray.labeling import apply_thing_stuff
    from videocups_ray.pipelines.evaluate import evaluate

    preds = []
    for lf in labelled:
        sem, inst, _ = apply_thing_stuff(lf.semantic, lf.instance, np.zeros_like(lf.ignore), things,
                                         ignore_label=ignore_label)
        preds.append(Frame(lf.video_id, lf.frame_index, np.zeros((1, 1, 3), np.uint8), semantic=sem, instance=inst))
    return evaluate(gt, preds, cfg=cfg.eval, unsupervised=True)["STQ"]


def bench_stream(tmp: Path, fps: float, frames: int, reps: int) -> dict:
    """Both latency modes on one SynthDrive sequence, same centroids and thing/stuff split (from
    the local engine): STQ of the first labels and per-frame time, unpaced and alternated
    ``reps`` times; then latency at ``fps`` and at a rate the machine sustains (paced, alternated
    ``reps`` times, medians over the runs; dropped/blocked are summed)."""
    from videocups_ray.pipelines.pseudolabel import MemorySource, pseudolabel_meta, synth_source

    cfg = with_overrides(Config(), synth={"sequences": 1, "frames": frames, "height": 256, "width": 512, "seed": 3})
    src = synth_source(cfg.synth)
    seq = list(src.frames(src.videos()[0]))
    local = tmp / "stream_local"
    run_local(cfg, MemorySource(seq), local, progress=False)
    cents = np.load(local / "centroids.npy")
    meta = pseudolabel_meta(local)
    things, ignore = tuple(meta["thing_classes"]), int(meta["ignore_label"])
    res: dict = {"frames": frames, "reps": reps, "modes": {m: {"push_s": []} for m in ("one_frame", "exact")}}
    for rep in range(reps):  # modes alternate, so a change of machine load hits both
        for mode, m in res["modes"].items():
            first, finals, push_s = _first_labels(cfg, cents, seq, mode)
            m["push_s"] += push_s
            if rep == 0:
                m["stq_first"] = _stq(cfg, seq, first, things, ignore)
                m["stq_final"] = _stq(cfg, seq, finals, things, ignore)
    # a rate this machine sustains now (1.5x the slower mode's processing): the queue stays short,
    # so the latency there shows the design (frames waited for + processing), not the load
    res["sustained_fps"] = min(fps, 1.0 / (1.5 * max(float(np.median(m["push_s"])) for m in res["modes"].values())))
    runs: dict = {(mode, key): [] for mode in res["modes"] for key in ("", "sustained_")}
    for rep in range(reps):  # paced runs alternate too; each figure below is the median over reps
        for (mode, key), got in runs.items():
            mcfg = with_overrides(cfg, stream={"latency": mode})
            rate = fps if key == "" else res["sustained_fps"]
            out = tmp / f"stream_out_{mode}_{key}{rep}"
            got.append(run_stream(mcfg, iter(seq), out, centroids=cents, fps=rate) | {"load": os.getloadavg()[0]})
    for (mode, key), got in runs.items():
        for k in ("latency_p50_s", "latency_p95_s", "processing_p50_s", "processing_p95_s", "load"):
            res["modes"][mode][key + k] = float(np.median([g[k] for g in got]))
        for k in ("dropped", "blocked"):
            res["modes"][mode][key + k] = sum(g[k] for g in got)
    return res


def print_stream(s: dict, fps: float) -> None:
    period = 1.0 / fps
    print(f"\n3. streaming, one SynthDrive sequence of {s['frames']} frames at 256x512, input {fps:g} frames/s "
          f"(period {period * 1000:.0f} ms); latency = arrival of t -> its first label (waits included)")
    print(f"{'mode':<11}{'p50 per.':>9}{'p95 per.':>9}{'p95 vs exact':>13}{'proc p50':>10}{'proc p95':>10}"
          f"{'unpaced p50':>12}{'vs exact':>9}{'floor':>7}{'STQ first':>10}{'STQ final':>10}{'dropped':>8}"
          f"{'blocked':>8}{'load':>6}")
    base = s["modes"]["exact"]
    base_unpaced = float(np.median(base["push_s"]))
    for mode, m in s["modes"].items():
        unpaced = float(np.median(m["push_s"]))
        # design floor: frame t can be labelled only when t+1 (one_frame) or t+2 (exact) has arrived
        floor = (1 if mode == "one_frame" else 2) + unpaced / period
        print(f"{mode:<11}{m['latency_p50_s'] / period:>9.2f}{m['latency_p95_s'] / period:>9.2f}"
              f"{m['latency_p95_s'] / base['latency_p95_s']:>13.2f}"
              f"{m['processing_p50_s']:>9.3f}s{m['processing_p95_s']:>9.3f}s{unpaced:>11.3f}s"
              f"{unpaced / base_unpaced:>9.2f}{floor:>7.2f}{m['stq_first']:>10.4f}{m['stq_final']:>10.4f}"
              f"{m['dropped']:>8}{m['blocked']:>8}{m['load']:>6.1f}")
    slow = 1.0 / s["sustained_fps"]
    print(f"at {s['sustained_fps']:.2f} frames/s (1.5x the slower mode's unpaced processing, period {slow * 1000:.0f} ms):")
    for mode, m in s["modes"].items():
        print(f"{mode:<11}latency p50 {m['sustained_latency_p50_s'] / slow:.2f} / p95 "
              f"{m['sustained_latency_p95_s'] / slow:.2f} periods ({m['sustained_latency_p95_s']:.3f} s), processing "
              f"p50 {m['sustained_processing_p50_s']:.3f} s, blocked {m['sustained_blocked']}, load {m['sustained_load']:.1f}")
    print(f"(per.: frame periods; p50/p95/proc: medians over {s['reps']} alternated paced run(s); proc: labeler "
          f"seconds per frame; unpaced: median over {s['reps']} alternated unpaced run(s); floor: periods waited for the frame ahead + unpaced processing, "
          "the latency with an idle queue. Processing above one period means the queue fills and latency "
          "grows with the stream: load, not design. Target: p95 <= 3 periods at 5 frames/s)")


# --------------------------------------------------------------------------- 4. driver CPU
DRIVER_SIZES = ((256, 512), (1024, 2048))
DRIVER_BATCH = 8  # frame pairs per batch: the driver's work is a handful of remote calls per batch


def _driver_cfg(h: int, w: int, frames: int, videos: int) -> Config:
    """SynthDrive rendered where the frames are read (``synth:``: by the readers in this tree, by
    the driver in the baseline, whose driver decoded every frame), oracle flow and depth (cheap,
    so the 2 cores go to rendering and labelling), handmade features at stride 8."""
    cues = {"flow": {"backend": "oracle", "batch_size": DRIVER_BATCH}, "depth": {"backend": "oracle",
            "batch_size": DRIVER_BATCH}, "features": {"stride": 8, "batch_size": DRIVER_BATCH}}
    return with_overrides(Config(), synth={"sequences": videos, "frames": frames, "height": h, "width": w, "seed": 11},
                          cues=cues, labeling={"num_clusters": 8, "kmeans_frames_per_video": 2},
                          ray={"max_videos_in_flight": videos, "max_frames_in_flight": 2 * DRIVER_BATCH})


def _thread_cpu() -> dict[tuple[int, str], float]:
    """CPU seconds of every thread of this process, keyed by (native id, Python name or "")."""
    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    return {(t.id, names.get(t.id, "")): t.user_time + t.system_time for t in psutil.Process().threads()}


def driver_worker(spec: dict) -> dict:
    """One measured ``run_ray`` (pass 1 on 2 frames per video, then pass 2), in this process.

    ``idle_ms_per_s``: the process's CPU per second while Ray is up and the driver sleeps (Ray's
    own threads: gRPC polling, timers, event reporting), measured before the run; it is paid per
    second of wall time, not per frame.
    """
    import ray

    cfg = _driver_cfg(spec["h"], spec["w"], spec["frames"], spec["videos"])
    # SynthDrive frames carry their ground truth (flow, depth, ...): ~60 MB a frame at 1024x2048. A store
    # that fills makes Ray ask every process, the driver too, for gc.collect() (PythonGCThread below)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, object_store_memory=3 * 2**30,
             _temp_dir=tempfile.mkdtemp(prefix="vcr", dir="/tmp"))
    try:
        time.sleep(2.0)
        i0 = time.process_time()
        time.sleep(5.0)
        idle = (time.process_time() - i0) / 5.0
        th0, c0, t0 = _thread_cpu(), time.process_time(), time.perf_counter()
        r = run_ray(cfg, "synth:", spec["out"], progress=False)
        cpu, wall, th1 = time.process_time() - c0, time.perf_counter() - t0, _thread_cpu()
    finally:
        ray.shutdown()
    n = max(r["frames"], 1)
    gc_s = sum(v - th0.get(k, 0.0) for k, v in th1.items() if k[1] == "PythonGCThread")
    res = {"gc_ms_per_frame": 1000 * gc_s / n, "frames": r["frames"], "cpu_ms_per_frame": 1000 * cpu / n, "wall_s": wall, "idle_ms_per_s": 1000 * idle,
           "skipped_videos": r["skipped_videos"]}
    if "driver_cpu" in r:  # this tree: the labelling phase apart from setup (actors up, centroids, resume)
        d = r["driver_cpu"]
        res |= {"setup_cpu_s": d["setup_s"], "label_ms_per_frame": 1000 * d["label_s"] / n,
                "main_ms_per_frame": 1000 * d["label_main_thread_s"] / n, "label_wall_s": d["label_wall_s"]}
    return res


def bench_driver_cpu(tmp: Path, trees: dict[str, str], frames: int, videos: int) -> list[dict]:
    """Each tree fits its own centroids (pass 1 samples 2 frames per video: its feature width may
    differ from this tree's), so ``total`` includes pass 1; ``label`` (this tree) excludes it."""
    import json
    import subprocess

    rows = []
    for h, w in DRIVER_SIZES:
        for name, code in trees.items():
            spec = {"h": h, "w": w, "frames": frames, "videos": videos, "out": str(tmp / f"drvout{h}{name}")}
            load0 = os.getloadavg()[0]
            proc = subprocess.run([sys.executable, __file__, "--code", code, "--driver-worker", json.dumps(spec)],
                                  capture_output=True, text=True, env={**os.environ, "PYTHONPATH": code},
                                  cwd=code)  # Ray workers import from the driver's working directory
            if proc.returncode != 0:
                raise RuntimeError(f"driver worker ({name}) failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            if res["frames"] != frames * videos:
                raise RuntimeError(f"driver worker ({name}) labelled {res['frames']} of {frames * videos} frames: "
                                   f"{res['skipped_videos']}")
            rows.append({"size": f"{h}x{w}", "tree": name, "load": max(load0, os.getloadavg()[0])} | res)
            print("  measured:", rows[-1], flush=True)
    return rows


def print_driver_cpu(rows: list[dict], baseline: str) -> None:
    print(f"\n4. driver CPU of pass 2 (process = time.process_time of the driver process, every thread; "
          f"{DRIVER_BATCH} pairs per batch)")
    print(f"{'size':<11}{'tree':<10}{'frames':>7}{'total ms/fr':>12}{'vs ' + baseline:>13}{'setup s':>8}"
          f"{'label ms/fr':>12}{'sched. thread':>14}{'Ray GC':>8}{'idle ms/s':>10}{'label fr/s':>11}{'wall s':>8}{'load':>6}")
    base = {r["size"]: r["cpu_ms_per_frame"] for r in rows if r["tree"] == baseline}
    for r in rows:
        ratio = f"{r['cpu_ms_per_frame'] / base[r['size']]:.3f}" if r["size"] in base else "-"
        lab = "label_ms_per_frame" in r
        print(f"{r['size']:<11}{r['tree']:<10}{r['frames']:>7}{r['cpu_ms_per_frame']:>12.2f}{ratio:>13}"
              f"{r['setup_cpu_s'] if lab else float('nan'):>8.2f}{r.get('label_ms_per_frame', float('nan')):>12.2f}"
              f"{r.get('main_ms_per_frame', float('nan')):>14.2f}{r['gc_ms_per_frame']:>8.2f}{r['idle_ms_per_s']:>10.2f}"
              f"{r['frames'] / r['label_wall_s'] if lab else float('nan'):>11.2f}{r['wall_s']:>8.1f}{r['load']:>6.1f}")
    print("(total: whole run_ray incl. setup and pass 1 / frames; label: the labelling phase only, every thread; sched. "
          "thread: the driver's scheduling thread in that phase; Ray GC: gc.collect() that Ray's PythonGCThread runs "
          "in the driver when the object store fills (whole run, per frame); idle: the process with Ray up and the driver "
          "asleep, paid per second of wall time; nan: the baseline tree does not report its phases)")


# --------------------------------------------------------------------------- 5. concurrent streams
STREAM_INFLIGHT = (1, 4)  # stream.max_frames_in_flight: 1 = a stream's frames one after the other (baseline)


def bench_streams(tmp: Path, fps: float, frames: int, counts: tuple[int, ...]) -> tuple[list[tuple], dict]:
    """Each count of concurrent sources with ``stream.max_frames_in_flight`` 1 (baseline: a frame
    waits for the previous one's labels) and 4 (pipelined), alternated, one service per run."""
    import ray

    from videocups_ray.pipelines.stream_service import StreamService, feed_streams

    cfg = with_overrides(Config(), synth={"sequences": max(counts), "frames": frames, "height": 256, "width": 512,
                                          "seed": 21},
                         labeling={"kmeans_frames_per_video": 4}, stream={"latency": "exact"})
    corpus = tmp / "streams"
    write_synth_dataset(cfg.synth, corpus, progress=False)
    local = tmp / "streams_local"
    run_local(cfg, corpus, local, progress=False)
    cents = np.load(local / "centroids.npy")
    from videocups_ray.data.formats import open_source

    src = open_source(corpus)
    videos = src.videos()
    seqs = {v: list(src.frames(v)) for v in videos}  # decoded once: the producers only pace and push
    rows, equal = [], {}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, object_store_memory=768 * 2**20,
             _temp_dir=tempfile.mkdtemp(prefix="vcr", dir="/tmp"))
    try:
        rcorpus = tmp / "streams_ray"
        run_ray(cfg, corpus, rcorpus, progress=False)
        equal["ray corpus == local"] = labels_equal(local, rcorpus)
        for n in counts:
            for inflight in STREAM_INFLIGHT:
                out = tmp / f"streams{n}_{inflight}"
                service = StreamService(with_overrides(cfg, stream={"max_frames_in_flight": inflight}), cents, out,
                                        engine="ray")

                summary = feed_streams(service, {v: seqs[v] for v in videos[:n]}, fps)
                if summary["failed"]:
                    raise RuntimeError(f"streams failed: {summary['failed']}")
                for vid in videos[:n]:
                    s = summary["streams"][vid]
                    rows.append((n, inflight, vid, s["latency_p50_s"] * fps, s["latency_p95_s"] * fps,
                                 s["processing_p50_s"], os.getloadavg()[0]))
                if n == len(videos):
                    equal[f"ray streaming ({n} streams, {inflight} in flight) == local"] = labels_equal(local, out)
    finally:
        ray.shutdown()
    return rows, equal


def print_streams(rows: list[tuple], equal: dict, fps: float, frames: int) -> None:
    print(f"\n5. Ray streaming engine, concurrent SynthDrive sources of {frames} frames at 256x512, {fps:g} frames/s "
          "each, default cues (latency = arrival -> first label, in frame periods; exact mode: 2 periods + "
          "processing); in flight: stream.max_frames_in_flight (1 = baseline, one frame at a time)")
    print("| streams | in flight | stream | p50 periods | p95 periods | p95 vs in flight 1 | processing p50 s | load |")
    print("|---|---|---|---|---|---|---|---|")
    base = {(n, vid): p95 for n, k, vid, _, p95, _, _ in rows if k == 1}
    for n, k, vid, p50, p95, proc, load in rows:
        ratio = p95 / base[(n, vid)] if base.get((n, vid)) else float("nan")
        print(f"| {n} | {k} | {vid} | {p50:.2f} | {p95:.2f} | {ratio:.2f} | {proc:.3f} | {load:.1f} |")
    for k, v in equal.items():
        print(f"shards bit-identical, {k}: {v}")


def main() -> None:
    if "--driver-worker" in sys.argv:
        import json

        print(json.dumps(driver_worker(json.loads(sys.argv[sys.argv.index("--driver-worker") + 1]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames and videos (a few minutes on 2 cores)")
    ap.add_argument("--fps", type=float, default=5.0, help="streaming input rate, frames/s")
    ap.add_argument("--only-stream", action="store_true", help="run only part 3 (streaming)")
    ap.add_argument("--driver-cpu", action="store_true", help="run only part 4 (driver CPU per frame)")
    ap.add_argument("--baseline-code", help="part 4: a tree whose engine is the baseline (e.g. /work/main)")
    ap.add_argument("--streams", action="store_true", help="run only part 5 (concurrent streams)")
    ap.add_argument("--code", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver_cpu or args.streams:
        tmp = Path(tempfile.mkdtemp(prefix="bench_ray"))
        print(f"machine: {os.cpu_count()} logical CPUs, no GPU use; load average before: {os.getloadavg()}")
        if args.driver_cpu:
            trees = {"this": str(ROOT)} | ({"baseline": args.baseline_code} if args.baseline_code else {})
            rows = bench_driver_cpu(tmp, trees, 8 if args.quick else 32, 2)
            print_driver_cpu(rows, "baseline" if args.baseline_code else "this")
        if args.streams:
            frames = 10 if args.quick else 20
            rows, equal = bench_streams(tmp, args.fps, frames, (1, 2, 4))
            print_streams(rows, equal, args.fps, frames)
        print(f"\nload average after: {os.getloadavg()}")
        shutil.rmtree(tmp, ignore_errors=True)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray"))
    seqs, frames = (2, 8) if args.quick else (4, 20)
    mem_small, mem_large = (3, 12) if args.quick else (10, 100)
    print(f"machine: {os.cpu_count()} logical CPUs, no GPU use; load average before: {os.getloadavg()}")

    if not args.only_stream:
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

    s = bench_stream(tmp, args.fps, 12 if args.quick else 40, 1 if args.quick else 3)
    print_stream(s, args.fps)
    print(f"\nload average after: {os.getloadavg()}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
