"""Pseudo-label quality on a TUNING and a TEST split of SynthDrive, and on real KITTI-STEP.

A validation protocol that cannot overfit (issue 13): every preset and every default is chosen
on the **tuning** split only and reported on the **test** split, which nothing is tuned on,
and on the real KITTI-STEP sample ``../shared/data/kitti_step_0001``. The two splits are
disjoint SynthDrive seed ranges (sequence ``s`` of master seed ``m`` uses seed ``m*1000+s``;
tests use master seeds < 100):

- tuning: master seed 7   -> sequence seeds 7000..7999 (the "val" every earlier preset was tuned on)
- test:   master seed 313 -> sequence seeds 313000..313999 (never used for any choice)

For each split and each labeling config (the default CLI config = ``Config()``, and the shipped
preset ``configs/pseudolabel/synthdrive_256x512.yaml``) it prints STQ / AQ / SQ (unsupervised
cluster-to-class matching, ``evaluate_pseudolabels``), the cue errors on the same frames (flow
EPE on non-occluded pixels against zero flow, depth AbsRel on static and on moving pixels, and
motion-mask IoU at p > 0.5), and the gap tuning - test. Cues are computed once per split and
cue config and shared by the labeling variants.

``--ablation``: the semantic evidence of the handmade descriptor, what each part adds: distance
(``weight_geometry``), image row and column position, height above the ground plane, surface
orientation, sky, and the DepthG-style depth-guided aggregation (``depth_guide_sigma``), each
toggled from the default, appearance only, and all parts; every variant on tuning, test and
KITTI, printed as one table. The tuning-STQ maximum is printed as the choice; a part goes on
by default only if it helps on tuning and holds on test.

``--cue-variants all``: the mover-cue changes (DIS warm start within a batch of consecutive
frames, ground-contact motion/depth ``cues.depth.contact_ratio``) on tuning AND test: cue errors
and STQ with the default labeling config.

``--labeling-ablations``: the paper's labeling ablations (issue 6) with oracle and default cues
on the tuning split.

Sizes: ``--quick`` 3 x 24 frames at 256x512 per split; the full run 6 x 30. Everything is
printed with the load average (the quick split table took ~45 min at load average 45-55 on the
2-core development machine, most of it the two KITTI runs at 375x1242). ``--variants`` runs a
subset of the ablation.

``--labeling-ablations`` also times the labeling step alone (cues given) with the Numba kernels
against the plain numpy reference kernels on the same frames, in the same run.

    .venv/bin/python benchmarks/bench_pseudolabels.py [--quick] [--ablation] [--skip-kitti]
        [--labeling-ablations] [--json runs/bench_pseudolabels/results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from bench_labeling import reference_kernels  # same folder: the baseline kernels swap

from videocups_ray.config import Config, load_config, with_overrides
from videocups_ray.data.formats import open_source
from videocups_ray.pipelines.evaluate import evaluate_pseudolabels
from videocups_ray.pipelines.pseudolabel import MemorySource, run_local, synth_source
from videocups_ray.stages import CachedCueStages, CueStages, LabelStage
from videocups_ray.stages.scheduler import video_cues

SPLITS = {"tuning": 7, "test": 313}  # master seeds (see module doc); disjoint sequence seed ranges
ROOT = Path(__file__).resolve().parents[1]
KITTI = ROOT.parent / "shared" / "data" / "kitti_step_0001"
PRESET = ROOT / "configs" / "pseudolabel" / "synthdrive_256x512.yaml"
KITTI_OVERRIDES = {"camera": {"focal": 721.5}, "labeling": {"kmeans_frames_per_video": 9}}
LABELING_ABLATIONS = {
    "full": {},
    "no tracking (per-frame IDs)": {"tracking": False},
    "no recovery": {"recovery": False},
    "no semantic smoothing": {"semantic_vote": False},
    "no clip alignment": {"clip_alignment": False},
    "no depth-guided fusion": {"depth_fusion": False},
}


# --------------------------------------------------------------------------- configs and cues
def configs() -> dict[str, Config]:
    """The two labeling configs every split is reported for."""
    return {"default CLI": Config(), "preset 256x512": load_config([str(PRESET)])}


def ablation_variants(base: Config) -> dict[str, dict]:
    """Feature overrides of the semantic-evidence ablation (issue 13). Parts: distance (the
    depth group ``weight_geometry``: log depth, Y, slope, invalid), image position (row
    ``weight_position``, column ``weight_column``), height above the ground plane, orientation
    (normals), sky, and the DepthG-style depth-guided aggregation (``depth_guide_sigma``).
    Each part is toggled from the default; "appearance only" drops every geometric and position
    channel; "all" turns every part on."""
    fc = base.cues.features
    off = {"weight_geometry": 0.0, "weight_position": 0.0, "weight_column": 0.0,
           **{f"weight_{p}": 0.0 for p in ("height", "normal", "sky")}, "depth_guide_sigma": 0.0}
    toggles = {"distance": ("weight_geometry", 1.0), "row position": ("weight_position", 1.0),
               "column position": ("weight_column", 1.0), "height": ("weight_height", 1.0),
               "orientation": ("weight_normal", 1.0), "sky": ("weight_sky", 1.0),
               "depth-guided 0.3": ("depth_guide_sigma", 0.3), "depth-guided 0.6": ("depth_guide_sigma", 0.6)}
    out: dict[str, dict] = {"default": {}, "appearance only": off}
    for name, (field, on) in toggles.items():
        cur = getattr(fc, field)
        if name.startswith("depth-guided") and cur > 0:
            continue
        out[f"{'-' if cur > 0 else '+'}{name}"] = {field: 0.0 if cur > 0 else on}
    out["all parts"] = {f: 1.0 for f in ("weight_geometry", "weight_position", "weight_column", "weight_height",
                                        "weight_normal", "weight_sky")} | {"depth_guide_sigma": 0.3}
    out["all parts unguided"] = out["all parts"] | {"depth_guide_sigma": 0.0}
    return out


class CueSet(dict):
    """``video_id -> [(frame, FrameCues)]`` plus the cached cue stages that computed them, so
    every labeling variant runs the engine on the same cues without computing them again."""

    def __init__(self, items: dict, stages: CueStages):
        super().__init__(items)
        self.stages = stages


def compute_cues(cfg: Config, source) -> tuple[CueSet, float]:
    stages = CachedCueStages(CueStages.from_config(cfg))
    stages.setup()
    t = time.perf_counter()
    cues = {v: list(video_cues(stages, source.frames(v), cfg.cues.flow.batch_size)) for v in source.videos()}
    return CueSet(cues, stages), time.perf_counter() - t


def refeature(cfg: Config, cues: CueSet) -> CueSet:
    """The same (cached) flow/depth cues with features computed under ``cfg.cues.features``."""
    features = CueStages.from_config(cfg).features
    features.setup()
    return CueSet(cues, CueStages(cues.stages.flow, cues.stages.depth, features))


def label_throughput(cfg: Config, cues: CueSet, centroids: np.ndarray, videos: list | None = None) -> float:
    """Frames/s of the labeling step alone (cues given) over ``videos`` (default: all)."""
    stage = LabelStage(cfg, centroids)
    stage.setup()
    n = 0
    t = time.perf_counter()
    for vid, items in cues.items():
        if videos is not None and vid not in videos:
            continue
        stage.reset()
        for _, c in items:
            n += len(stage.push(c))
        n += len(stage.flush())
    return n / (time.perf_counter() - t)


def cue_errors(cues: dict) -> dict:
    """Flow EPE (non-occluded GT pixels; zero flow as baseline), depth AbsRel static / moving
    (GT depth in (0, 80) m), motion IoU (p > 0.5) of SynthDrive cues against ground truth."""
    epe = zero = n = 0.0
    acc = np.zeros((2, 2))  # static, moving: (AbsRel sum, pixels)
    inter = union = 0
    for items in cues.values():
        for f, c in items:
            if c.flow_fw is not None and f.flow is not None:
                v = f.flow_valid.astype(bool)
                epe += float(np.linalg.norm(c.flow_fw - f.flow, axis=-1)[v].sum())
                zero += float(np.linalg.norm(f.flow, axis=-1)[v].sum())
                n += int(v.sum())
            moving = f.extra["motion"].astype(bool)
            ok = np.isfinite(f.depth) & (f.depth > 0) & (f.depth < 80)
            for j, m in enumerate((~moving & ok, moving & ok)):
                acc[j] += (float((np.abs(c.depth[m] - f.depth[m]) / f.depth[m]).sum()), int(m.sum()))
            pm = c.motion_prob > 0.5
            inter += int((pm & moving).sum())
            union += int((pm | moving).sum())
    r = acc[:, 0] / np.maximum(acc[:, 1], 1)
    return {"epe": epe / max(n, 1), "zero_epe": zero / max(n, 1), "absrel_static": float(r[0]),
            "absrel_moving": float(r[1]), "motion_iou": inter / max(union, 1)}


def label(cfg: Config, source, cues: CueSet | None, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    summary = run_local(cfg, source, out, progress=False, stages=None if cues is None else cues.stages)
    res = evaluate_pseudolabels(out, source, cfg.eval)
    return {**{k: float(res[k]) for k in ("STQ", "AQ", "SQ")}, "centroids": summary["centroids"]}


def load() -> str:
    return f"loadavg {os.getloadavg()[0]:.1f}"


def fmt(r: dict) -> str:
    return f"{100 * r['STQ']:6.1f}{100 * r['AQ']:6.1f}{100 * r['SQ']:6.1f}"


# --------------------------------------------------------------------------- runs
def split_source(seed: int, quick: bool):
    s = {"height": 256, "width": 512, "seed": seed, "sequences": 3 if quick else 6, "frames": 24 if quick else 30}
    return synth_source(with_overrides(Config(), synth=s).synth), s


def kitti_source():
    if not KITTI.is_dir():
        raise SystemExit(f"KITTI-STEP sample not found at {KITTI} (use --skip-kitti)")
    return MemorySource(list(open_source(KITTI)), has_labels=True)


def bench_splits(cfgs: dict[str, Config], out: Path, quick: bool, kitti: bool) -> dict:
    results: dict = {}
    cue_cache: dict[str, tuple[dict, dict]] = {}
    for split, seed in SPLITS.items():
        t = time.perf_counter()
        source, s = split_source(seed, quick)
        print(f"\n[{split}] SynthDrive master seed {seed}: {s['sequences']} x {s['frames']} frames at 256x512 "
              f"(rendered in {time.perf_counter() - t:.0f} s)   {load()}", flush=True)
        for name, cfg in cfgs.items():
            key = cfg.cues.model_dump_json()
            if key not in cue_cache:
                cues, secs = compute_cues(cfg, source)
                cue_cache[key] = (cues, cue_errors(cues))
                nf = sum(len(v) for v in cues.values())
                print(f"  cues for {name!r}: {nf / secs:.2f} frames/s   {load()}", flush=True)
            cues, errs = cue_cache[key]
            r = label(cfg, source, cues, out / split / name.split()[0])
            results[(split, name)] = {**r, **errs}
            print(f"  {name:16s} STQ/AQ/SQ {fmt(r)}   EPE {errs['epe']:.2f} (zero {errs['zero_epe']:.2f})  "
                  f"AbsRel static {errs['absrel_static']:.3f} moving {errs['absrel_moving']:.3f}  "
                  f"motion IoU {errs['motion_iou']:.3f}   {load()}", flush=True)
        cue_cache.clear()
    if kitti:
        source = kitti_source()
        for name, cfg in cfgs.items():
            t = time.perf_counter()
            kcfg = with_overrides(cfg, **KITTI_OVERRIDES)
            r = label(kcfg, source, None, out / "kitti" / name.split()[0])
            nf = len(list(source))
            results[("kitti", name)] = r
            print(f"\n[KITTI-STEP 0001] {name:16s} STQ/AQ/SQ {fmt(r)}   end to end {nf / (time.perf_counter() - t):.2f} "
                  f"frames/s   {load()}", flush=True)
    print("\nSummary (STQ / AQ / SQ in %; gap = tuning - test STQ)")
    print(f"  {'config':16s} {'tuning':>18s} {'test':>18s} {'KITTI 0001':>18s}  gap")
    for name in cfgs:
        row = [results.get((s, name)) for s in ("tuning", "test", "kitti")]
        cells = [fmt(r) if r else f"{'-':>18s}" for r in row]
        gap = 100 * (row[0]["STQ"] - row[1]["STQ"])
        print(f"  {name:16s} {cells[0]} {cells[1]} {cells[2]}  {gap:+.1f}")
    return results


def cached_cues(cfg: Config, split: str, quick: bool) -> tuple:
    """(source, cues) of a split."""
    source = split_source(SPLITS[split], quick)[0]
    return source, compute_cues(cfg, source)[0]


def bench_ablation(base: Config, out: Path, quick: bool, kitti: bool, *, only: list[str] | None = None) -> dict:
    """Semantic-evidence ablation on tuning, test and KITTI (cues computed once per set, features
    recomputed per variant). The choice is the tuning-STQ maximum; test and KITTI are printed
    next to it and never enter the choice. ``only``: a subset of variants (names as printed)."""
    variants = ablation_variants(base)
    names = only or list(variants)
    sets = {"tuning": (base, cached_cues(base, "tuning", quick)),
            "test": (base, cached_cues(base, "test", quick))}
    if kitti:
        kcfg = with_overrides(base, **KITTI_OVERRIDES)
        ksrc = kitti_source()
        sets["kitti"] = (kcfg, (ksrc, compute_cues(kcfg, ksrc)[0]))
    results: dict = {}
    print(f"\n[ablation] semantic evidence, labeling config = default CLI   {load()}")
    for name in names:
        fo = variants[name]
        for split, (cfg0, (source, cues0)) in sets.items():
            cfg = with_overrides(cfg0, cues={"features": fo})
            cues = cues0 if not fo else refeature(cfg, cues0)
            results[(split, name)] = label(cfg, source, cues, out / "ablation" / split / name.replace(" ", "_"))
        print(f"  {name:26s} " + " ".join(fmt(results[(s, name)]) for s in sets) + f"   {load()}", flush=True)
    ref = "default" if "default" in names else names[0]
    print(f"\nAblation summary (STQ / AQ / SQ in %; d = STQ change vs {ref!r})")
    print(f"  {'variant':26s}" + "".join(f"{s:>18s}{'d':>6s}" for s in sets))
    for name in names:
        cells = "".join(f"{fmt(results[(s, name)])}{100 * (results[(s, name)]['STQ'] - results[(s, ref)]['STQ']):+6.1f}"
                        for s in sets)
        print(f"  {name:26s}{cells}")
    best = max(names, key=lambda v: results[("tuning", v)]["STQ"])
    print(f"  chosen on tuning (STQ): {best!r}")
    return results


CUE_VARIANTS = {
    "default": {},
    "DIS warm start": {"flow": {"dis_warm_start": True}},
    "ground contact (1.4)": {"depth": {"contact_ratio": 1.4}},
    "warm start + contact": {"flow": {"dis_warm_start": True}, "depth": {"contact_ratio": 1.4}},
}


def bench_cue_variants(base: Config, out: Path, quick: bool, only: list[str] | None = None) -> dict:
    """Mover cues (issue 13): each cue change on tuning AND test, cue errors and STQ/AQ/SQ with
    the default labeling config (cues computed per variant and split)."""
    results: dict = {}
    print(f"\n[cue variants] default labeling config   {load()}")
    print(f"  {'variant':22s} {'split':7s} {'STQ / AQ / SQ':>18s}   EPE (zero)   AbsRel static / moving   motion IoU")
    for name in only or list(CUE_VARIANTS):
        cfg = with_overrides(base, cues=CUE_VARIANTS[name])
        for split in SPLITS:
            source, cues = cached_cues(cfg, split, quick)
            errs = cue_errors(cues)
            r = {**label(cfg, source, cues, out / "cue_variants" / split / name.replace(" ", "_")), **errs}
            results[(split, "cues: " + name)] = r
            print(f"  {name:22s} {split:7s} {fmt(r)}   {errs['epe']:.3f} ({errs['zero_epe']:.2f})   "
                  f"{errs['absrel_static']:.3f} / {errs['absrel_moving']:.3f}          {errs['motion_iou']:.3f}   "
                  f"{load()}", flush=True)
    return results


def bench_labeling_ablations(base: Config, out: Path, quick: bool) -> None:
    """The paper's labeling ablations (issue 6) on the tuning split, oracle and default cues."""
    source, _ = split_source(SPLITS["tuning"], quick)
    for mode, cue_cfg in {"oracle": {"flow": {"backend": "oracle"}, "depth": {"backend": "oracle"}},
                          "default": {}}.items():
        cfg = with_overrides(base, cues=cue_cfg)
        cues, _ = compute_cues(cfg, source)
        print(f"\n[labeling ablations, tuning split, {mode} cues]   {load()}")
        ref = None
        for name, lab in LABELING_ABLATIONS.items():
            r = label(with_overrides(cfg, labeling=lab), source, cues, out / "labeling" / mode / "v")
            if ref is None:
                ref = r
                cents = np.load(r["centroids"])
                # baseline in the same run: the labeling step on the plain numpy reference kernels
                # (slow: first video only), against the Numba step timed on that video too
                first = [next(iter(cues))]
                fps_all = label_throughput(cfg, cues, cents)
                fps_first = label_throughput(cfg, cues, cents, first)
                with reference_kernels():
                    fps_ref = label_throughput(cfg, cues, cents, first)
                print(f"  labeling step (cues given) {fps_all:.1f} frames/s; first video {fps_first:.1f} vs "
                      f"{fps_ref:.1f} frames/s on the reference kernels ({fps_first / fps_ref:.2f}x)   {load()}")
            print(f"  {name:30s}{fmt(r)}  {100 * (r['STQ'] - ref['STQ']):+6.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 x 24 frames per split (full: 6 x 30)")
    ap.add_argument("--out", default="runs/bench_pseudolabels")
    ap.add_argument("--skip-kitti", action="store_true")
    ap.add_argument("--skip-splits", action="store_true", help="only the requested ablations")
    ap.add_argument("--ablation", action="store_true", help="geometric-evidence ablation (see module doc)")
    ap.add_argument("--variants", help="ablation: comma-separated subset of the variant names")
    ap.add_argument("--cue-variants", help="mover-cue variants on both splits: 'all' or comma-separated names")
    ap.add_argument("--labeling-ablations", action="store_true", help="issue 6's labeling ablations")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    out = Path(args.out)
    print(f"loadavg at start {os.getloadavg()}; splits (master seeds): {SPLITS}", flush=True)
    results: dict = {}
    if not args.skip_splits:
        results.update(bench_splits(configs(), out, args.quick, not args.skip_kitti))
    if args.ablation:
        results.update({(s, "ablation: " + n): r for (s, n), r in
                        bench_ablation(Config(), out, args.quick, not args.skip_kitti,
                                       only=args.variants.split(",") if args.variants else None).items()})
    if args.cue_variants:
        results.update(bench_cue_variants(Config(), out, args.quick,
                                          args.cue_variants.split(",") if args.cue_variants != "all" else None))
    if args.labeling_ablations:
        bench_labeling_ablations(configs()["preset 256x512"], out, args.quick)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({f"{s} | {n}": r for (s, n), r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
