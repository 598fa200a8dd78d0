"""Throughput of the evaluation metrics at KITTI resolution (1242x375, ~20 segments a frame).

Measures frames/s of STQ, VPQ (windows 1-4) and both, against a baseline measured in the same
run: a straightforward sort-based implementation in the style of the reference evaluators
(``np.unique`` per frame for STQ; for VPQ, every window's frames stacked and counted again
with ``np.unique``, as mcahny/vps eval_vpq does). The baselines' scores are compared with
ours as a cross-check. Projects the time for KITTI-STEP val (~2,900 frames).

    .venv/bin/python benchmarks/bench_eval.py [--quick] [--frames N]
"""

from __future__ import annotations

import argparse
import os
import time
from collections import deque

import numpy as np

from videocups_ray.metrics import STQ, VPQ

H, W = 375, 1242
DIV = 1 << 16
THINGS = (11, 13)
KITTI_STEP_VAL_FRAMES = 2900


# --------------------------------------------------------------------------- synthetic data
def synthetic_sequence(frames: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(gt, pred) panoptic maps: 12 stuff blocks + 8 moving thing boxes, prediction perturbed."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.integers(0, H, 3))
    cols = np.sort(rng.integers(0, W, 3))
    stuff_classes = rng.choice([0, 1, 2, 3, 5, 8, 9, 10], size=(4, 4))
    base = stuff_classes[np.searchsorted(rows, np.arange(H))[:, None], np.searchsorted(cols, np.arange(W))[None, :]]
    base = base.astype(np.int64) * DIV
    base[: H // 10, : W // 8] = 255 * DIV  # a void corner
    boxes = [(rng.integers(0, H - 80), rng.integers(0, W - 150), rng.integers(30, 80), rng.integers(40, 150),
              rng.integers(-4, 5), THINGS[i % 2], i + 1) for i in range(8)]
    out = []
    for t in range(frames):
        gt = base.copy()
        pred = base.copy()
        for y, x, h, w, vx, cls, tid in boxes:
            x = int(np.clip(x + vx * t, 0, W - w))
            gt[y:y + h, x:x + w] = cls * DIV + (tid if tid != 8 else 0)  # box 8 is crowd
            ptid = tid + (100 if t >= frames // 2 and tid == 3 else 0)  # one ID switch
            pred[y + 2:y + h + 2, x + 3:x + w + 3] = cls * DIV + ptid
        noise = rng.random((H // 15 + 1, W // 15 + 1)) < 0.05  # 15x15 px blocks of vegetation
        pred[np.kron(noise, np.ones((15, 15), bool))[:H, :W]] = 8 * DIV
        out.append((gt, pred))
    return out


# --------------------------------------------------------------------------- baselines
class SortBasedSTQ:
    """Per-frame ``np.unique`` counting and dict updates (reference style)."""

    def __init__(self):
        self.conf = np.zeros((20, 20), np.int64)
        self.gt: dict[int, int] = {}
        self.pred: dict[int, int] = {}
        self.inter: dict[tuple[int, int], int] = {}

    @staticmethod
    def _add(d, keys, counts):
        keys = keys.tolist() if isinstance(keys, np.ndarray) else keys
        for k, c in zip(keys, counts.tolist()):
            d[k] = d.get(k, 0) + c

    def update(self, gt: np.ndarray, pred: np.ndarray, seq: int) -> None:
        gt, pred = gt + seq * (1 << 32), pred + seq * (1 << 32)  # tracks are per sequence
        gs, ps = gt // DIV % (1 << 16), pred // DIV % (1 << 16)
        gs, ps = np.where(gs == 255, 19, gs), np.where(ps == 255, 19, ps)
        keys, counts = np.unique(gs * 20 + ps, return_counts=True)
        np.add.at(self.conf, (keys // 20, keys % 20), counts)
        gthing, pthing = np.isin(gs, THINGS), np.isin(ps, THINGS)
        crowd = gthing & (gt % DIV == 0)
        gmask, pmask = gthing & ~crowd, pthing & ~crowd
        self._add(self.gt, *np.unique(gt[gmask], return_counts=True))
        self._add(self.pred, *np.unique(pred[pmask], return_counts=True))
        both = gmask & pmask
        pairs, counts = np.unique(np.stack([gt[both], pred[both]]), axis=1, return_counts=True)
        self._add(self.inter, [tuple(p) for p in pairs.T.tolist()], counts)

    def result(self) -> float:
        aq = sum(i * i / (self.gt[g] + self.pred[p] - i) / self.gt[g]
                 for (g, p), i in self.inter.items()) / max(len(self.gt), 1)
        conf = self.conf.copy()
        conf[19] = 0
        tp = np.diag(conf)
        union = conf.sum(0) + conf.sum(1) - tp
        sq = (tp / np.maximum(union, 1)).sum() / np.count_nonzero(union)
        return float(np.sqrt(aq * sq))


class StackingVPQ:
    """Keeps the last frames and recounts every window with ``np.unique`` (eval_vpq style)."""

    def __init__(self, window_sizes=(1, 2, 3, 4)):
        self.windows = window_sizes
        self.history: dict[int, deque] = {}
        self.stats = {n: {} for n in window_sizes}

    @staticmethod
    def _segments(ids):
        sem = ids // DIV
        seg = np.where(np.isin(sem, THINGS), ids, sem * DIV)
        return np.where(sem == 255, -1, seg)

    def update(self, gt, pred, seq):
        frames = self.history.setdefault(seq, deque(maxlen=max(self.windows)))
        frames.append((self._segments(gt), self._segments(pred)))
        for n in self.windows:
            if len(frames) < n:
                continue
            g = np.stack([f[0] for f in list(frames)[-n:]]).ravel()
            p = np.stack([f[1] for f in list(frames)[-n:]]).ravel()
            keys, inter = np.unique((g + 1) * (1 << 32) + (p + 1), return_counts=True)
            gk, pk = keys // (1 << 32) - 1, keys % (1 << 32) - 1
            ga = {k: c for k, c in zip(*np.unique(g, return_counts=True))}
            pa = {k: c for k, c in zip(*np.unique(p, return_counts=True))}
            void = {pp: c for gg, pp, c in zip(gk, pk, inter) if gg == -1}
            crowd_of = {pp: c for gg, pp, c in zip(gk, pk, inter)
                        if gg >= 0 and gg % DIV == 0 and gg // DIV in THINGS and gg // DIV == pp // DIV}
            st = self.stats[n]
            gm, pm = set(), set()
            for gg, pp, c in zip(gk, pk, inter):
                if gg < 0 or pp < 0 or gg // DIV != pp // DIV or (gg // DIV in THINGS and gg % DIV == 0):
                    continue
                iou = c / (pa[pp] + ga[gg] - c - void.get(pp, 0))
                if iou > 0.5:
                    s = st.setdefault(gg // DIV, [0.0, 0, 0, 0])
                    s[0] += iou
                    s[1] += 1
                    gm.add(gg)
                    pm.add(pp)
            for gg in ga:
                if gg >= 0 and gg not in gm and not (gg // DIV in THINGS and gg % DIV == 0):
                    st.setdefault(gg // DIV, [0.0, 0, 0, 0])[3] += 1
            for pp in pa:
                if pp >= 0 and pp not in pm and (void.get(pp, 0) + crowd_of.get(pp, 0)) / pa[pp] <= 0.5:
                    st.setdefault(pp // DIV, [0.0, 0, 0, 0])[2] += 1

    def result(self) -> float:
        pqs = []
        for st in self.stats.values():
            pqs.append(np.mean([s[0] / (s[1] + 0.5 * s[2] + 0.5 * s[3]) for s in st.values()]))
        return float(np.mean(pqs))


# --------------------------------------------------------------------------- timing
def timed(make, data) -> tuple[float, object]:
    metrics = make()
    t0 = time.perf_counter()
    for seq, frames in enumerate(data):
        for gt, pred in frames:
            for m in metrics:
                m.update(gt, pred, seq)
    scores = [m.result() for m in metrics]
    return time.perf_counter() - t0, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run (2 x 8 frames)")
    ap.add_argument("--frames", type=int, default=None, help="frames per sequence (2 sequences)")
    args = ap.parse_args()
    per_seq = args.frames or (8 if args.quick else 40)
    data = [synthetic_sequence(per_seq, seed) for seed in (1, 2)]
    n = 2 * per_seq
    kw = dict(num_classes=19, things=THINGS, ignore_label=255, label_divisor=DIV)
    cases = [
        ("STQ", lambda: [STQ(**kw)], lambda: [SortBasedSTQ()]),
        ("VPQ (windows 1-4)", lambda: [VPQ(**kw)], lambda: [StackingVPQ()]),
        ("STQ + VPQ", lambda: [STQ(**kw), VPQ(**kw)], lambda: [SortBasedSTQ(), StackingVPQ()]),
    ]
    print(f"{n} frames {W}x{H}, load average before: {tuple(round(x, 2) for x in os.getloadavg())}")
    print(f"{'metric':20s}{'ours f/s':>10s}{'base f/s':>10s}{'speedup':>9s}{'KITTI val':>11s}  agree")
    for name, ours, base in cases:
        t_ours, s_ours = timed(ours, data)
        t_base, s_base = timed(base, data)
        ours_scores = [s["STQ"] if "STQ" in s else s["VPQ"] for s in s_ours]
        agree = all(abs(a - b) < 1e-9 for a, b in zip(ours_scores, s_base))
        print(f"{name:20s}{n / t_ours:10.1f}{n / t_base:10.1f}{t_base / t_ours:8.2f}x"
              f"{KITTI_STEP_VAL_FRAMES * t_ours / n:10.0f}s  {'yes' if agree else 'NO'} "
              f"({', '.join(f'{x:.4f}' for x in ours_scores)})")
    print(f"load average after: {tuple(round(x, 2) for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
