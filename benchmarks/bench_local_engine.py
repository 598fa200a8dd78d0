"""Whole local engine, end to end: frames/s of this tree against a baseline tree, same run.

    flock /work/wt/measure.lock .venv/bin/python benchmarks/bench_local_engine.py \
        --baseline-code /path/to/checkout/of/main [--quick]

Issue 13's throughput target: >= 10 frames/s at 256x512 and >= 1 frame/s at 1024x2048 on 2
cores for the whole local engine (``videocups pseudolabel --engine local`` with the default
config: PNG decoding, both passes (k-means fit, labeling), shard writing). For each size one
SynthDrive sequence of the tuning split (master seed 7; nothing here is tuned on the test
split) is written to disk in KITTI-STEP layout, then every tree labels it in its own process
(``PYTHONPATH`` = the tree), after a warm-up run on a tiny corpus so Numba's compile/cache load
is not timed. Printed per size and tree: frames/s, ratio to the baseline, STQ / AQ / SQ of the
labels against the SynthDrive ground truth (unsupervised matching), and the share of pixels
whose semantic and instance labels equal the baseline's. Trees alternate order per size, and
the load average is printed with every row (the development machine is shared).

First, the replaced hot spots alone (old vs new code in one process, outputs asserted equal).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"256x512": (256, 512), "1024x2048": (1024, 2048)}
TARGETS = {"256x512": 10.0, "1024x2048": 1.0}  # frames/s, issue 13
TUNING_SEED = 7  # the tuning split's master seed (bench_pseudolabels.py)


def worker(spec: dict) -> dict:
    """One timed run of the local engine in this process (imports from ``sys.path``'s tree)."""
    from videocups_ray.config import Config
    from videocups_ray.data.formats import open_source
    from videocups_ray.pipelines.evaluate import evaluate_pseudolabels
    from videocups_ray.pipelines.pseudolabel import run_local

    cfg = Config()
    run_local(cfg, spec["warmup"], spec["out"] + "_warmup", progress=False)  # JIT / cache load
    t = time.perf_counter()
    summary = run_local(cfg, spec["corpus"], spec["out"], progress=False)
    wall = time.perf_counter() - t
    res = evaluate_pseudolabels(spec["out"], open_source(spec["corpus"]), cfg.eval)
    return {"frames": int(summary["frames"]), "wall_s": wall, **{k: float(res[k]) for k in ("STQ", "AQ", "SQ")}}


def agreement(out_a: str, out_b: str) -> tuple[float, float]:
    """Share of pixels with equal semantic / instance labels in two shard dirs (same frames)."""
    from videocups_ray.data.shards import read_shards

    def frames(d: str) -> dict:
        return {(f.video_id, f.frame_index): (f.semantic, f.instance) for f in read_shards(d)}

    a, b = frames(out_a), frames(out_b)
    if a.keys() != b.keys():
        raise RuntimeError(f"{out_a} and {out_b} hold different frames")
    sem = inst = n = 0
    for key, (sa, ia) in a.items():
        sb, ib = b[key]
        sem += int((sa == sb).sum())
        inst += int((ia == ib).sum())
        n += sa.size
    return sem / n, inst / n


def hotspots(reps: int = 5) -> list[tuple[str, float, float]]:
    """The replaced hot spots on the same inputs, old vs new in this process (ms per call): the
    5x5 motion median (scipy rank filter vs OpenCV on a reflected border) and the k-means
    statistics (np.add.at + full lexsort vs bincount + preselected lexsort); outputs are equal."""
    import numpy as np
    from scipy import ndimage

    from videocups_ray.cues.depth import median5
    from videocups_ray.labeling.semantics import _keep_worst, normalize_rows

    def ms(fn) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return 1000 * (time.perf_counter() - t) / reps

    rng = np.random.default_rng(0)
    rows = []
    for h, w in SIZES.values():
        x = np.clip(rng.random((h, w), dtype=np.float32) * 1.5 - 0.5, 0, 1)
        assert np.array_equal(median5(x), ndimage.median_filter(x, size=5))
        rows.append((f"motion median 5x5 at {h}x{w}", ms(lambda: ndimage.median_filter(x, size=5)),
                     ms(lambda: median5(x))))
    feats = normalize_rows(rng.normal(size=(12288, 45)))  # 24 frames x 512 samples, 45 channels
    assign = rng.integers(0, 27, len(feats))
    sims = rng.random(len(feats))

    def old_stats():
        sums = np.zeros((27, 45))
        np.add.at(sums, assign, feats)
        order = np.lexsort([feats[:, c] for c in range(44, -1, -1)] + [sims])[:27]
        return sums, feats[order]

    def new_stats():
        ft = np.ascontiguousarray(feats.T)
        sums = np.stack([np.bincount(assign, weights=ft[j], minlength=27) for j in range(45)], axis=1)
        return sums, _keep_worst(feats, sims, 27)[0]

    assert all(np.array_equal(a, b) for a, b in zip(old_stats(), new_stats()))
    rows.append(("k-means partial stats, 12288 x 45", ms(old_stats), ms(new_stats)))
    return rows


def run_tree(code: str, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": code, "NUMBA_CACHE_DIR": str(Path(code) / ".cache" / "numba")}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                          text=True, env=env, cwd=code)
    if proc.returncode != 0:
        raise RuntimeError(f"local engine run in {code} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-code", help="a tree whose engine is the baseline (e.g. a checkout of main)")
    ap.add_argument("--quick", action="store_true", help="fewer frames (16 at 256x512, 4 at 1024x2048)")
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma-separated subset of " + ", ".join(SIZES))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    sys.path.insert(0, str(ROOT))
    from videocups_ray.config import Config, with_overrides
    from videocups_ray.data.synthdrive import write_synth_dataset

    trees = {"this": str(ROOT)} | ({"baseline": args.baseline_code} if args.baseline_code else {})
    tmp = Path(tempfile.mkdtemp(prefix="bench_local_engine"))
    print(f"machine: {os.cpu_count()} logical CPUs, no GPU; uptime: {os.popen('uptime').read().strip()}")
    print("\nReplaced hot spots, same inputs and equal outputs (ms per call)")
    print(f"{'kernel':<36}{'old':>9}{'new':>9}{'ratio':>8}")
    for name, old, new in hotspots():
        print(f"{name:<36}{old:>9.2f}{new:>9.2f}{old / new:>7.1f}x")
    print(f"loadavg {os.getloadavg()[0]:.1f}\n", flush=True)
    rows = []
    try:
        warm = tmp / "warmup"
        write_synth_dataset(with_overrides(Config(), synth={"sequences": 1, "frames": 4, "height": 64, "width": 128,
                                                            "seed": TUNING_SEED}).synth, warm, progress=False)
        for i, size in enumerate(args.sizes.split(",")):
            h, w = SIZES[size]
            frames = (16 if args.quick else 24) if h <= 256 else (4 if args.quick else 8)
            corpus = tmp / size
            s = {"sequences": 1, "frames": frames, "height": h, "width": w, "seed": TUNING_SEED}
            write_synth_dataset(with_overrides(Config(), synth=s).synth, corpus, progress=False)
            order = list(trees) if i % 2 == 0 else list(reversed(trees))
            outs = {}
            for name in order:
                outs[name] = str(tmp / f"out_{size}_{name}")
                spec = {"corpus": str(corpus), "warmup": str(warm), "out": outs[name]}
                r = run_tree(trees[name], spec)
                rows.append({"size": size, "tree": name, **r, "load": os.getloadavg()[0]})
                print(f"  measured {size} {name}: {r['frames'] / r['wall_s']:.2f} frames/s   "
                      f"loadavg {os.getloadavg()[0]:.1f}", flush=True)
            if "baseline" in outs:
                rows[-1]["agree"] = rows[-2]["agree"] = agreement(outs["this"], outs["baseline"])
        base = {r["size"]: r["frames"] / r["wall_s"] for r in rows if r["tree"] == "baseline"}
        print("\nWhole local engine (default config, PNG input, pass 1 + pass 2 + shards), SynthDrive tuning seed")
        print(f"{'size':<11}{'tree':<10}{'frames':>7}{'frames/s':>10}{'vs baseline':>12}{'target':>8}"
              f"{'STQ/AQ/SQ %':>20}{'equal sem/inst':>16}{'load':>6}")
        for r in rows:
            fps = r["frames"] / r["wall_s"]
            ratio = f"{fps / base[r['size']]:.2f}x" if r["size"] in base else "-"
            agree = "{:.4f}/{:.4f}".format(*r["agree"]) if "agree" in r else "-"
            q = f"{100 * r['STQ']:.1f}/{100 * r['AQ']:.1f}/{100 * r['SQ']:.1f}"
            print(f"{r['size']:<11}{r['tree']:<10}{r['frames']:>7}{fps:>10.2f}{ratio:>12}"
                  f"{TARGETS[r['size']]:>8.1f}{q:>20}{agree:>16}{r['load']:>6.1f}")
        print(f"uptime after: {os.popen('uptime').read().strip()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
