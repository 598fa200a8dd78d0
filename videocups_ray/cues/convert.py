"""Convert official checkpoint layouts into the files the learned backends load.

Pure functions (``state dict in -> state dict out``) plus :func:`convert_checkpoint`, which reads
the official file(s) through ``data.checkpoints`` (weights only) and writes a plain state dict of
tensors with ``torch.save``: the layout ``cues.checkpoints.load_checkpoint`` (flow, depth,
features) and ``model.backbone.load_backbone_checkpoint`` read. Every converter checks the
result key for key (and shape for shape) against the target network built with random weights,
so a file that lacks a tensor fails here, naming the key, rather than at pseudo-labeling time.

Kinds (``videocups convert-checkpoint KIND INPUT... --out FILE``):

- ``raft``: a torchvision RAFT state dict (``raft_small_C_T_V2-*.pth``, ``raft_large_*.pth``);
  ``raft_small`` / ``raft_large`` is recognised from the keys. Target: ``cues.flow.checkpoint``.
- ``dino-vit``: DINO's ``dino_vits8_pretrain.pth`` / ``dino_vitb8_pretrain.pth`` (or a full
  training checkpoint: its ``teacher``, ``backbone.`` prefix, projection ``head.*`` dropped);
  ViT-S/8 or ViT-B/8 from the embedding width. Target: ``cues.features.checkpoint``.
- ``dino-resnet50``: DINO's ``dino_resnet50_pretrain.pth`` (torchvision ResNet-50 names, no
  ``fc``). Target: the model's backbone checkpoint (``model.backbone.load_backbone_checkpoint``).
- ``monodepth2``: Monodepth2's ``encoder.pth`` + ``depth.pth`` (ResNet-18 or -50 encoder),
  merged under ``encoder.`` / ``depth_decoder.`` (``cues.monodepth``). Monodepth2 has no motion
  decoder: give a DynamoDepth-style motion decoder file (same decoder layout) with
  ``motion_decoder``, or ask explicitly for ``no_motion`` (a head whose motion probability is
  ~0 everywhere, so movers come from elsewhere). Target: ``cues.depth.checkpoint``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from videocups_ray.data.checkpoints import CheckpointError, read_torch_file, write_torch_file

KINDS = ("raft", "dino-vit", "dino-resnet50", "monodepth2")
_WRAPPERS = ("state_dict", "model", "teacher")
_PREFIXES = ("module.", "backbone.")
_NO_MOTION_BIAS = -20.0  # logit of the constant motion head: sigmoid(-20) ~ 2e-9


def read_official(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and non-tensor entries (e.g. Monodepth2's ``height``/``width``) of an official
    checkpoint, unwrapped from ``state_dict``/``model``/``teacher`` and with ``module.`` /
    ``backbone.`` prefixes removed. Never executes pickled code."""
    obj = read_torch_file(path, "official checkpoint")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a state dict")
    for key in _WRAPPERS:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    tensors, other = {}, {}
    for key, value in obj.items():
        key = str(key)
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
        (tensors if isinstance(value, torch.Tensor) else other)[key] = value
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors")
    return tensors, other


def check_against(state: Mapping[str, torch.Tensor], net: nn.Module | Mapping[str, torch.Tensor],
                  what: str) -> dict[str, torch.Tensor]:
    """``state`` restricted to ``net``'s keys; a missing key, or a tensor of another shape, is a
    :class:`CheckpointError` naming it (and ``what``, e.g. the input file)."""
    expected = net.state_dict() if isinstance(net, nn.Module) else net
    missing = [k for k in expected if k not in state]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{what}: missing key {missing[0]!r}{more}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{what}: key {k!r} has shape {tuple(state[k].shape)}, "
                                  f"the target expects {tuple(v.shape)}")
    return {k: state[k].detach().clone().contiguous() for k in expected}


# --------------------------------------------------------------------------- converters
def convert_raft(state: Mapping[str, torch.Tensor], what: str = "raft") -> tuple[dict[str, torch.Tensor], str]:
    """torchvision RAFT -> ``cues.flow`` (same names); returns (state, arch)."""
    from videocups_ray.cues.flow import build_raft_net

    nets = {a: build_raft_net(a).state_dict() for a in ("raft_small", "raft_large")}

    def fit(expected: Mapping[str, torch.Tensor]) -> float:
        return sum(k in state and state[k].shape == v.shape for k, v in expected.items()) / len(expected)

    arch = max(nets, key=lambda a: fit(nets[a]))  # the architecture most keys and shapes agree with
    return check_against(state, nets[arch], what), arch


