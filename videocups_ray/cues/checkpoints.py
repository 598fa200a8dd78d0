"""Local checkpoints for learned cue backends: load safely, fail with names.

Weights never come from a hub at run time. File reading lives in ``data/checkpoints.py`` (the
one ``torch.load`` of the package, ``weights_only=True``; ``.safetensors`` too); any mismatch
with the network is a :class:`CheckpointError` naming the file and the missing / unexpected /
mis-shaped keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from videocups_ray.cues.base import Estimator
from videocups_ray.data.checkpoints import CheckpointError, load_state_strict, read_state_dict, save_state_dict

if TYPE_CHECKING:  # annotations only (see data/checkpoints.py)
    from torch import nn

__all__ = ["CheckpointError", "NetEstimator", "load_checkpoint", "read_state_dict", "require_checkpoint",
           "save_checkpoint"]


def load_checkpoint(net: nn.Module, path: str | Path, *, strip_prefix: str = "") -> None:
    """Load a cue network's weights strictly (every key and shape must match)."""
    load_state_strict(net, path, strip_prefix=strip_prefix, what="cue checkpoint")


def save_checkpoint(net: nn.Module, path: str | Path) -> Path:
    """Save ``net``'s state dict (tensors only) so :func:`load_checkpoint` reads it back."""
    return save_state_dict(net, path)


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
