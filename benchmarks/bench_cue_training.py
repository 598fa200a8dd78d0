"""Self-supervised cue training (``videocups train-cues``) measured on SynthDrive ground truth.

    .venv/bin/python benchmarks/bench_cue_training.py [--quick] [--out runs/bench_cue_training]

1. Trains (or resumes / reuses, when ``<out>/<cue>/<cue>_summary.json`` has all steps) the flow and
   the depth cue with ``run_train_cues`` — what ``videocups train-cues`` calls — in the tiny CPU
   configuration ``configs/cue_training/synthdrive_cpu.yaml`` (SynthDrive seed 11, 128x256).
2. Evaluates on SynthDrive seed 7 (never trained on), 128x256, non-occluded / valid pixels:
   - flow: EPE and Fl-all of the trained network (PWC-tiny or RAFT) against zero flow (baseline), DIS (the default)
     and the same network at initialisation (same seed as training);
   - depth: AbsRel on static and moving pixels of the trained network against the geometry
     default (DIS flow), the same network at initialisation (``init_depth`` metres everywhere)
     and the flat-ground prior (baseline), and motion-mask IoU (prob > 0.5);
3. Pseudo-label STQ / AQ / SQ (local engine, labeling preset ``synthdrive_256x512.yaml``) with the
   default cues and with the trained flow, the trained depth, and both.

Prints the load average; ratios are against baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cues import depth_errors, flow_errors  # noqa: E402

from videocups_ray.config import Config, DepthConfig, FlowConfig, load_config, with_overrides  # noqa: E402
from videocups_ray.cues import build_depth, build_flow  # noqa: E402
from videocups_ray.cues.flow import PwcFlow, RaftFlow  # noqa: E402
from videocups_ray.cues.monodepth import MonoDepth  # noqa: E402
from videocups_ray.cues.training.build import build_cue_trainer  # noqa: E402
from videocups_ray.pipelines.evaluate import evaluate_pseudolabels  # noqa: E402
from videocups_ray.pipelines.pseudolabel import run_local, synth_source  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CPU_CONFIG = ROOT / "configs" / "cue_training" / "synthdrive_cpu.yaml"
PRESET = ROOT / "configs" / "pseudolabel" / "synthdrive_256x512.yaml"


def train(cfg: Config, task: str, out: Path) -> dict:
    """Train ``task`` (resumes a partial run; reuses a finished one)."""
    from videocups_ray.pipelines.train_cues import run_train_cues

    done = out / f"{task}_summary.json"
    if done.is_file():
        summary = json.loads(done.read_text())
        if summary["steps"] >= cfg.cue_training.max_steps or summary.get("stopped") == "max_minutes":
            return summary
    return run_train_cues(cfg, task, "synth:", out, progress=False)


def latest_checkpoint(task: str, out: Path) -> dict | None:
    """The newest Ray Train checkpoint of a (possibly still running) ``train-cues`` run, or None."""
    found = sorted(p for p in (out / f"cues_{task}").glob("checkpoint_*") if p.is_dir())
    if not found:
        print(f"no checkpoint under {out / f'cues_{task}'}: trained {task} rows are left out")
        return None
    state = torch.load(found[-1] / "cue_train_state.pt", map_location="cpu", weights_only=True)
    return {"checkpoint": str(found[-1] / f"{task}.pt"), "steps": int(state["step"]), "seconds": float("nan"),
            "images_per_s": None, "workers": None, "device": "cpu"}


def flow_backend(cfg: Config, ckpt: str | None) -> dict:
    """``cues.flow`` fields that load the trained flow checkpoint (the summary's overrides)."""
    if cfg.cue_training.flow_net == "pwc":
        return {"backend": "pwc", "checkpoint": ckpt}
    return {"backend": "raft", "checkpoint": ckpt, "raft_arch": cfg.cues.flow.raft_arch,
            "raft_iters": cfg.cues.flow.raft_iters}


def bench_flow(cfg: Config, seqs: list[list], ckpt: str) -> dict[str, dict]:
    torch.manual_seed(cfg.cue_training.seed * 1000)  # rank 0's initialisation in training
    init_net = build_cue_trainer("flow", cfg).net
    fc = cfg.cues.flow.model_copy(update=flow_backend(cfg, ckpt))
    name = "PWC-tiny" if fc.backend == "pwc" else fc.raft_arch
    ests = {"zero flow (baseline)": None, "DIS medium (default)": build_flow(FlowConfig()),
            f"{name} at initialisation": (PwcFlow if fc.backend == "pwc" else RaftFlow)(init_net, iters=fc.raft_iters),
            f"{name} trained": build_flow(fc) if ckpt else None}
    if not ckpt:
        ests.pop(f"{name} trained")
    rows = {}
    for name, est in ests.items():
        acc = np.zeros(3)
        t = 0.0
        pairs = 0
        for seq in seqs:
            for a, b in zip(seq[:-1], seq[1:]):
                t0 = time.perf_counter()
                fw = np.zeros_like(a.flow) if est is None else est([a], [b]).fw[0]
                t += time.perf_counter() - t0
                pairs += 1
                acc += flow_errors(fw, a.flow, a.flow_valid)
        rows[name] = {"epe": acc[0] / acc[2], "fl": 100 * acc[1] / acc[2], "ms": 1000 * t / pairs}
    return rows


def bench_depth(cfg: Config, seqs: list[list], ckpt: str) -> dict[str, dict]:
    dis = build_flow(FlowConfig())
    geo = build_depth(DepthConfig(), cfg.camera)
    trained = build_depth(cfg.cues.depth.model_copy(update={"backend": "monodepth", "checkpoint": ckpt})) if ckpt else None
    torch.manual_seed(cfg.cue_training.seed * 1000)  # rank 0's initialisation in training
    dc = cfg.cues.depth
    init = MonoDepth(build_cue_trainer("depth", cfg).net, min_depth=dc.min_depth, max_depth=dc.max_depth)
    names = ["geometry + DIS (default)", "network at initialisation", "trained network"][: 3 if ckpt else 2]
    acc = {k: np.zeros((2, 3)) for k in (*names, "flat-ground prior (baseline)")}
    iou = {k: [0, 0] for k in names}
    for seq in seqs:
        geo.reset()
        for a, b in zip(seq[:-1], seq[1:]):
            fr = dis([a], [b])
            outs = {"geometry + DIS (default)": geo([a], [b], fr)}
            outs["network at initialisation"] = init([a])
            if trained is not None:
                outs["trained network"] = trained([a])
            motion = a.extra["motion"].astype(bool)
            K, (h, w) = a.extra["K"], a.shape
            v = np.arange(h, dtype=np.float64)[:, None] - K[1, 2]
            prior = np.where(v > 1, K[1, 1] * cfg.camera.camera_height / np.maximum(v, 1), 80.0) * np.ones((1, w))
            preds = {**{k: r.depth[0] for k, r in outs.items()}, "flat-ground prior (baseline)": prior}
            for k, p in preds.items():
                acc[k][0] += depth_errors(p, a.depth, ~motion)
                acc[k][1] += depth_errors(p, a.depth, motion)
            for k, r in outs.items():
                pm = r.motion_prob[0] > 0.5
                iou[k][0] += int(np.sum(pm & motion))
                iou[k][1] += int(np.sum(pm | motion))
    rows = {}
    for k, a in acc.items():
        r = a[:, 0] / np.maximum(a[:, 2], 1)
        rows[k] = {"static": r[0], "moving": r[1], "iou": iou[k][0] / max(iou[k][1], 1) if k in iou else None}
    return rows


def bench_stq(cfg: Config, ckpts: dict[str, str], out: Path, quick: bool) -> dict[str, dict]:
    base = with_overrides(load_config([PRESET]), synth={"height": cfg.cue_training.height, "width": cfg.cue_training.width,
                                                        "seed": 7, "sequences": 1 if quick else 2,
                                                        "frames": 10 if quick else 16})
    source = synth_source(base.synth)
    flow_set = flow_backend(cfg, ckpts.get("flow"))
    depth_set = {"backend": "monodepth", "checkpoint": ckpts.get("depth"), "encoder": cfg.cues.depth.encoder}
    variants = {"default cues (DIS + geometry)": {}, "trained flow": {"flow": flow_set},
                "trained depth + motion": {"depth": depth_set}, "both trained": {"flow": flow_set, "depth": depth_set}}
    variants = {k: v for k, v in variants.items() if all(c["checkpoint"] for c in v.values())}
    rows = {}
    for name, cues in variants.items():
        vcfg = with_overrides(base, cues=cues)
        shards = out / "stq" / name.split()[0 if name != "both trained" else 1]
        shutil.rmtree(shards, ignore_errors=True)
        t = time.perf_counter()
        run_local(vcfg, source, shards, progress=False)
        rows[name] = {**evaluate_pseudolabels(shards, source, vcfg.eval), "s": time.perf_counter() - t}
        print(f"  {name:32s} STQ {100 * rows[name]['STQ']:5.1f}  AQ {100 * rows[name]['AQ']:5.1f}  "
              f"SQ {100 * rows[name]['SQ']:5.1f}   ({rows[name]['s']:.0f} s)", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer evaluation frames")
    ap.add_argument("--out", default="runs/bench_cue_training")
    ap.add_argument("--config", default=str(CPU_CONFIG))
    ap.add_argument("--latest", action="store_true",
                    help="evaluate the newest checkpoints of runs in --out as they are (no training)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    out = Path(args.out)
    cfg = load_config([args.config])
    print(f"loadavg at start {os.getloadavg()}; {os.cpu_count()} CPUs; config {args.config}")
    ckpts, secs = {}, {}
    for task in ("flow", "depth"):
        s = latest_checkpoint(task, out / task) if args.latest else train(cfg, task, out / task)
        if s is None:
            continue
        ckpts[task] = s["checkpoint"]
        secs[task] = s
        print(f"train-cues {task}: {s['steps']} steps, {s['seconds']:.0f} s (last attempt), "
              f"{s['images_per_s']} images/s, workers {s['workers']}, device {s['device']}   "
              f"loadavg {os.getloadavg()[0]:.2f}", flush=True)
    ev = with_overrides(cfg, synth={"seed": 7, "sequences": 1 if args.quick else 2, "frames": 8 if args.quick else 12,
                                    "height": cfg.cue_training.height, "width": cfg.cue_training.width})
    seqs = [list(synth_source(ev.synth).frames(v)) for v in synth_source(ev.synth).videos()]
    print(f"\nSynthDrive val (seed 7): {len(seqs)} x {len(seqs[0])} frames at "
          f"{cfg.cue_training.height}x{cfg.cue_training.width}")
    fl = bench_flow(cfg, seqs, ckpts.get("flow"))
    zero = fl["zero flow (baseline)"]["epe"]
    print(f"\n  {'flow':28s}{'EPE px':>8s}{'Fl-all %':>10s}{'ms/pair':>9s}{'zero/EPE':>10s}")
    for k, r in fl.items():
        print(f"  {k:28s}{r['epe']:8.3f}{r['fl']:10.1f}{r['ms']:9.1f}{zero / r['epe']:10.2f}x")
    dp = bench_depth(cfg, seqs, ckpts.get("depth"))
    prior = dp["flat-ground prior (baseline)"]
    print(f"\n  {'depth':30s}{'AbsRel static':>14s}{'AbsRel moving':>14s}{'motion IoU':>11s}{'prior/static':>13s}")
    for k, r in dp.items():
        iou = f"{r['iou']:11.3f}" if r["iou"] is not None else f"{'':11s}"
        print(f"  {k:30s}{r['static']:14.3f}{r['moving']:14.3f}{iou}{prior['static'] / r['static']:12.2f}x")
    print(f"\n  pseudo-labels (local engine, preset {PRESET.name}), SynthDrive seed 7   loadavg {os.getloadavg()[0]:.2f}")
    stq = bench_stq(cfg, ckpts, out, args.quick)
    (out / "results.json").write_text(json.dumps({"flow": fl, "depth": dp, "stq": stq, "train": secs}, indent=2,
                                                 default=float))
    print(f"\nloadavg at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
