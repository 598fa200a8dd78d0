"""Local checkpoints for learned cue backends: load safely, fail with names.

Weights never come from a hub at run time. A checkpoint is a ``.pt``/``.pth`` file read with
``torch.load(..., weights_only=True)`` (a plain state dict, or a dict holding one under
``"state_dict"``/``"model"``), or a ``.safetensors`` file. Any mismatch with the network is a
:class:`CheckpointError` that names the file and the missing / unexpected / mis-shaped keys.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from videocups_ray.cues.base import Estimator
from videocups_ray.data.types import DataError

_MAX_LISTED = 8


class CheckpointError(DataError):
    """A checkpoint file is missing, unreadable or does not match the network."""


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED else "")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` on CPU without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise CheckpointError(f"{path}: reading .safetensors needs the 'safetensors' package") from exc
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own SafetensorError type
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors (got {type(obj).__name__})")
    return {str(k): v for k, v in obj.items()}


def load_checkpoint(net: nn.Module, path: str | Path, *, strip_prefix: str = "") -> None:
    """Load ``path`` into ``net`` strictly; every key and shape must match.

    ``strip_prefix`` (e.g. ``"module."`` from DDP) is removed from keys that start with it.
    """
    state = read_state_dict(path)
    if strip_prefix:
        state = {(k[len(strip_prefix):] if k.startswith(strip_prefix) else k): v for k, v in state.items()}
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} (file {tuple(state[k].shape)}, network {tuple(expected[k].shape)})"
        for k in set(state) & set(expected) if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_listing(shapes)}")
    if problems:
        raise CheckpointError(f"{path} does not match {type(net).__name__}: " + "; ".join(problems))
    net.load_state_dict(state, strict=True)


def save_checkpoint(net: nn.Module, path: str | Path) -> Path:
    """Save ``net``'s state dict (tensors only) so :func:`load_checkpoint` reads it back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError as exc:
            raise CheckpointError(f"{path}: writing .safetensors needs the 'safetensors' package") from exc
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def require_checkpoint(path: str | Path | None, backend: str, field: str) -> str | Path:
    """``path`` if set; a learned backend has no weights without it, so an empty one is an error
    naming the backend (e.g. ``"flow backend 'raft'"``) and the config field to set."""
    if not path:
        raise CheckpointError(f"{backend} needs {field} (a local file)")
    return path


class NetEstimator(Estimator):
    """An estimator around one torch network: the network moves to its device in ``setup``.

    Unlike weight-free backends, a call before ``setup`` sets up on the device the estimator
    was built for (not always ``"cpu"``). Subclasses call :meth:`_take_net` in ``__init__``
    after checking their own arguments.
    """

    net: nn.Module
    preferred_device: str = "cpu"

    def _take_net(self, net: nn.Module, device: str, reserve_bytes: int) -> None:
        """Hold ``net`` in eval mode and declare its placement: fp32 weights + ``reserve_bytes``
        of working memory (activations; bytes)."""
        self.net = net.eval()
        self.preferred_device = device
        self.requires_gpu = device.startswith("cuda")
        self.memory_bytes = int(sum(p.numel() for p in net.parameters()) * 4 + reserve_bytes)

    def setup(self, device: str | None = None) -> None:
        device = device or self.preferred_device
        self.net.to(device)
        super().setup(device)

    def _ensure_setup(self) -> None:
        if self.device is None:
            self.setup(self.preferred_device)
