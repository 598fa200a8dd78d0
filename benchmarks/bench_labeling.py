"""Throughput of the labeling step alone (cues given): proposals + semantics + tracking.

Synthetic cues at 256x512 (moving boxes with exact flow, a depth ramp, 17-channel features at
stride 4, the handmade backend's size; ``--channels 384`` for a DINO ViT-S). Prints per-stage
milliseconds and frames/s for the Numba kernels, and the same pipeline on the plain-numpy
reference kernels as the baseline measured in the same run. Target: >= 15 frames/s on 2 cores.

    .venv/bin/python benchmarks/bench_labeling.py [--quick] [--frames N] [--channels C]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import numpy as np

from videocups_ray.config import FeatureConfig
from videocups_ray.cues.features import descriptor_channels
from videocups_ray import kernels
from videocups_ray.config import LabelingConfig
from videocups_ray.kernels import reference
from videocups_ray.labeling import FrameCues, SemanticLabeler, VideoTracker, propose_frame
from videocups_ray.labeling.semantics import init_centroids

H, W = 256, 512


def make_cues(n: int, channels: int, seed: int = 0) -> list[FrameCues]:
    rng = np.random.default_rng(seed)
    boxes = [(rng.integers(60, 200), rng.integers(0, 400), rng.integers(20, 60), rng.integers(20, 90),
              rng.integers(-8, 9), rng.uniform(5, 40)) for _ in range(6)]
    yy = np.arange(H, dtype=np.float32)[:, None]
    ground = np.broadcast_to(np.clip(1.65 * 300 / np.maximum(yy - 100, 1), 2, 80), (H, W))
    stride = 4
    proto = rng.normal(size=(27, channels)).astype(np.float32)
    frames = []
    owns, flows = [], []
    for t in range(n + 1):
        own = np.zeros((H, W), np.int32)
        flow = np.zeros((H, W, 2), np.float32)
        for i, (y, x, h, w, vx, _) in enumerate(boxes):
            x0 = int(x + vx * t) % (W - w)
            own[y:y + h, x0:x0 + w] = i + 1
            flow[y:y + h, x0:x0 + w] = (vx, 0.0)
        owns.append(own)
        flows.append(flow)
    for t in range(n):
        own = owns[t]
        depth = ground.astype(np.float32).copy()
        motion = (own > 0).astype(np.float32) * 0.9
        for i, b in enumerate(boxes):
            depth[own == i + 1] = b[5]
        bw = -flows[t] if t > 0 else None
        fw = flows[t]
        occ_fw = kernels.occlusion_mask(fw, -flows[t + 1])
        occ_bw = kernels.occlusion_mask(bw, flows[t - 1]) if t > 0 else None
        cls = (yy // 40).astype(np.int64) + (own // 2) * 3
        cls = np.broadcast_to(cls, (H, W))[::stride, ::stride] % 27
        feats = proto[cls].transpose(2, 0, 1) + 0.5 * rng.normal(size=(channels, H // stride, W // stride)).astype(np.float32)
        feats /= np.linalg.norm(feats, axis=0, keepdims=True)
        frames.append(FrameCues("bench", t, depth, motion, fw, bw, occ_fw, occ_bw, feats, feats.copy()))
    return frames


@contextlib.contextmanager
def reference_kernels():
    """Swap the dispatchers for the plain numpy/scipy reference implementations."""
    saved = {k: getattr(kernels, k) for k in ("region_grow", "warp_labels", "iou_matrix", "majority_vote3")}
    kernels.region_grow = lambda d, f, m, **kw: reference.region_grow(d, f, m, **kw)
    kernels.warp_labels = lambda lab, f, occ=None, *, fill=0: reference.warp_labels(lab, f, occ, fill)
    kernels.iou_matrix = lambda a, b, valid=None: reference.iou_matrix(a, b, valid)
    kernels.majority_vote3 = lambda p, c, n, ignore=255: reference.majority_vote3(p, c, n, ignore)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(kernels, k, v)


def run(cues: list[FrameCues], cfg: LabelingConfig, labeler: SemanticLabeler) -> dict[str, float]:
    t_prop = t_track = 0.0
    tracker = VideoTracker(cfg, emit="online")
    emitted = 0
    for c in cues:
        t0 = time.perf_counter()
        p = propose_frame(c, cfg, labeler)
        t1 = time.perf_counter()
        emitted += len(tracker.push(p))
        t_track += time.perf_counter() - t1
        t_prop += t1 - t0
    t0 = time.perf_counter()
    emitted += len(tracker.flush())
    t_track += time.perf_counter() - t0
    n = len(cues)
    return {"proposals_ms": 1e3 * t_prop / n, "tracker_ms": 1e3 * t_track / n,
            "fps": n / (t_prop + t_track), "emitted": emitted}


def stage_times(cues: list[FrameCues], cfg: LabelingConfig, labeler: SemanticLabeler) -> dict[str, float]:
    from videocups_ray.labeling.instances import propose_instances

    n = len(cues)
    t0 = time.perf_counter()
    for c in cues:
        propose_instances(c.depth, c.flow_fw, c.motion_prob, cfg)
    t1 = time.perf_counter()
    for c in cues:
        labeler(c.features_high, c.features_low, c.depth)
    t2 = time.perf_counter()
    return {"region_grow_ms": 1e3 * (t1 - t0) / n, "semantics_ms": 1e3 * (t2 - t1) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 frames, one repeat")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--channels", type=int, default=descriptor_channels(FeatureConfig().context_sigmas),
                    help="feature channels (default: the hand-made descriptor's)")
    args = ap.parse_args()
    n = 10 if args.quick else args.frames
    cfg = LabelingConfig(clip_length=30)
    cues = make_cues(n, args.channels)
    sample = np.concatenate([c.features_high.reshape(args.channels, -1).T[::37] for c in cues])
    labeler = SemanticLabeler(init_centroids(sample, cfg.num_clusters, seed=0), cfg)
    run(cues[:3], cfg, labeler)  # warm-up: Numba compile / cache load
    fast = run(cues, cfg, labeler)
    stages = stage_times(cues, cfg, labeler)
    with reference_kernels():
        base = run(cues[: max(3, n // 4)], cfg, labeler)
    print(f"labeling step at {H}x{W}, {n} frames, {args.channels}-channel features, "
          f"cpu_count={os.cpu_count()}, loadavg={tuple(round(x, 2) for x in os.getloadavg())}")
    print(f"{'variant':<28}{'proposals ms':>14}{'tracker ms':>12}{'frames/s':>10}{'ratio':>8}")
    for name, r in (("reference kernels (base)", base), ("numba kernels", fast)):
        print(f"{name:<28}{r['proposals_ms']:>14.1f}{r['tracker_ms']:>12.1f}{r['fps']:>10.1f}"
              f"{r['fps'] / base['fps']:>8.2f}")
    print(f"stages (numba): region_grow {stages['region_grow_ms']:.1f} ms, "
          f"semantics {stages['semantics_ms']:.1f} ms per frame")
    print(f"target 15 frames/s: {'met' if fast['fps'] >= 15 else 'NOT met'} ({fast['fps'] / 15:.2f}x)")


if __name__ == "__main__":
    main()
