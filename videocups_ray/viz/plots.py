"""Matplotlib figures for the run report (Agg backend: no display needed).

Each function takes plain data (lists, dicts) and returns a figure that
``HtmlReport.figure`` saves and closes, so the plots are testable without a run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from videocups_ray.viz.overlays import CITYSCAPES_NAMES  # noqa: E402


# numeric fields of a metrics.jsonl record that are not losses (pipelines/train_loop.py)
_NOT_LOSSES = {"step", "epoch", "steps_per_s", "images_per_s", "compute_s_per_step", "workers", "pasted_tubes",
               "resumed_from", "time"}


def loss_curves(records: Sequence[Mapping[str, float]]):
    """Total and per-head training losses against the step (``metrics.jsonl`` records)."""
    rows = [r for r in records if "loss" in r and "step" in r]
    if not rows:
        raise ValueError("no training record holds both 'step' and 'loss'")
    keys = ["loss"] + sorted({k for r in rows for k, v in r.items()
                              if isinstance(v, float) and k not in _NOT_LOSSES and k != "loss"})
    fig, ax = plt.subplots(figsize=(7, 3.6))
    steps = [r["step"] for r in rows]
    colours = plt.get_cmap("tab20" if len(keys) > 10 else "tab10")  # one colour per curve (10 repeat)
    for i, k in enumerate(keys):
        ax.plot(steps, [r.get(k, np.nan) for r in rows], lw=2.2 if k == "loss" else 1.0, label=k,
                color=colours(i % colours.N))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("training losses")
    return fig


def save_loss_curves(records: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """:func:`loss_curves` written to ``path`` as a PNG (the training run folder's plot)."""
    fig = loss_curves(records)
    try:
        fig.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def class_iou_bars(per_label: Mapping[str, Sequence[float | None]], names: Sequence[str] = CITYSCAPES_NAMES):
    """Per-class IoU (after the unsupervised matching), one bar group per class; None = absent."""
    if not per_label:
        raise ValueError("no per-class IoU to plot")
    n = max(len(v) for v in per_label.values())
    fig, ax = plt.subplots(figsize=(max(7.0, 0.45 * n), 3.6))
    width = 0.8 / len(per_label)
    for i, (label, ious) in enumerate(per_label.items()):
        vals = [np.nan if v is None else float(v) for v in ious] + [np.nan] * (n - len(ious))
        ax.bar(np.arange(n) + i * width - 0.4 + width / 2, vals, width, label=label)
    ax.set_xticks(np.arange(n), [names[c] if c < len(names) else str(c) for c in range(n)], rotation=60,
                  ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("per-class IoU (classes absent from the ground truth are left empty)")
    return fig


def stage_times(seconds: Mapping[str, float], utilisation: Mapping[str, float] | None = None):
    """Wall seconds per pipeline stage, and (when given) busy fraction per Ray actor kind."""
    if not seconds:
        raise ValueError("no stage timings to plot")
    ncols = 2 if utilisation else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 0.35 * len(seconds) + 1.2), squeeze=False)
    ax = axes[0][0]
    names = list(seconds)
    ax.barh(names, [seconds[n] for n in names], color="#4477aa")
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("time per stage")
    ax.grid(axis="x", alpha=0.3)
    if utilisation:
        ax = axes[0][1]
        kinds = list(utilisation)
        ax.barh(kinds, [100 * utilisation[k] for k in kinds], color="#cc6677")
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("% of wall time busy (per replica)")
        ax.set_title("pseudo-labelling actors: utilisation")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def scores_per_sequence(per_label: Mapping[str, Mapping[str, Mapping[str, float]]]):
    """STQ / AQ / SQ per sequence, one panel per metric, one bar per label kind."""
    if not per_label:
        raise ValueError("no per-sequence scores to plot")
    seqs = sorted({s for per_seq in per_label.values() for s in per_seq})
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), sharey=True)
    width = 0.8 / len(per_label)
    for ax, metric in zip(axes, ("STQ", "AQ", "SQ")):
        for i, (label, per_seq) in enumerate(per_label.items()):
            vals = [per_seq.get(s, {}).get(metric, np.nan) for s in seqs]
            ax.bar(np.arange(len(seqs)) + i * width - 0.4 + width / 2, vals, width, label=label)
        ax.set_xticks(np.arange(len(seqs)), seqs, fontsize=8)
        ax.set_title(metric)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def error_histograms(errors: Mapping[str, np.ndarray], units: Mapping[str, str]):
    """One histogram per cue error (per-pixel values), log-scaled counts."""
    if not errors:
        raise ValueError("no cue errors to plot")
    fig, axes = plt.subplots(1, len(errors), figsize=(3.8 * len(errors), 3.0), squeeze=False)
    for ax, (name, vals) in zip(axes[0], errors.items()):
        v = np.asarray(vals, dtype=np.float64)
        v = v[np.isfinite(v)]
        hi = float(np.percentile(v, 99)) if v.size else 1.0
        ax.hist(np.clip(v, 0, hi), bins=50, color="#228833")
        ax.set_yscale("log")
        ax.set_xlabel(f"{name} ({units.get(name, '')})")
        ax.set_title(f"{name}: median {np.median(v):.3g}" if v.size else f"{name}: no valid pixel")
    fig.tight_layout()
    return fig
