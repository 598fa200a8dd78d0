"""Training-step time of the VPS model on CPU vs torchvision's Mask R-CNN (same run, same size).

Claim (issue 8): one training step of Panoptic Cascade MaskTrack R-CNN, ResNet-18, 256x512,
on one frame pair, takes <= 2 s on CPU. Baseline: ``maskrcnn_resnet50_fpn(min_size=256,
max_size=512)`` on one image (ENVIRONMENT.md: 1.4-2 s here), and the same torchvision model
with a ResNet-18 backbone. A step is forward + backward + SGD update; median of timed steps.

    .venv/bin/python benchmarks/bench_model_step.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from videocups_ray.config import ModelConfig, TrainConfig
from videocups_ray.model import ClassMeta, build_model, collate_pairs

H, W = 256, 512
META = ClassMeta(stuff_classes=tuple(range(10)), thing_classes=(20, 21, 22))


def synthetic_pair(seed: int, objects: int = 6) -> dict:
    """A frame pair with ``objects`` moving boxes of thing classes over striped stuff."""
    g = torch.Generator().manual_seed(seed)
    sem = (torch.arange(H)[:, None] // 26).expand(H, W).clone().repeat(2, 1, 1)
    inst = torch.zeros(2, H, W, dtype=torch.long)
    for k in range(objects):
        h, w = int(torch.randint(20, 90, (1,), generator=g)), int(torch.randint(20, 140, (1,), generator=g))
        y, x = int(torch.randint(0, H - h - 8, (1,), generator=g)), int(torch.randint(0, W - w - 8, (1,), generator=g))
        for f in range(2):
            inst[f, y + f * 2 : y + h + f * 2, x + f * 5 : x + w + f * 5] = k + 1
            sem[f][inst[f] == k + 1] = META.thing_classes[k % 3]
    return {"images": torch.rand(2, 3, H, W, generator=g), "semantic": sem, "instance": inst,
            "ignore": torch.zeros(2, H, W, dtype=torch.bool)}


def time_interleaved(steps_by_name: dict, warmup: int, steps: int) -> dict[str, float]:
    """Median seconds per step; models take turns step by step, so load drift hits all alike."""
    for step in steps_by_name.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(steps):
        for name, step in steps_by_name.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def ours_step(pair_inputs: dict, with_reference: bool, **model_kw):
    model = build_model(
        ModelConfig(backbone="resnet18", backbone_norm="bn", trainable_backbone_layers=5, **model_kw),
        META.num_stuff, META.num_thing, TrainConfig(),
    ).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    inputs = dict(pair_inputs) if with_reference else {"images": pair_inputs["images"], "targets": pair_inputs["targets"]}

    def step():
        opt.zero_grad()
        sum(model(**inputs).values()).backward()
        opt.step()
    return step


def torchvision_step(pair_inputs: dict, backbone: str):
    kw = dict(num_classes=META.num_thing + 1, min_size=H, max_size=W)
    if backbone == "resnet50":
        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kw)
    else:
        model = MaskRCNN(resnet_fpn_backbone(backbone_name=backbone, weights=None, trainable_layers=5), **kw)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    targets = [{k: t[k] for k in ("boxes", "labels", "masks")} for t in pair_inputs["targets"]]

    def step():
        opt.zero_grad()
        sum(model(pair_inputs["images"], targets).values()).backward()
        opt.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up + 3 timed steps per model")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warmup, steps = (1, 3) if args.quick else (2, 8)
    torch.manual_seed(0)
    inputs = collate_pairs([synthetic_pair(0)], META)
    rows = [
        ("torchvision maskrcnn_resnet50_fpn, 1 image (baseline)", torchvision_step(inputs, "resnet50")),
        ("torchvision Mask R-CNN resnet18, 1 image", torchvision_step(inputs, "resnet18")),
        ("ours resnet18 cascade, key frame only", ours_step(inputs, with_reference=False)),
        ("ours resnet18 cascade + track, 1 pair (2 images)", ours_step(inputs, with_reference=True)),
        ("ours, torchvision widths (fpn 256, fc 1024), 1 pair", ours_step(inputs, True, fpn_channels=256, box_head_dim=1024)),
    ]
    print(f"train step at {H}x{W}, CPU, torch threads {torch.get_num_threads()}, load avg before {os.getloadavg()}")
    medians = time_interleaved(dict(rows), warmup, steps)
    results = [(name, medians[name]) for name, _ in rows]
    base = results[0][1]
    print(f"{'model':58s} {'median s/step':>14s} {'vs baseline':>12s}")
    for name, sec in results:
        print(f"{name:58s} {sec:14.3f} {sec / base:11.2f}x")
    print(f"load avg after {os.getloadavg()}; target: ours, 1 pair <= 2.0 s")


if __name__ == "__main__":
    main()