def convert_dino_vit(state: Mapping[str, torch.Tensor], what: str = "dino-vit") -> tuple[dict[str, torch.Tensor], str]:
    """DINO ViT-S/8 or ViT-B/8 -> ``cues.vit`` (the same names; ``head.*`` dropped)."""
    from videocups_ray.cues.vit import ARCHS, build_vit

    w = state.get("patch_embed.proj.weight")
    if w is None:
        raise CheckpointError(f"{what}: missing key 'patch_embed.proj.weight'")
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    arch = next((a for a, (d, _, _, p) in ARCHS.items() if d == dim and p == patch), None)
    if arch is None:
        raise CheckpointError(f"{what}: a ViT of width {dim} and patch {patch} is none of "
                              f"{sorted(ARCHS)} (DINO ViT-S/8: 384/8, ViT-B/8: 768/8)")
    return check_against(state, build_vit(arch), what), arch


def _resnet50_body_keys() -> dict[str, torch.Tensor]:
    from torchvision.models import resnet50

    return {k: v for k, v in resnet50(weights=None).state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def convert_dino_resnet50(state: Mapping[str, torch.Tensor], what: str = "dino-resnet50"
                          ) -> tuple[dict[str, torch.Tensor], str]:
    """DINO ResNet-50 -> the model backbone's torchvision body names (no ``fc``, no BN counters)."""
    return check_against(state, _resnet50_body_keys(), what), "resnet50"


def convert_monodepth2(encoder: Mapping[str, torch.Tensor], depth: Mapping[str, torch.Tensor],
                       motion: Mapping[str, torch.Tensor] | None = None, *, no_motion: bool = False,
                       what: str = "monodepth2") -> tuple[dict[str, torch.Tensor], str]:
    """Monodepth2 ``encoder.pth`` (keys ``encoder.*``) + ``depth.pth`` (``decoder.*``) [+ a motion
    decoder in the depth decoder's layout] -> ``cues.monodepth.DepthMotionNet``."""
    from videocups_ray.cues.monodepth import DepthMotionNet

    if motion is None and not no_motion:
        raise CheckpointError(f"{what}: Monodepth2 has no motion decoder; give a motion decoder file "
                              "(--motion-decoder) or ask for a constant p=0 head (--no-motion)")
    arch = "resnet50" if "encoder.layer1.0.conv3.weight" in encoder else "resnet18"
    net = DepthMotionNet(arch)
    merged = {"encoder." + k: v for k, v in encoder.items()}
    merged.update({"depth_decoder." + k: v for k, v in depth.items()})
    if motion is not None:
        merged.update({"motion_decoder." + k: v for k, v in motion.items()})
    else:
        for k, v in net.motion_decoder.state_dict().items():
            merged["motion_decoder." + k] = torch.zeros_like(v)
        last = f"decoder.{len(net.motion_decoder.decoder) - len(net.motion_decoder.scales)}.conv.bias"
        merged["motion_decoder." + last] = torch.full_like(merged["motion_decoder." + last], _NO_MOTION_BIAS)
    expected = net.state_dict()
    for part, src in (("encoder.", "encoder.pth"), ("depth_decoder.", "depth.pth"), ("motion_decoder.", "motion")):
        sub = {k: v for k, v in expected.items() if k.startswith(part)}
        check_against(merged, sub, f"{what} ({src}, as {part}*)")
    return check_against(merged, expected, what), arch


def convert_checkpoint(kind: str, inputs: list[str | Path], out: str | Path, *,
                       motion_decoder: str | Path | None = None, no_motion: bool = False) -> dict[str, Any]:
    """Read the official file(s) of ``kind``, convert, check, and ``torch.save`` to ``out``.
    Returns a summary (kind, arch, tensors, parameters, out, dropped keys)."""
    if kind not in KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known: {', '.join(KINDS)}")
    need = 2 if kind == "monodepth2" else 1
    if len(inputs) != need:
        raise CheckpointError(f"{kind} takes {need} input file(s) ({'encoder.pth depth.pth' if need == 2 else 'one'}), "
                         f"got {len(inputs)}")
    states = [read_official(p)[0] for p in inputs]
    what = ", ".join(str(p) for p in inputs)
    if kind == "raft":
        state, arch = convert_raft(states[0], what)
    elif kind == "dino-vit":
        state, arch = convert_dino_vit(states[0], what)
    elif kind == "dino-resnet50":
        state, arch = convert_dino_resnet50(states[0], what)
    else:
        motion = read_official(motion_decoder)[0] if motion_decoder else None
        state, arch = convert_monodepth2(states[0], states[1], motion, no_motion=no_motion, what=what)
    used = set(state)
    if kind == "monodepth2":
        used = {k.split(".", 1)[1] for k in state}
    dropped = sorted(k for s in states for k in s if k not in used)
    out = write_torch_file(state, out)
    return {"kind": kind, "arch": arch, "tensors": len(state),
            "parameters": int(sum(v.numel() for v in state.values())), "out": str(out), "dropped": dropped}
