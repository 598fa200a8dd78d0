"""Every checkpoint file this project reads or writes goes through here.

Cue networks, the detection backbone, the VPS model, training state and fine-tuning all read
torch files with :func:`read_torch_file` — the one ``torch.load`` call of the package, always
``weights_only=True`` so a checkpoint can never execute pickled code. Every failure (missing
file, a directory, not a torch file, a torch file of the wrong kind, keys that do not match the
network) is a :class:`CheckpointError`: a :class:`DataError`, so the CLI prints it as one line
that names the file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from videocups_ray.data.types import DataError

if TYPE_CHECKING:  # torch is imported where a file is read or written: processes that never touch a
    import torch  # checkpoint (every actor of a weight-free cue backend) start seconds faster
    from torch import nn

_MAX_LISTED = 8


class CheckpointError(DataError):
    """A checkpoint file is missing, unreadable, of the wrong kind or does not match the network."""


def listing(keys: list[str]) -> str:
    """The first few of ``keys`` and how many there are: error messages stay one readable line."""
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _MAX_LISTED else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def check_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it is a readable regular file, else a CheckpointError naming it."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{what} {path}: is a directory, expected a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: file not found")
    return path


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint", *, map_location: str = "cpu") -> Any:
    """The object in a ``torch.save`` file, read with ``weights_only=True`` (plain data and tensors)."""
    import torch

    path = check_file(path, what)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # unpickling arbitrary bytes can raise any type (IndexError, EOFError, ...)
        raise CheckpointError(f"{what} {path}: not a readable torch checkpoint ({_first_line(exc)})") from exc


def write_torch_file(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically (temp file in the same folder, then rename)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_state_dict(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A state dict of tensors from a ``.pt``/``.pth`` file (bare, or under ``"state_dict"`` /
    ``"model"``) or a ``.safetensors`` file, on CPU."""
    import torch

    path = check_file(path, what)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise CheckpointError(f"{what} {path}: reading .safetensors needs the 'safetensors' package") from exc
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own SafetensorError type
            raise CheckpointError(f"{what} {path}: not a readable safetensors file ({_first_line(exc)})") from exc
    obj = read_torch_file(path, what)
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{what} {path}: does not hold a state dict of tensors (got {type(obj).__name__})")
    return {str(k): v for k, v in obj.items()}


def load_state_strict(net: nn.Module, path: str | os.PathLike, *, strip_prefix: str = "",
                      what: str = "checkpoint") -> None:
    """Load ``path`` into ``net``; every key and shape must match, else an error listing them.

    ``strip_prefix`` (e.g. ``"module."`` from DDP) is removed from keys that start with it.
    """
    state = read_state_dict(path, what)
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
        problems.append(f"missing keys: {listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {listing(shapes)}")
    if problems:
        raise CheckpointError(f"{path} does not match {type(net).__name__}: " + "; ".join(problems))
    net.load_state_dict(state, strict=True)


def save_state_dict(net: nn.Module, path: str | os.PathLike) -> Path:
    """Save ``net``'s tensors (``.safetensors`` or torch) so :func:`load_state_strict` reads them back."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError as exc:
            raise CheckpointError(f"{path}: writing .safetensors needs the 'safetensors' package") from exc
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path))
        return path
    return write_torch_file(state, path)
