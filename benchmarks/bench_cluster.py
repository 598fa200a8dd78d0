"""The Ray engine on a simulated multi-node cluster: replica and node scaling, streams, mixed nodes.

    python benchmarks/bench_cluster.py [--quick] [--nodes 1,2,4] [--replicas 1,2,4,8,16]

Real Ray nodes on this machine (``pipelines/sim_cluster.py``: one raylet, object store and
worker pool per node, fake GPUs) and the ``simulated`` cue backend (``cues/simulated.py``:
``cost_ms`` slept per frame pair / frame, SynthDrive's oracle cues). **Orchestration only**:
these numbers say nothing about labeling quality or about real GPU kernels.

1. Corpus throughput (pass 2, centroids given) with R = 1, 2, 4, 8, 16 cue replicas (R flow,
   R depth and R feature actors, R streams in flight) over 1, 2 and 4 nodes sharing 16 fake
   GPUs; ideal = R x 1000 / cost_ms frames/s (every stage costs ``cost_ms`` per frame, R
   replicas each), efficiency = frames/s / ideal. Same run: driver CPU per frame
   (``time.process_time`` of this process minus the sampler thread), writer rows/s (rows
   committed / labelling seconds), object-store peak and spilled bytes (Ray's node stats,
   sampled at 4 Hz), per-stage utilisation (busy seconds / wall / replicas), and the share of
   the host's CPU time spent outside niced processes (``/proc/stat``: near 100 % means this
   2-core host, not the design, is the limit).
2. Streaming: 8 concurrent live sources at 10 frames/s on 4 nodes, 8 cue replicas; latency
   (arrival -> first label) p50/p95 per stream, in frame periods.
3. Heterogeneous cluster: one node type with 4 fake GPUs of 80 GB, one with 1 GPU of 24 GB;
   cue actors request resources that fit both; where the actors landed and the throughput.

The corpus is rendered to disk once (SynthDrive 64x128), so readers decode PNGs instead of
rendering scenes. Machine, load average and the host's CPU share are printed with every row.
"""

from __future__ import annotations

import argparse
import json
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
# Ray starts its worker processes at niceness 15 (so raylets stay responsive); on a shared machine
# the workers then compete with every other job's niced processes and the run measures the
# neighbours. A measurement runs all of its processes at the driver's priority.
os.environ.setdefault("RAY_worker_niceness", "0")

from videocups_ray.config import Config, with_overrides  # noqa: E402
from videocups_ray.data.inputs import MemorySource, synth_source  # noqa: E402
from videocups_ray.pipelines.pseudolabel import run_local  # noqa: E402
from videocups_ray.pipelines.ray_pseudolabel import run_ray  # noqa: E402
from videocups_ray.pipelines.sim_cluster import NodeSpec, SimCluster  # noqa: E402

HEIGHT, WIDTH = 64, 128
TOTAL_GPUS = 16  # fake GPUs of the cluster, split over its nodes
CUE_KINDS = ("flow", "depth", "features")
NODE_TYPE_LABEL = "videocups.io/node-type"


# --------------------------------------------------------------------------- measurement helpers
def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    mem = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))) / 2**20
    return f"{os.cpu_count()} logical CPUs ({model}), {mem:.0f} GiB, no GPU"


