"""Pseudo-label quality: STQ / AQ / SQ (unsupervised matching) of the local engine's shards.

SynthDrive validation corpus at 256x512 (seed 7, not used by any tuning) with (a) oracle cues
(ground-truth flow, depth, independent motion) and (b) the default cues (DIS flow, geometry
depth + motion, handmade features), each with the paper's ablations (one step removed at a
time; delta against the full pipeline of the same cues, measured in the same run). Then the
real KITTI-STEP sample with default cues, with overlays under ``runs/bench_pseudolabels/``.

Cues are computed once per cue mode and shared by the labeling variants (``run_local(...,
cues=...)``); every variant writes its own shards and is scored by ``evaluate_pseudolabels``,
the function ``evaluate_paths`` uses for a shard directory. The labeling-step throughput
(proposals + semantics + tracking, cues given, no writing) is timed separately.

The labeling parameters come from ``--preset`` (default: the SynthDrive 256x512 preset
``configs/pseudolabel/synthdrive_256x512.yaml``; ``--preset none`` = the paper values of
config.py). The paper values are measured in the same run as one more row ("paper parameters")
so the preset's gain is a ratio against a baseline of the same run.

Targets (issue 6): oracle STQ >= 0.70; default STQ >= 0.50, AQ >= 0.45; each ablation lowers
STQ; labeling >= 15 frames/s. The benchmark also prints the AQ any motion-based instance
method can reach on the corpus (:func:`motion_aq_bound`): static things are never found.

    .venv/bin/python benchmarks/bench_pseudolabels.py [--quick] [--preset FILE|none] [--out runs/bench_pseudolabels]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from bench_labeling import reference_kernels  # same folder: the baseline kernels swap

from videocups_ray.config import Config, load_config, with_overrides
from videocups_ray.data.encodings import write_png
from videocups_ray.data.formats import open_source
from videocups_ray.data.pseudolabels import read_pseudolabels
from videocups_ray.pipelines.evaluate import evaluate_pseudolabels
from videocups_ray.pipelines.pseudolabel import MemorySource, run_local, synth_source
from videocups_ray.stages import CachedCueStages, CueStages, LabelStage
from videocups_ray.stages.scheduler import video_cues
from videocups_ray.viz.overlays import colorize_panoptic

ABLATIONS = {
    "full": {},
    "no tracking (per-frame IDs)": {"tracking": False},
    "no recovery": {"recovery": False},
    "no semantic smoothing": {"semantic_vote": False},
    "no clip alignment": {"clip_alignment": False},
    "no depth-guided fusion": {"depth_fusion": False},
}
CUE_MODES = {
    "oracle": {"flow": {"backend": "oracle"}, "depth": {"backend": "oracle"}},
    "default": {},
}
KITTI = Path(__file__).resolve().parents[2] / "shared" / "data" / "kitti_step_0001"
PRESET = Path(__file__).resolve().parents[1] / "configs" / "pseudolabel" / "synthdrive_256x512.yaml"


def motion_aq_bound(source, things: tuple[int, ...], label_divisor: int = 65536) -> dict:
    """Upper bound of STQ's AQ for instances that exist only where things move independently.

    STQ's AQ averages over ground-truth tracks g the score
    ``sum_p TPA(p,g)^2 / (|g| + |p| - TPA(p,g)) / |g|``. If every predicted pixel on g is a
    moving pixel of g (motion seeds only), the score is at most ``f_g^2`` with ``f_g`` the
    moving fraction of g's pixels over the sequence (one predicted track equal to the moving
    part reaches it). Returns that bound (track mean of ``f_g^2``), the moving pixel fraction,
    and the track counts. Needs ``extra["motion"]`` (SynthDrive ground truth).
    """
    total: dict[tuple[str, int], list[int]] = {}
    for vid in source.videos():
        for f in source.frames(vid):
            if "motion" not in f.extra:
                raise ValueError(f"{vid} frame {f.frame_index}: no extra['motion'] for the AQ bound")
            track = np.isin(f.semantic, things) & (f.instance > 0)
            key = f.semantic.astype(np.int64) * label_divisor + f.instance
            moving = track & f.extra["motion"].astype(bool)
            for mask, slot in ((track, 0), (moving, 1)):
                ids, counts = np.unique(key[mask], return_counts=True)
                for i, c in zip(ids.tolist(), counts.tolist()):
                    total.setdefault((vid, i), [0, 0])[slot] += c
    px = np.array(list(total.values()), np.float64).reshape(-1, 2)
    frac = px[:, 1] / np.maximum(px[:, 0], 1)
    return {"aq_bound": float(np.mean(frac ** 2)) if len(frac) else 0.0,
            "moving_pixel_fraction": float(px[:, 1].sum() / max(px[:, 0].sum(), 1)),
            "tracks": len(frac), "moving_tracks": int((frac > 0).sum())}


def compute_cues(cfg: Config, source) -> tuple[dict, float]:
    """Cues of every video once; ``cues["_stages"]`` remembers them for every labeling variant."""
    stages = CachedCueStages(CueStages.from_config(cfg))
    stages.setup()
    t = time.perf_counter()
    cues = {v: list(video_cues(stages, source.frames(v), cfg.cues.flow.batch_size)) for v in source.videos()}
    seconds = time.perf_counter() - t
    cues["_stages"] = stages
    return cues, seconds


def label_throughput(cfg: Config, cues: dict, centroids: np.ndarray, videos: list | None = None) -> float:
    """Frames/s of the labeling step alone (cues given) over ``videos`` (default: all)."""
    stage = LabelStage(cfg, centroids)
    stage.setup()
    n = 0
    t = time.perf_counter()
    for vid, items in cues.items():
        if vid == "_stages" or (videos is not None and vid not in videos):
            continue
        stage.reset()
        for _, c in items:
            n += len(stage.push(c))
        n += len(stage.flush())
    return n / (time.perf_counter() - t)


def run_variant(cfg: Config, source, cues: dict, out: Path) -> tuple[dict, dict]:
    shutil.rmtree(out, ignore_errors=True)
    summary = run_local(cfg, source, out, progress=False, stages=cues["_stages"])
    return summary, evaluate_pseudolabels(out, source, cfg.eval)


def fmt_row(name: str, r: dict, base: dict | None) -> str:
    delta = "" if base is None else f"{100 * (r['STQ'] - base['STQ']):+7.1f} {r['STQ'] / max(base['STQ'], 1e-9):6.2f}x"
    return f"  {name:30s}{100 * r['STQ']:7.1f}{100 * r['AQ']:7.1f}{100 * r['SQ']:7.1f}  {delta}"


def bench_synth(base: Config, out: Path, quick: bool, paper: Config | None) -> None:
    synth = {"height": 256, "width": 512, "seed": 7, "sequences": 1 if quick else 3, "frames": 8 if quick else 20}
    cfg0 = with_overrides(base, synth=synth)
    t = time.perf_counter()
    source = synth_source(cfg0.synth)
    print(f"SynthDrive val: {len(source.videos())} sequences x {synth['frames']} frames at 256x512 "
          f"(rendered in {time.perf_counter() - t:.1f} s)")
    bound = motion_aq_bound(source, cfg0.eval.things, cfg0.eval.label_divisor)
    print(f"AQ upper bound of motion-based instances: {100 * bound['aq_bound']:.1f} "
          f"({bound['moving_tracks']} of {bound['tracks']} GT thing tracks ever move independently; "
          f"{100 * bound['moving_pixel_fraction']:.1f} % of GT track pixels are moving)")
    for mode, cue_cfg in CUE_MODES.items():
        cfg = with_overrides(cfg0, cues=cue_cfg)
        cues, secs = compute_cues(cfg, source)
        nframes = sum(len(v) for v in cues.values())
        print(f"\n[{mode} cues] cue stages {nframes / secs:.2f} frames/s   loadavg {os.getloadavg()[0]:.2f}")
        print(f"  {'variant':30s}{'STQ':>7s}{'AQ':>7s}{'SQ':>7s}  {'dSTQ':>7s} {'ratio':>6s}")
        base_res = None
        for name, lab in ABLATIONS.items():
            vcfg = with_overrides(cfg, labeling=lab)
            summary, res = run_variant(vcfg, source, cues, out / "synth" / mode / name.split()[0 if name == "full" else 1])
            print(fmt_row(name, res, base_res), flush=True)
            if base_res is None:
                base_res = res
                cents = np.load(summary["centroids"])
                fps = label_throughput(vcfg, cues, cents)
                # baseline of the same run: the same step on the plain numpy reference kernels, on the
                # first video (the reference is slow); the Numba step is timed again on that video
                first = [next(iter(cues))]
                fps_first = label_throughput(vcfg, cues, cents, first)
                with reference_kernels():
                    fps_ref = label_throughput(vcfg, cues, cents, first)
                things = summary["thing_classes"]
        if paper is not None:
            pcfg = with_overrides(paper, synth=synth, cues=cue_cfg)
            _, res = run_variant(pcfg, source, cues, out / "synth" / mode / "paper")
            print(fmt_row("paper parameters (config.py)", res, base_res), flush=True)
        print(f"  thing pseudo-classes: {things}; labeling step (cues given) {fps:.1f} frames/s; "
              f"first video {fps_first:.1f} vs {fps_ref:.1f} frames/s on the reference kernels "
              f"({fps_first / fps_ref:.2f}x, same run; target 15 frames/s)   loadavg {os.getloadavg()[0]:.2f}")


def bench_kitti(base: Config, out: Path) -> None:
    if not KITTI.is_dir():
        print(f"\nKITTI-STEP sample not found at {KITTI}; skipped")
        return
    cfg = with_overrides(base, camera={"focal": 721.5},
                         labeling={"kmeans_frames_per_video": 9})
    gt = open_source(KITTI)
    source = MemorySource(list(gt), has_labels=True)
    shards = out / "kitti" / "shards"
    shutil.rmtree(shards, ignore_errors=True)
    t = time.perf_counter()
    summary = run_local(cfg, source, shards, progress=False)
    secs = time.perf_counter() - t
    res = evaluate_pseudolabels(shards, source, cfg.eval)
    print(f"\n[KITTI-STEP 0001, default cues] {summary['frames']} frames at 375x1242, end to end "
          f"{summary['frames'] / secs:.2f} frames/s   loadavg {os.getloadavg()[0]:.2f}")
    print(f"  {'':30s}{'STQ':>7s}{'AQ':>7s}{'SQ':>7s}")
    print(fmt_row("full", res, None))
    gts = {(f.video_id, f.frame_index): f for f in source}
    for f in read_pseudolabels(shards):
        g = gts[(f.video_id, f.frame_index)]
        panel = np.concatenate([
            f.image,
            colorize_panoptic(f.semantic, f.instance, palette="pseudo", image=f.image),
            colorize_panoptic(g.semantic, g.instance, image=f.image),
        ])
        write_png(out / "kitti" / "overlays" / f"{f.frame_index:06d}.png", panel)
    print(f"  overlays (image / pseudo-label / ground truth): {out / 'kitti' / 'overlays'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one short sequence")
    ap.add_argument("--out", default="runs/bench_pseudolabels")
    ap.add_argument("--skip-kitti", action="store_true")
    ap.add_argument("--preset", default=str(PRESET), help="labeling preset YAML, or 'none' for the paper values")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    out = Path(args.out)
    base = Config() if args.preset == "none" else load_config([args.preset])
    paper = None if args.preset == "none" else Config()
    print(f"loadavg at start {os.getloadavg()}; labeling preset: {args.preset}")
    bench_synth(base, out, args.quick, paper)
    if not args.skip_kitti:
        bench_kitti(base, out)


if __name__ == "__main__":
    main()
