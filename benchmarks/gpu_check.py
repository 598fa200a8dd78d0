"""One prepared GPU check: kernel equality and timings, learned cues, tracker, training step.

GPU time for this project is rare and short, so everything that needs a GPU is measured by this
one script in one run of at most 8 minutes on one H100/H200 (each section has a time budget;
an item whose section ran out of time is listed as skipped, never dropped). It writes one
Markdown table (card, driver, versions first) that the README's performance section takes in
as is, and the same rows as JSON beside it.

Sections (sizes of the real run; ``--dry-run`` uses tiny ones on the CPU):
1. the CuPy kernel tests (``tests/test_kernels_gpu.py``), then CuPy == Numba == reference on
   benchmark-sized inputs;
2. ``region_grow``, ``warp_labels``, ``warp_probs`` (27 channels), ``occlusion_mask``,
   ``iou_matrix`` and ``majority_vote3`` at 640x1280 and 1024x2048: CuPy vs Numba (CPU, same run);
3. the learned cue backends with random weights at 640x1280 (RAFT large/small, DINO ViT-S/8 and
   ViT-B/8, Monodepth2 layout), frames/s in fp32 and in bf16 + channels-last (ratio to fp32);
4. the tracker step (proposals + tracking) with CuPy region growing vs Numba;
5. one VPS-model training step (frame pairs) in bf16 vs fp32, images/s.

It needs neither Ray nor pydantic: it imports only the pure modules and reads config defaults
with ``videocups_ray.config_plain``. Without a GPU it stops with an error (exit 2) unless
``--dry-run`` is given; ``tests/test_gpu_check.py`` runs the dry run so the script cannot rot.
Exit 1 if any check failed (a mismatch or an exception, each listed in the table).

On the GPU machine (Python 3.12 with torch, torchvision, CuPy, Numba, scipy, OpenCV, pyarrow,
pytest, hypothesis already there; no network, <= 64 MiB carried, wheels included): carry the
repository and run

    python3 benchmarks/gpu_check.py --out runs/gpu_check.md

No wheel needs to be carried for that image. Where a package is missing (``python3 -m pip show``
it there first), download its wheel here and install it there from the carried folder:

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp --platform manylinux2014_x86_64 -d .whl scipy==1.17.1
    # there: python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
    #        PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py

``make gpu-check`` runs the real check; ``make gpu-check ARGS=--dry-run`` the CPU rehearsal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from videocups_ray import kernels  # noqa: E402
from videocups_ray.config_plain import plain_section  # noqa: E402
from videocups_ray.kernels import reference  # noqa: E402

FULL_SIZES = ((640, 1280), (1024, 2048))
DRY_SIZES = ((48, 96), (64, 128))
SECTION_BUDGET_S = {"kernel tests": 90, "kernels": 120, "cues": 150, "tracker": 45, "training": 60}


class NoGpuError(RuntimeError):
    """The real check was asked for on a machine without a usable CUDA GPU."""


# --------------------------------------------------------------------------- device and timing
class Device:
    """Where the "GPU" side runs: CUDA + CuPy, or (dry run) the CPU with numpy."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        if dry_run:
            self.torch, self.xp, self.labeling = "cpu", np, "cpu"
            return
        if not torch.cuda.is_available():
            raise NoGpuError("no CUDA GPU is visible to torch (torch.cuda.is_available() is False); "
                             "run on a GPU machine, or pass --dry-run for the CPU rehearsal")
        try:
            import cupy
        except ImportError as exc:
            raise NoGpuError(f"CuPy is not installed ({exc}); the GPU kernels need cupy-cuda13x") from exc
        if not cupy.cuda.is_available():
            raise NoGpuError("CuPy sees no CUDA GPU (cupy.cuda.is_available() is False)")
        self.torch, self.xp, self.labeling = "cuda", cupy, "cuda"

    def to(self, arr: np.ndarray) -> Any:
        return self.xp.asarray(arr)

    def back(self, arr: Any) -> np.ndarray:
        return arr if isinstance(arr, np.ndarray) else self.xp.asnumpy(arr)

    def sync(self) -> None:
        if not self.dry_run:
            self.xp.cuda.Device().synchronize()
            torch.cuda.synchronize()

    def autocast(self, bf16: bool):
        return torch.autocast(self.torch, dtype=torch.bfloat16) if bf16 else nullcontext()


