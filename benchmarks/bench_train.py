"""Training throughput on Ray Train (1 vs 2 workers, DDP vs DeepSpeed ZeRO-2) and, with
``--quality``, the paper's ablation on SynthDrive (model STQ vs pseudo-label STQ: vanilla,
+ Video DropLoss, + copy-paste, + self-enhanced copy-paste, + a self-training round), trained
with the shipped recipe (configs/train/demo.yaml) on a corpus seed never used for tuning.

Claims (issue 8, item 7): 2 workers >= 1.6x the images/s of 1 worker where cores allow; a
training step of ResNet-18 at 256x512 on CPU <= 2 s; after the quality run, model STQ >=
pseudo-label STQ + 0.05 with AQ on static tracks > 0 (issue 14), within 30 minutes on 2 cores.

Throughput: ResNet-18 + FPN (the default ``ModelConfig``, BN from scratch), SynthDrive ground
truth shards at 256x512, one pair per worker per step (2 images), ``torch_threads`` = cores /
workers. Images/s is the mean over logged steps after the first (warm-up) of each run, taken
inside the train loop (Ray Train's ~20 s start-up is excluded and reported separately). The
baseline is 1-worker DDP, measured in the same run; a single-process step without Ray is the
reference for the 2 s claim.

    .venv/bin/python benchmarks/bench_train.py [--quick] [--steps N] [--strategies ddp,deepspeed]
    .venv/bin/python benchmarks/bench_train.py --quality [--quick] [--quality-steps N] [--rows N] [--seed S]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from videocups_ray.config import Config, with_overrides
from videocups_ray.data.shards import frames_to_shards
from videocups_ray.model import ClassMeta, build_model, collate_pairs
from videocups_ray.pipelines.pseudolabel import MemorySource, synth_source

CORES = os.cpu_count() or 1


def throughput_config(workers: int, strategy: str, steps: int, h: int, w: int) -> Config:
    return with_overrides(
        Config(),
        synth=dict(sequences=2, frames=6, height=h, width=w, seed=11),
        model=dict(backbone="resnet18", backbone_norm="bn", trainable_backbone_layers=5, min_size=h, max_size=w),
        train=dict(max_steps=steps, checkpoint_every=steps, batch_size=1, workers=[workers, workers],
                   strategy=strategy, cache_pairs=True, shuffle_buffer=0, torch_threads=max(1, CORES // workers),
                   cpus_per_worker=0.5, max_failures=0),
    )


def single_process_step(cfg: Config, shards: Path, steps: int) -> float:
    """Median seconds of one AdamW step on one pair, in this process (no Ray)."""
    from videocups_ray.data.shards import read_shards

    torch.set_num_threads(CORES)
    frames = list(read_shards(shards))[:2]
    meta = ClassMeta(tuple(c for c in range(19) if c not in (11, 13)), (11, 13))
    pair = {"images": torch.stack([torch.from_numpy(f.image).permute(2, 0, 1) for f in frames]),
            "semantic": torch.stack([torch.from_numpy(f.semantic).long() for f in frames]),
            "instance": torch.stack([torch.from_numpy(f.instance).long() for f in frames]),
            "ignore": torch.stack([torch.from_numpy(f.extra["ignore"]) for f in frames])}
    model = build_model(cfg.model, meta.num_stuff, meta.num_thing, cfg.train).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    inputs = collate_pairs([pair], meta)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad()
        sum(model(**inputs).values()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i:  # the first step warms up allocators
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_throughput(args: argparse.Namespace, root: Path) -> None:
    from videocups_ray.pipelines.ray_runtime import ray_session
    from videocups_ray.pipelines.train import run_train

    h, w = args.height, args.width
    base = throughput_config(1, "ddp", args.steps, h, w)
    shards = root / "shards"
    frames_to_shards(synth_source(base.synth), shards, base.shards)
    load0 = os.getloadavg()
    ref = single_process_step(base, shards, 3 if args.quick else 6)
    rows = []
    with ray_session(base.ray):
        for strategy in args.strategies.split(","):
            for workers in (1, 2):
                cfg = throughput_config(workers, strategy, args.steps, h, w)
                t0 = time.perf_counter()
                s = run_train(cfg, shards, root / f"{strategy}-{workers}")
                rows.append((strategy, workers, s["steps_per_s"], s["images_per_s"],
                             s["metrics"].get("compute_s_per_step"), time.perf_counter() - t0))
    load1 = os.getloadavg()
    base_ips = next((r[3] for r in rows if r[0] == "ddp" and r[1] == 1), None) or rows[0][3]
    print(f"\ntraining throughput, ResNet-18 + FPN, {h}x{w}, 1 pair/worker/step, {CORES} cores, CPU")
    print(f"load average before {load0[0]:.1f}/{load0[1]:.1f}, after {load1[0]:.1f}/{load1[1]:.1f} "
          "(other jobs share these cores: numbers are noisy)")
    print(f"{'strategy':10s}{'workers':>8s}{'steps/s':>9s}{'images/s':>10s}{'s/step':>8s}{'x 1-worker ddp':>16s}{'fit s':>8s}")
    for strategy, workers, sps, ips, sstep, wall in rows:
        ratio = ips / base_ips if ips and base_ips else float("nan")
        print(f"{strategy:10s}{workers:8d}{sps or float('nan'):9.3f}{ips or float('nan'):10.2f}"
              f"{sstep or float('nan'):8.2f}{ratio:16.2f}{wall:8.1f}")
    print(f"single process, no Ray, {CORES} threads: {ref:.2f} s per step (target <= 2 s)")


# --------------------------------------------------------------------------- quality
def _split_aq(result: dict, kind: str) -> str:
    """AQ of the static or moving GT tracks (metrics/aq_split.py); '-' when a kind has no track."""
    aq = result["AQ_split"][kind]["AQ"]
    return "-" if aq is None else f"{aq:.3f}"


def _split_counts(result: dict) -> str:
    split = result["AQ_split"]
    return f"static {split['static']['num_tracks']}, moving {split['moving']['num_tracks']}"


RECIPE = ("configs/pseudolabel/synthdrive_256x512.yaml", "configs/train/demo.yaml")  # what the demo ships
# The paper's ablation, cumulative: each row adds one ingredient to the row above.
ABLATION = [
    ("vanilla", dict(drop_loss=False, copy_paste=False, self_enhanced=False)),
    ("+ DropLoss", dict(drop_loss=True, copy_paste=False, self_enhanced=False)),
    ("+ copy-paste", dict(drop_loss=True, copy_paste=True, self_enhanced=False)),
    ("+ self-enhanced", dict(drop_loss=True, copy_paste=True, self_enhanced=True)),
]


def _score(val_src, pred_dir: Path, cfg: Config) -> dict:
    from videocups_ray.pipelines.evaluate import evaluate, load_label_dir

    return evaluate(lambda: iter(val_src), lambda: load_label_dir(pred_dir, "kitti-step"), cfg=cfg.eval,
                    unsupervised=True)


def _print_done(row: tuple, pl: dict) -> None:
    """One finished row at once (a run cut short by its time limit still shows what it measured)."""
    name, r, sec, n = row
    print(f"row done: {name}: {n} steps, STQ {r['STQ']:.3f} (pseudo-labels {pl['STQ']:.3f}), AQ {r['AQ']:.3f}, "
          f"SQ {r['SQ']:.3f}, AQ static {_split_aq(r, 'static')}, {sec:.0f} s; {os.popen('uptime').read().strip()}",
          flush=True)


def bench_quality(args: argparse.Namespace, root: Path) -> None:
    """Pseudo-label SynthDrive train sequences (test seed, never used for tuning), train the
    ablation rows with the shipped recipe, compare STQ on held-out sequences."""
    from videocups_ray.config import load_config
    from videocups_ray.pipelines.evaluate import evaluate_pseudolabels
    from videocups_ray.pipelines.infer import run_infer
    from videocups_ray.pipelines.pseudolabel import run_local
    from videocups_ray.pipelines.ray_runtime import ray_session
    from videocups_ray.pipelines.self_training import run_self_training
    from videocups_ray.pipelines.train import run_train

    t_all = time.perf_counter()
    print(f"uptime at start: {os.popen('uptime').read().strip()}")
    n_train, n_val, frames = (1, 1, 8) if args.quick else (args.train_sequences, 2, 24)
    recipe = load_config(RECIPE)
    steps = args.quality_steps or (4 if args.quick else recipe.train.max_steps)
    round_steps = args.round_steps or max(1, steps // 2)
    h, w = (128, 256) if args.quick else (192, 384)
    cfg = with_overrides(
        recipe,
        synth=dict(sequences=n_train + n_val, frames=frames, height=h, width=w, seed=args.seed),
        train=dict(max_steps=steps, checkpoint_every=steps, self_enhanced_after=steps // 2,
                   warmup_steps=min(recipe.train.warmup_steps, steps // 4), max_failures=0,
                   log_every=min(recipe.train.log_every, steps)),
    )
    if args.quick:  # 8 frames: short tracks must count as things (the demo's quick mode does the same)
        cfg = with_overrides(cfg, labeling=dict(min_track_frames=2, num_clusters=8))
    corpus = list(synth_source(cfg.synth))
    videos = sorted({f.video_id for f in corpus})
    train_src = MemorySource([f for f in corpus if f.video_id in videos[:n_train]])
    val_src = MemorySource([f for f in corpus if f.video_id in videos[n_train:]])
    t0 = time.perf_counter()
    run_local(cfg, train_src, root / "pl_train", progress=False)
    run_local(cfg, val_src, root / "pl_val", progress=False)
    pl_seconds = time.perf_counter() - t0
    pl = evaluate_pseudolabels(root / "pl_val", val_src, cfg.eval)
    rows = []
    with ray_session(cfg.ray):
        last = None
        for name, flags in ABLATION[: args.rows]:
            vcfg = with_overrides(cfg, train=flags)
            out = root / name.strip("+ ").replace(" ", "_")
            t0 = time.perf_counter()
            last = run_train(vcfg, root / "pl_train", out)
            run_infer(vcfg, last["model"], val_src, out / "pred", "kitti-step")
            rows.append((name, _score(val_src, out / "pred", cfg), time.perf_counter() - t0, last["steps"]))
            _print_done(rows[-1], pl)
        if args.rows > len(ABLATION):  # + self-training: one more round, continuing the row above
            scfg = with_overrides(vcfg, train=dict(rounds=2, round_steps=round_steps))
            out = root / "self_training"
            t0 = time.perf_counter()
            s = run_self_training(scfg, root / "pl_train", out, first_round=last)
            run_infer(scfg, s["model"], val_src, out / "pred", "kitti-step")
            rows.append(("+ self-training", _score(val_src, out / "pred", cfg), time.perf_counter() - t0,
                         last["steps"] + s["steps"]))
            _print_done(rows[-1], pl)
    m = cfg.model
    print(f"\nquality on SynthDrive held-out sequences ({n_val} x {frames} frames {h}x{w}, seed {args.seed}; "
          f"{n_train} training sequences), recipe {' + '.join(RECIPE)}: model at {m.min_size}x{m.max_size}, "
          f"{steps} steps per row (self-training: + {round_steps} steps of round 2), {CORES} cores, CPU")
    print(f"uptime at end: {os.popen('uptime').read().strip()}")
    print("AQ static / moving: ground-truth tracks off / on the SynthDrive motion mask (track counts "
          f"{_split_counts(pl)}); seconds: training + inference of the row (self-training: its extra round)")
    print(f"{'':18s}{'steps':>6s}{'STQ':>7s}{'AQ':>7s}{'SQ':>7s}{'AQ static':>10s}{'AQ moving':>10s}{'dSTQ vs PL':>12s}"
          f"{'seconds':>9s}")
    for name, r, sec, n in [("pseudo-labels", pl, pl_seconds, 0), *rows]:
        print(f"{name:18s}{n or '-':>6}{r['STQ']:7.3f}{r['AQ']:7.3f}{r['SQ']:7.3f}{_split_aq(r, 'static'):>10s}"
              f"{_split_aq(r, 'moving'):>10s}{r['STQ'] - pl['STQ']:12.3f}{sec:9.1f}")
    print(f"total wall time {time.perf_counter() - t_all:.0f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short run (few steps, small corpus)")
    p.add_argument("--steps", type=int, help="training steps per throughput run (default 6, quick 3)")
    p.add_argument("--strategies", default="ddp,deepspeed")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--quality", action="store_true", help="run the (slow) quality ablation instead")
    p.add_argument("--quality-steps", type=int, help="training steps per ablation row (default: the recipe's)")
    p.add_argument("--round-steps", type=int, help="steps of the self-training round (default: half a row)")
    p.add_argument("--rows", type=int, default=5, help="ablation rows to run, in order (5 = all, with self-training)")
    p.add_argument("--seed", type=int, default=21, help="SynthDrive seed of the corpus (21: test seed, not tuned on)")
    p.add_argument("--train-sequences", type=int, default=2, help="pseudo-labelled training sequences")
    p.add_argument("--out", help="work folder (default: a temporary one)")
    args = p.parse_args()
    args.steps = args.steps or (3 if args.quick else 6)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_train_"))
    root.mkdir(parents=True, exist_ok=True)
    if args.quality:
        bench_quality(args, root)
    else:
        bench_throughput(args, root)


if __name__ == "__main__":
    main()
