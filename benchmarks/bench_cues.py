"""Quality and speed of the cue estimators on SynthDrive val, plus overlays on real KITTI-STEP.

    .venv/bin/python benchmarks/bench_cues.py [--quick]

SynthDrive val: seeds 7xx (tests use seeds < 100), 256x512. Prints, with the load average:
(``+contact``: the optional ground-contact motion cue, ``DepthConfig.contact_ratio``)
- flow: EPE and Fl-all on non-occluded pixels, per DIS preset, against zero flow (baseline);
- depth: AbsRel and delta<1.25 on static and moving pixels, and motion-mask IoU, for the
  geometry backend on DIS flow and on oracle flow, against the flat-ground prior (baseline);
- features: mIoU of cosine k-means(27) after Hungarian matching (leftover clusters, and Hungarian
  pairs with zero overlap, to their majority class, as ``metrics.matching`` does; ``strict``: the
  older count that keeps zero-overlap pairs, so clusters matched to absent classes are lost),
  handmade descriptor against colour-only (baseline), on SynthDrive and on KITTI-STEP 0001;
- frames per second of each default and of all three together.
Overlays of every default on /work/shared/data/kitti_step_0001 go to runs/bench_cues/.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from videocups_ray.config import DepthConfig, FeatureConfig, FlowConfig, SynthConfig
from videocups_ray.cues import build_depth, build_features, build_flow
from videocups_ray.cues.base import FlowResult
from videocups_ray.data.synthdrive import generate_sequence

KITTI = Path("/work/shared/data/kitti_step_0001")
OUT = Path("runs/bench_cues")
NUM_CLASSES = 19


# --------------------------------------------------------------------------- metrics
def flow_errors(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> tuple[float, float, int]:
    """(sum of EPE, count of Fl outliers, pixels) over ``valid``; Fl: EPE > 3 px and > 5 % of |gt|."""
    epe = np.linalg.norm(pred - gt, axis=-1)[valid]
    mag = np.linalg.norm(gt, axis=-1)[valid]
    return float(epe.sum()), float(((epe > 3) & (epe > 0.05 * mag)).sum()), int(valid.sum())


def depth_errors(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> tuple[float, float, int]:
    """(sum of |p-g|/g, count of max(p/g, g/p) < 1.25, pixels) over ``mask`` & valid gt."""
    m = mask & np.isfinite(gt) & (gt > 0) & (gt < 80)
    p, g = pred[m], gt[m]
    ratio = np.maximum(p / g, g / p)
    return float((np.abs(p - g) / g).sum()), float((ratio < 1.25).sum()), int(m.sum())


def cosine_kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    """Centroids (k x C) of spherical k-means on rows of ``x`` (L2-normalised)."""
    cent = x[rng.choice(len(x), k, replace=False)]
    for _ in range(iters):
        assign = np.argmax(x @ cent.T, axis=1)
        for j in range(k):
            sel = x[assign == j]
            if len(sel):
                c = sel.sum(0)
                cent[j] = c / max(np.linalg.norm(c), 1e-9)
            else:
                cent[j] = x[rng.integers(len(x))]
    return cent


def matched_miou(pred: np.ndarray, gt: np.ndarray, k: int, strict: bool = False) -> float:
    """Hungarian cluster->class matching on the confusion matrix, leftovers to their majority.

    A Hungarian pair with zero overlap (a cluster given to a class absent from ``gt``) is no
    evidence and goes to majority too, as in ``metrics.matching``; ``strict`` keeps such pairs,
    which throws away whichever clusters the solver's tie-breaking hands to absent classes.
    """
    ok = gt < NUM_CLASSES
    conf = np.bincount(pred[ok] * NUM_CLASSES + gt[ok], minlength=k * NUM_CLASSES).reshape(k, NUM_CLASSES)
    rows, cols = linear_sum_assignment(-conf)
    if not strict:
        keep = conf[rows, cols] > 0
        rows, cols = rows[keep], cols[keep]
    mapping = np.argmax(conf, axis=1)
    mapping[rows] = cols
    mapped = mapping[pred[ok]]
    g = gt[ok]
    ious = []
    for c in np.unique(g):
        inter = np.sum((mapped == c) & (g == c))
        union = np.sum((mapped == c) | (g == c))
        ious.append(inter / union)
    return float(np.mean(ious))


# --------------------------------------------------------------------------- runs
def val_sequences(quick: bool) -> list[list]:
    cfg = SynthConfig(seed=7, sequences=1 if quick else 3, frames=8 if quick else 16)
    return [list(generate_sequence(cfg, s)) for s in range(cfg.sequences)]


def bench_flow(seqs: list[list]) -> dict:
    rows = {}
    for preset in ("ultrafast", "fast", "medium"):
        est = build_flow(FlowConfig(dis_preset=preset))
        est.setup("cpu")
        s_epe = s_fl = n = 0.0
        z_epe = z_fl = 0.0
        t = 0.0
        pairs = 0
        for seq in seqs:
            for a, b in zip(seq[:-1], seq[1:]):
                t0 = time.perf_counter()
                fr = est([a], [b])
                t += time.perf_counter() - t0
                pairs += 1
                e, f, c = flow_errors(fr.fw[0], a.flow, a.flow_valid)
                ze, zf, _ = flow_errors(np.zeros_like(a.flow), a.flow, a.flow_valid)
                s_epe, s_fl, n, z_epe, z_fl = s_epe + e, s_fl + f, n + c, z_epe + ze, z_fl + zf
        rows[preset] = dict(epe=s_epe / n, fl=100 * s_fl / n, zero_epe=z_epe / n, zero_fl=100 * z_fl / n,
                            ms=1000 * t / pairs)
    return rows


def bench_depth(seqs: list[list], flow_backend: str, depth_cfg: DepthConfig | None = None) -> dict:
    flow = build_flow(FlowConfig(backend=flow_backend))
    flow.setup("cpu")
    est = build_depth(depth_cfg or DepthConfig())
    est.setup("cpu")
    acc = np.zeros((4, 3))  # static, moving, prior static, prior moving: (absrel sum, delta sum, n)
    inter = union = 0
    base_inter = base_union = 0
    t = 0.0
    frames = 0
    for seq in seqs:
        est.reset()
        for a, b in zip(seq[:-1], seq[1:]):
            fr = flow([a], [b])
            t0 = time.perf_counter()
            dr = est([a], [b], fr)
            t += time.perf_counter() - t0
            frames += 1
            motion = a.extra["motion"].astype(bool)
            K = a.extra["K"]
            h, w = a.shape
            v = np.arange(h, dtype=np.float64)[:, None] - K[1, 2]
            prior = np.where(v > 1, K[1, 1] * 1.65 / np.maximum(v, 1), 80.0) * np.ones((1, w))
            for j, (pred, m) in enumerate([(dr.depth[0], ~motion), (dr.depth[0], motion),
                                           (prior, ~motion), (prior, motion)]):
                acc[j] += depth_errors(pred, a.depth, m)
            pm = dr.motion_prob[0] > 0.5
            inter += np.sum(pm & motion)
            union += np.sum(pm | motion)
            fm = np.linalg.norm(fr.fw[0], axis=-1) > np.median(np.linalg.norm(fr.fw[0], axis=-1)) * 2
            base_inter += np.sum(fm & motion)
            base_union += np.sum(fm | motion)
    r = acc[:, :2] / np.maximum(acc[:, 2:3], 1)
    return dict(absrel_static=r[0, 0], d125_static=r[0, 1], absrel_moving=r[1, 0], d125_moving=r[1, 1],
                prior_static=r[2, 0], prior_moving=r[3, 0], iou=inter / max(union, 1),
                base_iou=base_inter / max(base_union, 1), ms=1000 * t / frames)


def bench_features(seqs: list[list], quick: bool) -> dict:
    flow = build_flow(FlowConfig())
    flow.setup("cpu")
    depth = build_depth(DepthConfig())
    depth.setup("cpu")
    est = build_features(FeatureConfig())
    est.setup("cpu")
    rng = np.random.default_rng(0)
    feats: dict[str, list] = {"high": [], "low": [], "colour": [], "oracle_depth": []}
    gts = []
    t = 0.0
    frames = 0
    for seq in seqs:
        depth.reset()
        for a, b in zip(seq[:-1], seq[1:]):
            dr = depth([a], [b], flow([a], [b]))
            t0 = time.perf_counter()
            fe = est([a], depth=dr.depth, K=a.extra["K"])
            t += time.perf_counter() - t0
            frames += 1
            feats["high"].append(fe.high[0])
            feats["low"].append(fe.low[0])
            feats["colour"].append(fe.high[0][:3] / np.maximum(np.linalg.norm(fe.high[0][:3], axis=0), 1e-6))
            gd = np.where(a.depth > 0, a.depth, 0).astype(np.float32)[None]
            feats["oracle_depth"].append(est([a], depth=gd, K=a.extra["K"]).high[0])
            hh, ww = fe.high.shape[2:]
            gts.append(cv2.resize(a.semantic, (ww, hh), interpolation=cv2.INTER_NEAREST))
    gt = np.stack(gts).reshape(-1)
    out = {"ms": 1000 * t / frames}
    for name, fl in feats.items():
        x = np.stack(fl).transpose(0, 2, 3, 1).reshape(-1, fl[0].shape[0]).astype(np.float32)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
        sample = x[rng.choice(len(x), min(len(x), 20000), replace=False)]
        cent = cosine_kmeans(sample, 27, 10 if quick else 25, rng)
        pred = np.argmax(x @ cent.T, axis=1)
        out[name] = matched_miou(pred, gt, 27)
        out[name + "_strict"] = matched_miou(pred, gt, 27, strict=True)
    return out


def features_miou(feats: np.ndarray, sem: np.ndarray, quick: bool) -> float:
    """Matched k-means(27) mIoU of ``N x C x h x w`` features against ``N x H x W`` train IDs."""
    hh, ww = feats.shape[2:]
    gt = np.stack([cv2.resize(s, (ww, hh), interpolation=cv2.INTER_NEAREST) for s in sem]).reshape(-1)
    x = feats.transpose(0, 2, 3, 1).reshape(-1, feats.shape[1]).astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
    rng = np.random.default_rng(0)
    cent = cosine_kmeans(x[rng.choice(len(x), min(len(x), 20000), replace=False)], 27, 10 if quick else 25, rng)
    return matched_miou(np.argmax(x @ cent.T, axis=1), gt, 27)


# --------------------------------------------------------------------------- KITTI overlays
def flow_to_rgb(flow: np.ndarray) -> np.ndarray:
    mag, ang = cv2.cartToPolar(flow[..., 0], flow[..., 1])
    hsv = np.zeros((*flow.shape[:2], 3), np.uint8)
    hsv[..., 0] = (ang * 90 / np.pi).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag * 255 / max(np.percentile(mag, 99), 1e-3), 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def colormap(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    u8 = np.clip((x - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(u8, cv2.COLORMAP_TURBO)[..., ::-1]


def kitti_overlays(quick: bool) -> tuple[int, float, float, float]:
    names = sorted((KITTI / "images").glob("*.png"))
    imgs = np.stack([cv2.imread(str(p))[..., ::-1] for p in names])
    h, w = imgs.shape[1:3]
    K = np.array([[721.5, 0, (w - 1) / 2], [0, 721.5, (h - 1) / 2], [0, 0, 1.0]])
    flow, depth, feats = build_flow(FlowConfig()), build_depth(DepthConfig()), build_features(FeatureConfig())
    for e in (flow, depth, feats):
        e.setup("cpu")
    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fr = flow(imgs[:-1], imgs[1:])
    dr = depth(imgs[:-1], None, fr, K)
    fe = feats(imgs[:-1], depth=dr.depth, K=K)
    dt = time.perf_counter() - t0
    x = fe.high.transpose(0, 2, 3, 1).reshape(-1, fe.high.shape[1])
    _, _, vt = np.linalg.svd(x[:: max(1, len(x) // 20000)] - x.mean(0), full_matrices=False)
    proj = (x - x.mean(0)) @ vt[:3].T
    proj = (proj - proj.min(0)) / np.maximum(np.ptp(proj, 0), 1e-6)
    pca = (proj.reshape(*fe.high.shape[:1], *fe.high.shape[2:], 3) * 255).astype(np.uint8)
    for i in range(len(fr)):
        occ = fr.occlusion[i][..., None]
        panels = [
            imgs[i],
            np.where(occ, 0, flow_to_rgb(fr.fw[i])).astype(np.uint8),
            colormap(np.log(dr.depth[i]), np.log(2.0), np.log(80.0)),
            (0.5 * imgs[i] + 0.5 * colormap(dr.motion_prob[i], 0, 1)).astype(np.uint8),
            cv2.resize(pca[i], (w, h), interpolation=cv2.INTER_NEAREST),
        ]
        cv2.imwrite(str(OUT / f"kitti_{i:02d}.png"), np.concatenate(panels, axis=0)[..., ::-1])
    sem = np.stack([cv2.imread(str(KITTI / "panoptic" / p.name))[..., 2] for p in names[:-1]])  # R = train ID
    return len(fr), dt, features_miou(fe.high, sem, quick), features_miou(fe.low, sem, quick)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short sequence")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    seqs = val_sequences(args.quick)
    print(f"SynthDrive val: {len(seqs)} x {len(seqs[0])} frames at 256x512; load {os.getloadavg()}")

    fl = bench_flow(seqs)
    print("\nflow (non-occluded px)  EPE px  Fl-all %  ms/pair(fw+bw+occ)  EPE vs zero-flow  ms vs medium")
    for k, r in fl.items():
        print(f"  dis {k:<18} {r['epe']:6.2f}  {r['fl']:7.1f}  {r['ms']:8.1f}           "
              f"{r['epe'] / r['zero_epe']:6.3f}          {r['ms'] / fl['medium']['ms']:5.2f}")
    print(f"  zero flow (baseline)   {fl['medium']['zero_epe']:6.2f}  {fl['medium']['zero_fl']:7.1f}")

    print("\ndepth+motion           AbsRel st  d<1.25 st  AbsRel mov  d<1.25 mov  motion IoU  ms/frame")
    depth_runs = {}
    for fb, contact in (("dis", None), ("dis", 1.4), ("oracle", 1.4), ("oracle", None)):
        d = depth_runs[(fb, contact)] = bench_depth(seqs, fb, DepthConfig(contact_ratio=contact))
        name = fb + ("+contact" if contact else "")
        print(f"  geometry on {name:<9} {d['absrel_static']:9.3f}  {d['d125_static']:9.3f}  {d['absrel_moving']:10.3f}"
              f"  {d['d125_moving']:10.3f}  {d['iou']:10.3f}  {d['ms']:8.1f}")
    print(f"  flat-ground prior      {d['prior_static']:9.3f}             {d['prior_moving']:10.3f}"
          f"              {d['base_iou']:10.3f}  (baseline; IoU: |flow| > 2x median)")
    # the defaults' depth stage: geometry on DIS flow, no contact cue (DepthConfig() / FlowConfig())
    default_key = (FlowConfig().backend, DepthConfig().contact_ratio)
    depth_ms = depth_runs[default_key]["ms"]

    f = bench_features(seqs, args.quick)
    print("\nfeatures k-means(27) matched mIoU: handmade high {:.3f}, low {:.3f}, with oracle depth {:.3f};"
          " colour-only baseline {:.3f} (ratio {:.2f}); {:.1f} ms/frame".format(
              f["high"], f["low"], f["oracle_depth"], f["colour"], f["high"] / f["colour"], f["ms"]))
    print("  strict count (zero-overlap pairs kept): high {:.3f}, low {:.3f}, oracle depth {:.3f}, colour {:.3f}".format(
        f["high_strict"], f["low_strict"], f["oracle_depth_strict"], f["colour_strict"]))

    total = fl["medium"]["ms"] + depth_ms + f["ms"]
    print(f"\nfps (256x512, 2 cores): flow {1000 / fl['medium']['ms']:.1f}, depth {1000 / depth_ms:.1f}, "
          f"features {1000 / f['ms']:.1f}; all three defaults {1000 / total:.1f} frames/s; load {os.getloadavg()}")

    n, dt, k_high, k_low = kitti_overlays(args.quick)
    print(f"KITTI-STEP 0001 (1242x375): {n} frames through all defaults in {dt:.1f} s "
          f"({n / dt:.2f} frames/s); features matched mIoU high {k_high:.3f}, low {k_low:.3f}; "
          f"overlays in {OUT}/kitti_*.png")


if __name__ == "__main__":
    main()