def cpu_jiffies() -> tuple[int, int]:
    """(user + system + irq time of processes at normal priority, total) from /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return user + system + irq + softirq, user + nice + system + idle + iowait + irq + softirq + steal


class Sampler:
    """Samples a simulated cluster while a job runs, in a thread whose own CPU time is measured
    so the driver figure excludes it:

    - object store: allocated pages of each node's plasma file (``/proc/<raylet>/map_files``;
      tmpfs allocates a page when an object first touches it and the store reuses freed space, so
      this is the store's high-water mark on that cluster so far), summed over nodes;
    - spilled: bytes in Ray's spill files under the cluster's temp folder (the largest seen);
    - actors by class and node type, and when the first tracker actor came alive (pass 2 starts
      right after: the driver CPU of pass 2 is measured from then).

    (Ray's own ``ray memory`` / state API need ``ray[default]`` (grpcio, the dashboard), which the
    test install leaves out; these read the same facts from the operating system and the GCS.)
    """

    def __init__(self, cluster: SimCluster, period_s: float = 0.25):
        self.cluster, self.period_s = cluster, period_s
        self.store_hwm = self.spilled = 0
        self.placement: dict[tuple[str, str], int] = {}
        self.pass2_cpu: float | None = None  # process_time when the first tracker came alive
        self.thread_cpu_from_pass2 = 0.0
        self._raylets = [p for p in cluster.pids() if b"/raylet" in _cmdline(p).split(b"\0")[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from ray._private import state

        t_mark, t_count = 0.0, float("inf")
        while not self._stop.wait(self.period_s):
            self.store_hwm = max(self.store_hwm, sum(_plasma_bytes(p) for p in self._raylets))
            self.spilled = max(self.spilled, _spilled_bytes(self.cluster.temp_dir))
            if self.pass2_cpu is None:
                if any(a["State"] == "ALIVE" and a["ActorClassName"] == "TrackerActor"
                       for a in state.actors().values()):
                    self.pass2_cpu, t_mark = time.process_time(), time.thread_time()
                    t_count = time.monotonic() + 1.0  # every tracker is up by then
            elif time.monotonic() > t_count:
                self._count([a for a in state.actors().values() if a["State"] == "ALIVE"])
                t_count = float("inf")
        self.thread_cpu_from_pass2 = time.thread_time() - t_mark if self.pass2_cpu is not None else 0.0

    def _count(self, actors: list[dict]) -> None:
        import ray

        types = {n["NodeID"]: n.get("Labels", {}).get(NODE_TYPE_LABEL, "?") for n in ray.nodes()}
        for a in actors:
            key = (a["ActorClassName"], types.get(a["Address"]["NodeID"], "?"))
            self.placement[key] = self.placement.get(key, 0) + 1

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _plasma_bytes(pid: int) -> int:
    """Allocated bytes of the plasma store file(s) process ``pid`` maps (0 if it is gone)."""
    seen: dict[tuple[int, int], int] = {}
    try:
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and "plasma" in parts[5]:
                st = os.stat(f"/proc/{pid}/map_files/{parts[0]}")
                seen[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    except OSError:
        return 0
    return sum(seen.values())


def _spilled_bytes(temp_dir: str) -> int:
    total = 0
    for path in Path(temp_dir).glob("session_*/ray_spilled_objects*/**/*"):
        try:
            total += path.stat().st_size if path.is_file() else 0
        except OSError:
            continue
    return total


def sim_config(replicas: int, cost_ms: float, gpus_per_actor: float, *, videos_in_flight: int) -> Config:
    cues = {k: {"backend": "simulated", "cost_ms": cost_ms, "device": "cuda"} for k in CUE_KINDS}
    res = {"replicas": replicas, "num_cpus": 0.1, "num_gpus": gpus_per_actor}
    ray_cfg = {k: res for k in CUE_KINDS} | {
        "max_videos_in_flight": videos_in_flight, "max_frames_in_flight": 24,  # 6 batches of 4 per stream
        "reader": {"replicas": 2, "num_cpus": 0.1}, "writer": {"replicas": 2, "num_cpus": 0.1},
        "tracker": {"num_cpus": 0.1}}
    return with_overrides(Config(), cues=cues, ray=ray_cfg,
                          synth={"height": HEIGHT, "width": WIDTH, "seed": 7},
                          labeling={"num_clusters": 8, "kmeans_frames_per_video": 2})


def subset(corpus: MemorySource, n: int) -> MemorySource:
    """The first ``n`` videos of ``corpus``."""
    return MemorySource([f for v in corpus.videos()[:n] for f in corpus.frames(v)])


def gpu_cluster(n_nodes: int) -> SimCluster:
    """``n_nodes`` worker nodes sharing :data:`TOTAL_GPUS` fake GPUs; the head holds the in-memory
    corpus (``ray.put`` by the driver), so its object store is the larger one."""
    spec = NodeSpec("gpu", count=n_nodes, cpus=max(8, 32 // n_nodes), gpus=TOTAL_GPUS // n_nodes, object_store_mb=256)
    return SimCluster([spec], head_cpus=2, head_object_store_mb=768)


def measured_run(cfg: Config, corpus: MemorySource, out: Path, centroids: Path, cluster: SimCluster) -> dict:
    """``run_ray`` on the connected cluster, pass 2 only (centroids given), measured around it.

    Driver CPU counts from the moment the first tracker actor is alive (the start of pass 2) to
    the end of the run, less the sampler thread's own CPU; the summary and the shard commit are in.
    """
    out.mkdir(parents=True)
    np.save(out / "centroids.npy", np.load(centroids))
    shutil.copy(centroids.parent / "centroids.json", out / "centroids.json")
    counts = {v: corpus.num_frames(v) for v in corpus.videos()}
    (out / "centroids.json").write_text(json.dumps({"videos": counts}))  # the fit record of this corpus
    cfg = with_overrides(cfg, ray={"address": cluster.address})
    j0 = cpu_jiffies()
    with Sampler(cluster) as sampler:
        r = run_ray(cfg, corpus, out, progress=False)
        c1 = time.process_time()
    j1 = cpu_jiffies()
    if sampler.pass2_cpu is None:
        raise RuntimeError("the sampler never saw a tracker actor: pass 2 did not run")
    cpu = c1 - sampler.pass2_cpu - sampler.thread_cpu_from_pass2
    label_s = r["frames"] / max(r["frames_per_s"], 1e-9)
    return {"frames": r["frames"], "written": r["written"], "duplicates": r["duplicates"],
            "fps": r["frames_per_s"], "driver_ms_per_frame": 1000 * cpu / max(r["frames"], 1),
            "writer_rows_per_s": r["written"] / max(label_s, 1e-9), "store_peak_mib": sampler.store_hwm / 2**20,
            "spilled_mib": sampler.spilled / 2**20, "util": r["utilisation"],
            "host_cpu": (j1[0] - j0[0]) / max(j1[1] - j0[1], 1), "load": os.getloadavg()[0],
            "placement": sampler.placement}


# --------------------------------------------------------------------------- 1. scaling
def scaling_points(nodes: list[int], replicas: list[int], full_grid: bool) -> dict[int, list[int]]:
    """Node count -> replica counts to run: every replica count on the most nodes and the most
    replicas on every node count, or (``full_grid``) the whole cross product. Each point starts
    4 x replicas + 4 actors, about 3 s of CPU each on this host, so the grid costs minutes."""
    if full_grid:
        return {n: sorted(replicas) for n in sorted(nodes)}
    return {n: sorted(replicas) if n == max(nodes) else [max(replicas)] for n in sorted(nodes)}


def bench_scaling(tmp: Path, corpus: MemorySource, centroids: Path, points: dict[int, list[int]],
                  cost_ms: float, frames: int) -> list[dict]:
    rows = []
    for n_nodes, replicas_list in points.items():
        cluster = gpu_cluster(n_nodes)
        try:
            cluster.start()
            cluster.connect()
            for r in replicas_list:
                if r > TOTAL_GPUS:
                    raise ValueError(f"{r} replicas need more than the cluster's {TOTAL_GPUS} fake GPUs")
                videos = max(2, r)
                cfg = sim_config(r, cost_ms, 0.33, videos_in_flight=videos)  # 3 cue actors share one fake GPU
                res = measured_run(cfg, subset(corpus, videos), tmp / f"o{n_nodes}_{r}",
                                   centroids, cluster)
                ideal = r * 1000.0 / cost_ms
                rows.append({"nodes": n_nodes, "replicas": r, "videos": videos, "ideal": ideal,
                             "efficiency": res["fps"] / ideal, **res})
                assert res["written"] == videos * frames and res["duplicates"] == 0, res  # every frame once
                print("  measured:", json.dumps({k: v for k, v in rows[-1].items() if k != "placement"}), flush=True)
        finally:
            cluster.shutdown()
    return rows


def print_scaling(rows: list[dict], cost_ms: float) -> None:
    print(f"\n1. corpus throughput, pass 2, SynthDrive {HEIGHT}x{WIDTH}, simulated cues cost_ms {cost_ms:g} "
          f"(flow, depth, features: R replicas each), {TOTAL_GPUS} fake GPUs over the nodes")
    base = min(rows, key=lambda r: (r["replicas"], -r["nodes"]))  # the baseline: fewest replicas, most nodes
    print(f"(vs base: frames/s over the {base['replicas']}-replica run on {base['nodes']} node(s) of this run)")
    print("| nodes | replicas | frames | frames/s | vs base | ideal | efficiency | driver CPU ms/frame | writer rows/s "
          "| store HWM MiB | spilled MiB | utilisation flow/depth/features/tracker | host CPU | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        u = r["util"]
        util = "/".join(f"{u.get(k, 0):.0%}" for k in (*CUE_KINDS, "tracker"))
        print(f"| {r['nodes']} | {r['replicas']} | {r['frames']} | {r['fps']:.1f} | {r['fps'] / base['fps']:.2f} "
              f"| {r['ideal']:.0f} | {r['efficiency']:.2f} | {r['driver_ms_per_frame']:.2f} | {r['writer_rows_per_s']:.1f} "
              f"| {r['store_peak_mib']:.1f} | {r['spilled_mib']:.1f} | {util} | {r['host_cpu']:.0%} | {r['load']:.1f} |")


# --------------------------------------------------------------------------- 2. streams
STREAM_INFLIGHT = (1, 4)  # stream.max_frames_in_flight: 1 = a stream's frames one after the other (baseline)


def bench_streams(corpus: MemorySource, centroids: Path, streams: int, fps: float, replicas: int, cost_ms: float,
                  n_nodes: int) -> list[tuple]:
    """The streams with ``stream.max_frames_in_flight`` 1 (baseline) and 4 (pipelined), on one cluster."""
    from videocups_ray.pipelines.stream_service import StreamService, feed_streams

    cfg = with_overrides(sim_config(replicas, cost_ms, 0.33, videos_in_flight=streams),
                         stream={"latency": "exact"})
    videos = corpus.videos()[:streams]
    seqs = {v: list(corpus.frames(v)) for v in videos}  # in memory: the producers only pace and push
    cents = np.load(centroids)
    cluster = gpu_cluster(n_nodes)
    rows = []
    try:
        cluster.start()
        cluster.connect()
        for inflight in STREAM_INFLIGHT:
            with tempfile.TemporaryDirectory(prefix="bench_cluster_streams") as out:
                scfg = with_overrides(cfg, ray={"address": cluster.address}, stream={"max_frames_in_flight": inflight})
                service = StreamService(scfg, cents, out, engine="ray")
                summary = feed_streams(service, {v: seqs[v] for v in videos}, fps)
            if summary["failed"]:
                raise RuntimeError(f"streams failed: {summary['failed']}")
            for vid in videos:
                s = summary["streams"][vid]
                rows.append((inflight, vid, s["latency_p50_s"] * fps, s["latency_p95_s"] * fps,
                             s["processing_p50_s"], s.get("dropped", 0), os.getloadavg()[0]))
    finally:
        cluster.shutdown()
    return rows


def print_streams(rows: list[tuple], streams: int, fps: float, replicas: int, n_nodes: int, frames: int) -> None:
    print(f"\n2. {streams} live streams at {fps:g} frames/s each ({frames} frames, {HEIGHT}x{WIDTH}), {n_nodes} nodes, "
          f"{replicas} cue replicas; latency = arrival -> first label (exact mode: waits for t+2, so >= 2 periods); "
          "in flight: stream.max_frames_in_flight (1 = baseline, one frame at a time)")
    print("| in flight | stream | p50 periods | p95 periods | p95 vs in flight 1 | processing p50 s | dropped | load |")
    print("|---|---|---|---|---|---|---|---|")
    base = {vid: p95 for k, vid, _, p95, *_ in rows if k == 1}
    for k, vid, p50, p95, proc, dropped, load in rows:
        ratio = p95 / base[vid] if base.get(vid) else float("nan")
        print(f"| {k} | {vid} | {p50:.2f} | {p95:.2f} | {ratio:.2f} | {proc:.3f} | {dropped} | {load:.1f} |")


# --------------------------------------------------------------------------- 3. heterogeneous
def bench_hetero(tmp: Path, corpus: MemorySource, centroids: Path, cost_ms: float, frames: int) -> dict:
    big, small = "gpu-4x80g", "gpu-1x24g"
    cluster = SimCluster([NodeSpec(big, count=1, cpus=16, gpus=4, gpu_memory_gb=4 * 80),
                          NodeSpec(small, count=2, cpus=8, gpus=1, gpu_memory_gb=24, object_store_mb=256)],
                         head_cpus=2, head_object_store_mb=768)
    replicas = 6  # 3 cue actors per fake GPU, 6 GPUs in all
    try:
        cluster.start()
        cluster.connect()
        cfg = sim_config(replicas, cost_ms, 0.33, videos_in_flight=replicas)
        # every cue actor also asks for 8 GB of GPU memory: both node types can host it
        cfg = with_overrides(cfg, ray={k: {"resources": {"gpu_memory_gb": 8}} for k in CUE_KINDS})
        res = measured_run(cfg, subset(corpus, replicas), tmp / "hetero_out", centroids, cluster)
    finally:
        cluster.shutdown()
    ideal = replicas * 1000.0 / cost_ms
    res.update(replicas=replicas, ideal=ideal, efficiency=res["fps"] / ideal, types={big: "1 x (4 GPU, 320 GB)",
                                                                                   small: "2 x (1 GPU, 24 GB)"})
    return res


def print_hetero(r: dict, cost_ms: float) -> None:
    print(f"\n3. heterogeneous cluster: {', '.join(f'{k} {v}' for k, v in r['types'].items())}; {r['replicas']} cue "
          f"replicas at 0.33 GPU, cost_ms {cost_ms:g}")
    print(f"frames/s {r['fps']:.1f} of ideal {r['ideal']:.0f} (efficiency {r['efficiency']:.2f}), driver CPU "
          f"{r['driver_ms_per_frame']:.2f} ms/frame, store HWM {r['store_peak_mib']:.1f} MiB, spilled "
          f"{r['spilled_mib']:.1f} MiB, host CPU {r['host_cpu']:.0%}, load {r['load']:.1f}")
    print("actors by node type (sampled 1 s into pass 2):")
    for (cls, ntype), n in sorted(r["placement"].items()):
        print(f"  {cls:<14}{ntype:<12}{n}")


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="nodes 1,4; replicas 1,4,16; 4 streams (a few minutes)")
    ap.add_argument("--nodes", default="1,2,4", help="simulated node counts")
    ap.add_argument("--replicas", default="1,2,4,8,16", help="cue replicas (each of flow, depth, features)")
    ap.add_argument("--full-grid", action="store_true",
                    help="every replica count on every node count (default: replicas swept on the most nodes, "
                         "nodes swept at the most replicas)")
    ap.add_argument("--cost-ms", type=float, default=50.0, help="simulated cue cost per frame, ms")
    ap.add_argument("--frames", type=int, default=40, help="frames per video (videos = max(2, replicas))")
    ap.add_argument("--streams", type=int, default=8, help="concurrent live sources")
    ap.add_argument("--fps", type=float, default=10.0, help="input rate per live source, frames/s")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: scaling,streams,hetero")
    args = ap.parse_args()
    nodes = [int(x) for x in ("1,4" if args.quick else args.nodes).split(",")]
    replicas = [int(x) for x in ("1,4,16" if args.quick else args.replicas).split(",")]
    streams = 4 if args.quick else args.streams
    skip = set(filter(None, args.skip.split(",")))
    print(f"machine: {machine()}; load average before: {os.getloadavg()}")
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_cluster"))
    try:
        n_videos = max(max(replicas), streams, 6)
        cfg = sim_config(1, 0.0, 0.0, videos_in_flight=1)
        # rendered once, in memory (the oracle cues need SynthDrive's backward flow, which the disk
        # export lacks); readers take frames from the object store instead of rendering them
        corpus = synth_source(cfg.synth.model_copy(update={"sequences": n_videos, "frames": args.frames}))
        local = tmp / "centroids"  # centroids of 2 videos (local engine, zero cost); pass 1 is not measured
        run_local(with_overrides(cfg, cues={k: {"device": "cpu"} for k in CUE_KINDS}), subset(corpus, 2),
                  local, progress=False)
        centroids = local / "centroids.npy"
        if "scaling" not in skip:
            rows = bench_scaling(tmp, corpus, centroids, scaling_points(nodes, replicas, args.full_grid),
                                 args.cost_ms, args.frames)
            print_scaling(rows, args.cost_ms)
        if "streams" not in skip:
            srows = bench_streams(corpus, centroids, streams, args.fps, streams, args.cost_ms, max(nodes))
            print_streams(srows, streams, args.fps, streams, max(nodes), args.frames)
        if "hetero" not in skip:
            print_hetero(bench_hetero(tmp, corpus, centroids, args.cost_ms, args.frames), args.cost_ms)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nwall {time.perf_counter() - t_start:.0f} s; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