class Budget:
    """A deadline per section: timing loops stop early, later items are reported as skipped."""

    def __init__(self, scale: float, warmup: int):
        self.scale = scale
        self.warmup = warmup  # untimed calls before timing (cuDNN autotuning, compiles); 0 in the dry run
        self.deadline = float("inf")

    @contextmanager
    def section(self, name: str):
        self.deadline = time.perf_counter() + SECTION_BUDGET_S[name] * self.scale
        yield
        self.deadline = float("inf")

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def time_call(fn: Callable[[], Any], sync: Callable[[], None], budget: Budget, reps: int) -> tuple[float, int]:
    """(median seconds, timed calls): ``budget.warmup`` untimed calls, then up to ``reps`` calls while the
    section has time left (at least one). The same method for every row, baselines included."""
    for _ in range(budget.warmup):
        fn()
        sync()
    times: list[float] = []
    while len(times) < reps and (not times or budget.left() > 0):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


class Report:
    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.failures = 0

    def add(self, section: str, item: str, size: str, value: str, *, ratio: str = "", note: str = "",
            failed: bool = False) -> None:
        self.failures += failed
        self.rows.append({"section": section, "item": item, "size": size, "value": value, "ratio": ratio,
                          "note": ("FAILED: " if failed else "") + note})

    def skipped(self, section: str, item: str, size: str) -> None:
        self.add(section, item, size, "—", note="skipped: section time budget spent")

    def guard(self, section: str, item: str, size: str, fn: Callable[[], None]) -> None:
        """Run one item; an exception becomes a FAILED row with its first line (the run goes on)."""
        try:
            fn()
        except (RuntimeError, ValueError, TypeError, AssertionError, MemoryError, ImportError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            self.add(section, item, size, "—", note=f"{type(exc).__name__}: {first}", failed=True)


def ms(sec: float) -> str:
    return f"{sec * 1e3:.2f} ms"


# --------------------------------------------------------------------------- 1-2: kernels
def synthetic_cues(h: int, w: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Depth ramp, moving boxes (about 13 % of pixels above alpha), fw/bw flow, 27-class maps."""
    rng = np.random.default_rng(seed)
    yy = np.arange(h, dtype=np.float32)[:, None]
    depth = np.broadcast_to(np.clip(1.65 * h / np.maximum(yy - h * 0.4, 1), 2, 80), (h, w)).astype(np.float32).copy()
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0] = (np.arange(w, dtype=np.float32)[None, :] - w / 2) * 0.01
    motion = (rng.random((h, w)) * 0.1).astype(np.float32)
    inst = np.zeros((h, w), np.int32)
    for k in range(50):
        bh, bw = int(rng.integers(h // 40 + 2, h // 8 + 3)), int(rng.integers(w // 40 + 2, w // 8 + 3))
        y, x = int(rng.integers(0, h - bh)), int(rng.integers(0, w - bw))
        inst[y:y + bh, x:x + bw] = k + 1
        if k < 12:
            motion[y:y + bh, x:x + bw] = 0.9
            flow[y:y + bh, x:x + bw] = (rng.uniform(-6, 6), rng.uniform(-1, 1))
            depth[y:y + bh, x:x + bw] = rng.uniform(5, 40)
    bw_flow = -flow + (rng.standard_normal((h, w, 2)) * 0.2).astype(np.float32)
    sem = (yy // max(1, h // 27)).astype(np.uint8) % 27
    sem = np.broadcast_to(sem, (h, w)).copy()
    probs = rng.random((h, w, 27)).astype(np.float32)
    return {"depth": depth, "flow": flow, "bw": bw_flow, "motion": motion, "inst": inst, "sem": sem,
            "probs": probs, "other": np.roll(inst, 3, axis=1), "sem_prev": np.roll(sem, 1, axis=0),
            "sem_next": np.roll(sem, -2, axis=1)}


def kernel_ops(c: dict, on: Callable[[np.ndarray], Any], occ: Any) -> dict[str, Callable[[], Any]]:
    cfg = plain_section("LabelingConfig")
    d = {k: on(v) for k, v in c.items()}
    return {
        "region_grow (r=8)": lambda: kernels.region_grow(d["depth"], d["flow"], d["motion"], alpha=cfg.alpha,
                                                        radius=cfg.radius, tau_d=cfg.tau_d, tau_f=cfg.tau_f,
                                                        min_pixels=cfg.min_pixels),
        "warp_labels": lambda: kernels.warp_labels(d["inst"], d["flow"], occ),
        "warp_probs (27 ch)": lambda: kernels.warp_probs(d["probs"], d["flow"], occ),
        "occlusion_mask": lambda: kernels.occlusion_mask(d["flow"], d["bw"]),
        "iou_matrix (50 inst)": lambda: kernels.iou_matrix(d["inst"], d["other"], None),
        "majority_vote3": lambda: kernels.majority_vote3(d["sem_prev"], d["sem"], d["sem_next"]),
    }


def _same(a: Any, b: Any, dev: Device) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y, dev) for x, y in zip(a, b))
    return np.array_equal(dev.back(a), dev.back(b), equal_nan=True)


def run_kernel_tests(dev: Device, budget: Budget, rep: Report, sizes) -> None:
    sec = "kernel tests"
    if dev.dry_run:
        rep.add(sec, "tests/test_kernels_gpu.py", "", "—", note="dry run: needs a GPU (runs in the real check)")
    else:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/test_kernels_gpu.py"]
        try:
            out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(10, budget.left()))
            tail = (out.stdout.strip().splitlines() or ["(no output)"])[-1]
            rep.add(sec, "tests/test_kernels_gpu.py (pytest -m gpu)", "", tail, failed=out.returncode != 0)
        except subprocess.TimeoutExpired:
            rep.add(sec, "tests/test_kernels_gpu.py (pytest -m gpu)", "", "—", note="timed out", failed=True)
    # equality on benchmark-sized inputs: device == Numba everywhere, Numba == reference at the first size
    for i, (h, w) in enumerate(sizes):
        c = synthetic_cues(h, w, seed=i)
        occ = kernels.occlusion_mask(c["flow"], c["bw"])
        numba_ops = kernel_ops(c, np.asarray, occ)
        dev_ops = kernel_ops(c, dev.to, dev.to(occ))
        for name in numba_ops:
            def check(name=name, h=h, w=w, i=i, c=c, occ=occ):
                want = numba_ops[name]()
                assert _same(dev_ops[name](), want, dev), f"{name}: device result differs from Numba"
                if i == 0:
                    ref = _reference(name, c, occ)
                    assert _same(ref, want, dev), f"{name}: Numba differs from the numpy reference"
                rep.add(sec, f"{name} equal", f"{h}x{w}", "equal",
                        note="device == Numba" + (" == reference" if i == 0 else ""))
            rep.guard(sec, f"{name} equal", f"{h}x{w}", check)


def _reference(name: str, c: dict, occ: np.ndarray) -> Any:
    cfg = plain_section("LabelingConfig")
    if name.startswith("region_grow"):
        return reference.region_grow(c["depth"], c["flow"], c["motion"], alpha=cfg.alpha, radius=cfg.radius,
                                     tau_d=cfg.tau_d, tau_f=cfg.tau_f, min_pixels=cfg.min_pixels)
    if name == "warp_labels":
        return reference.warp_labels(c["inst"], c["flow"], occ, 0)
    if name.startswith("warp_probs"):
        return reference.warp_probs(c["probs"], c["flow"], occ, 0.0)
    if name == "occlusion_mask":
        return reference.occlusion_mask(c["flow"], c["bw"], 0.01, 0.5)
    if name.startswith("iou_matrix"):
        return reference.iou_matrix(c["inst"], c["other"], None)
    return reference.majority_vote3(c["sem_prev"], c["sem"], c["sem_next"], 255)


def run_kernel_timing(dev: Device, budget: Budget, rep: Report, sizes, reps: int) -> None:
    sec = "kernels"
    for i, (h, w) in enumerate(sizes):
        c = synthetic_cues(h, w, seed=i)
        occ = kernels.occlusion_mask(c["flow"], c["bw"])
        numba_ops, dev_ops = kernel_ops(c, np.asarray, occ), kernel_ops(c, dev.to, dev.to(occ))
        for name in numba_ops:
            if budget.left() <= 0:
                rep.skipped(sec, name, f"{h}x{w}")
                continue

            def timed(name=name, h=h, w=w):
                base, _ = time_call(numba_ops[name], lambda: None, budget, reps)
                got, n = time_call(dev_ops[name], dev.sync, budget, reps)
                label = "Numba (dry run)" if dev.dry_run else "CuPy"
                rep.add(sec, name, f"{h}x{w}", f"{label} {ms(got)}", ratio=f"{base / got:.1f}x vs Numba {ms(base)}",
                        note=f"median of {n}")
            rep.guard(sec, name, f"{h}x{w}", timed)


# --------------------------------------------------------------------------- 3: learned cues
def run_cues(dev: Device, budget: Budget, rep: Report, size: tuple[int, int], reps: int) -> None:
    from videocups_ray.cues.flow import RaftFlow, build_raft_net
    from videocups_ray.cues.monodepth import DepthMotionNet, MonoDepth
    from videocups_ray.cues.vit import DinoFeatures, build_vit

    sec = "cues"
    h, w = size
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (2, h, w, 3), dtype=np.uint8)  # one frame pair
    raft_h, raft_w = (max(h, 128), max(w, 256))  # RAFT's correlation pyramid needs >= 128 px
    raft_frames = rng.integers(0, 255, (2, raft_h, raft_w, 3), dtype=np.uint8)
    iters = 2 if dev.dry_run else 12
    crop = 64 if dev.dry_run else 224
    backends = {
        "RAFT large (fw+bw, 12 iters)": lambda: (RaftFlow(build_raft_net("raft_large"), iters=iters, device=dev.torch),
                                                 lambda e: e(raft_frames[:1], raft_frames[1:]), (raft_h, raft_w)),
        "RAFT small (fw+bw, 12 iters)": lambda: (RaftFlow(build_raft_net("raft_small"), iters=iters, device=dev.torch),
                                                 lambda e: e(raft_frames[:1], raft_frames[1:]), (raft_h, raft_w)),
        "DINO ViT-S/8 (crops + half res)": lambda: (DinoFeatures(build_vit("vit_small_patch8"), crop_size=crop,
                                                                 device=dev.torch), lambda e: e(frames[:1]), size),
        "DINO ViT-B/8 (crops + half res)": lambda: (DinoFeatures(build_vit("vit_base_patch8"), crop_size=crop,
                                                                 device=dev.torch), lambda e: e(frames[:1]), size),
        "Monodepth2 layout (ResNet-18)": lambda: (MonoDepth(DepthMotionNet("resnet18"), device=dev.torch),
                                                  lambda e: e(frames[:1]), size),
    }
    if dev.dry_run:  # one network per family: the larger layouts run the same code path
        for name in ("RAFT large (fw+bw, 12 iters)", "DINO ViT-B/8 (crops + half res)"):
            del backends[name]
            rep.add(sec, name, f"{h}x{w}", "—", note="dry run: same path as the smaller layout; runs in the real check")
    torch.manual_seed(0)
    for name, make in backends.items():
        if budget.left() <= 0:
            rep.skipped(sec, name, f"{h}x{w}")
            continue

        def timed(name=name, make=make):
            est, call, (hh, ww) = make()
            est.setup(dev.torch)
            fp32, _ = time_call(lambda: call(est), dev.sync, budget, reps)
            rep.add(sec, name, f"{hh}x{ww}", f"{1 / fp32:.1f} frames/s", note=f"fp32, {ms(fp32)} per frame")
            est.net.to(memory_format=torch.channels_last)
            with dev.autocast(True):
                bf16, n = time_call(lambda: call(est), dev.sync, budget, reps)
            rep.add(sec, name, f"{hh}x{ww}", f"{1 / bf16:.1f} frames/s", ratio=f"{fp32 / bf16:.2f}x vs fp32",
                    note=f"bf16 autocast + channels-last, median of {n}")
        rep.guard(sec, name, f"{h}x{w}", timed)
        if not dev.dry_run:
            torch.cuda.empty_cache()  # the estimator of ``timed`` is gone: free its memory for the next


# --------------------------------------------------------------------------- 4: tracker step
def tracker_cues(n: int, h: int, w: int, channels: int = 17, stride: int = 4) -> list:
    from videocups_ray.labeling import FrameCues

    rng = np.random.default_rng(1)
    base = synthetic_cues(h, w, seed=3)
    proto = rng.normal(size=(27, channels)).astype(np.float32)
    out = []
    for t in range(n):
        shift = 2 * t
        depth = np.roll(base["depth"], shift, axis=1)
        motion = np.roll(base["motion"], shift, axis=1)
        flow = np.roll(base["flow"], shift, axis=1)
        occ = kernels.occlusion_mask(flow, -flow)
        cls = np.roll(base["sem"], shift, axis=1)[::stride, ::stride].astype(np.int64)
        feats = proto[cls].transpose(2, 0, 1) + 0.3 * rng.normal(size=(channels, *cls.shape)).astype(np.float32)
        feats /= np.linalg.norm(feats, axis=0, keepdims=True)
        out.append(FrameCues("gpu-check", t, depth, motion, flow, -flow if t else None, occ, occ if t else None,
                             feats, feats.copy()))
    return out


def run_tracker(dev: Device, budget: Budget, rep: Report, size: tuple[int, int]) -> None:
    from videocups_ray.labeling import SemanticLabeler, VideoTracker, propose_frame
    from videocups_ray.labeling.semantics import init_centroids

    sec = "tracker"
    h, w = size
    n = 3 if dev.dry_run else 12
    cues = tracker_cues(n, h, w)
    sample = np.concatenate([c.features_high.reshape(c.features_high.shape[0], -1).T[::7] for c in cues])

    def one_pass(device: str) -> tuple[float, list]:
        cfg = plain_section("LabelingConfig", device=device, clip_length=n)
        labeler = SemanticLabeler(init_centroids(sample, cfg.num_clusters, seed=0), cfg)
        tracker = VideoTracker(cfg, semantics=labeler, emit="online")
        t0 = time.perf_counter()
        done = [f for c in cues for f in tracker.push(propose_frame(c, cfg, labeler))]
        done += tracker.flush()
        return (time.perf_counter() - t0) / n, done

    def timed():
        one_pass("cpu")  # warm-up: Numba compile / cache load, CuPy kernels below
        one_pass(dev.labeling)
        cpu_s, cpu_out = one_pass("cpu")
        dev_s, dev_out = one_pass(dev.labeling)
        same = all(np.array_equal(a.instance, b.instance) and np.array_equal(a.semantic, b.semantic)
                   for a, b in zip(cpu_out, dev_out)) and len(cpu_out) == len(dev_out)
        label = "Numba (dry run)" if dev.dry_run else "CuPy region growing"
        rep.add(sec, "proposals + tracking per frame", f"{h}x{w}", f"{1 / dev_s:.1f} frames/s",
                ratio=f"{cpu_s / dev_s:.2f}x vs Numba {1 / cpu_s:.1f} frames/s",
                note=f"{label}; labels {'identical' if same else 'DIFFER'}", failed=not same)
    rep.guard(sec, "proposals + tracking per frame", f"{h}x{w}", timed)


# --------------------------------------------------------------------------- 5: training step
def synthetic_pair(h: int, w: int, thing_classes: tuple[int, ...], seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    sem = (torch.arange(h)[:, None] * 10 // h).expand(h, w).clone().repeat(2, 1, 1)
    inst = torch.zeros(2, h, w, dtype=torch.long)
    for k in range(6):
        bh, bw = max(4, h // 6), max(4, w // 8)
        y, x = int(torch.randint(0, h - bh - 4, (1,), generator=g)), int(torch.randint(0, w - bw - 8, (1,), generator=g))
        for f in range(2):
            inst[f, y + f: y + bh + f, x + 2 * f: x + bw + 2 * f] = k + 1
            sem[f][inst[f] == k + 1] = thing_classes[k % len(thing_classes)]
    return {"images": torch.rand(2, 3, h, w, generator=g), "semantic": sem, "instance": inst,
            "ignore": torch.zeros(2, h, w, dtype=torch.bool)}


def _to(obj: Any, device: str) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def run_training(dev: Device, budget: Budget, rep: Report, size: tuple[int, int], pairs: int, reps: int) -> None:
    from videocups_ray.model import ClassMeta, build_model, collate_pairs

    sec = "training"
    h, w = size
    meta = ClassMeta(stuff_classes=tuple(range(10)), thing_classes=(20, 21, 22))
    batch = _to(collate_pairs([synthetic_pair(h, w, meta.thing_classes, s) for s in range(pairs)], meta), dev.torch)
    mcfg = plain_section("ModelConfig", backbone_norm="bn", trainable_backbone_layers=5, min_size=h, max_size=w)

    def timed():
        torch.manual_seed(0)
        model = build_model(mcfg, meta.num_stuff, meta.num_thing, plain_section("TrainConfig")).to(dev.torch).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)

        def step(bf16: bool) -> None:
            opt.zero_grad(set_to_none=True)
            with dev.autocast(bf16):
                loss = sum(model(**batch).values())
            loss.backward()
            opt.step()
        fp32, _ = time_call(lambda: step(False), dev.sync, budget, reps)
        model.to(memory_format=torch.channels_last)
        bf16, n = time_call(lambda: step(True), dev.sync, budget, reps)
        images = 2 * pairs
        rep.add(sec, f"VPS model step, ResNet-18, {pairs} pairs", f"{h}x{w}", f"{images / bf16:.1f} images/s",
                ratio=f"{fp32 / bf16:.2f}x vs fp32 {images / fp32:.1f} images/s",
                note=f"bf16 autocast + channels-last, AdamW, median of {n}")
    rep.guard(sec, f"VPS model step, {pairs} pairs", f"{h}x{w}", timed)


# --------------------------------------------------------------------------- report
def environment(dev: Device) -> dict[str, str]:
    import cv2
    import numba
    import pyarrow
    import scipy
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "numba": numba.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
           "opencv": cv2.__version__, "pyarrow": pyarrow.__version__, "cpu cores": str(os.cpu_count())}
    if dev.dry_run:
        env.update(card=f"none (dry run on {platform.machine()} CPU)", driver="—", cuda="—", cupy="—")
        return env
    env.update(card=torch.cuda.get_device_name(0), cuda=str(torch.version.cuda), cupy=dev.xp.__version__)
    smi = shutil.which("nvidia-smi")
    driver = ""
    if smi:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
        driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    if not driver:
        v = dev.xp.cuda.runtime.driverGetVersion()
        driver = f"CUDA driver API {v // 1000}.{v % 1000 // 10} (nvidia-smi not found)"
    env["driver"] = driver
    return env


def markdown(env: dict[str, str], rep: Report, wall_s: float, dry_run: bool) -> str:
    head = (f"GPU check{' (DRY RUN: tiny shapes on the CPU, not a measurement)' if dry_run else ''}: "
            f"**{env['card']}**, driver {env['driver']}, CUDA {env['cuda']}; "
            + ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "torchvision", "cupy", "numba", "numpy",
                                                 "scipy", "opencv", "pyarrow", "cpu cores"))
            + f"; {time.strftime('%Y-%m-%d')}, whole run {wall_s:.0f} s, {rep.failures} failed.")
    lines = [head, "", "| section | item | size | result | ratio to baseline (same run) | note |",
             "|---|---|---|---|---|---|"]
    for r in rep.rows:
        cells = [r[k].replace("|", "/") for k in ("section", "item", "size", "value", "ratio", "note")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (no GPU needed; for the tests)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "gpu_check.md"), help="Markdown table (JSON beside it)")
    ap.add_argument("--budget-scale", type=float, default=1.0, help="multiply every section's time budget")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        dev = Device(args.dry_run)
    except NoGpuError as exc:
        print(f"gpu_check: error: {exc}", file=sys.stderr)
        return 2
    sizes = DRY_SIZES if args.dry_run else FULL_SIZES
    reps = 1 if args.dry_run else 10
    budget, rep = Budget(args.budget_scale, warmup=0 if args.dry_run else 1), Report()
    env = environment(dev)
    print(f"gpu_check: {env['card']}; sections and budgets (s): {SECTION_BUDGET_S}", flush=True)
    with budget.section("kernel tests"):
        run_kernel_tests(dev, budget, rep, sizes)
    with budget.section("kernels"):
        run_kernel_timing(dev, budget, rep, sizes, reps)
    with budget.section("cues"):
        run_cues(dev, budget, rep, sizes[0] if not args.dry_run else (64, 128), reps)
    with budget.section("tracker"):
        run_tracker(dev, budget, rep, sizes[0])
    with budget.section("training"):
        run_training(dev, budget, rep, (64, 128) if args.dry_run else sizes[0], 1 if args.dry_run else 4, reps)
    text = markdown(env, rep, time.perf_counter() - t0, args.dry_run)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"env": env, "rows": rep.rows, "failures": rep.failures,
                                                    "dry_run": args.dry_run}, indent=2))
    print(text)
    print(f"gpu_check: wrote {out} and {out.with_suffix('.json')}; {rep.failures} failed", flush=True)
    return 1 if rep.failures else 0


if __name__ == "__main__":
    sys.exit(main())
