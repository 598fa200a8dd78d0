"""Self-describing model checkpoints: config + class metadata + weights in one file.

Like torchvision's weights-as-data, a checkpoint carries what is needed to rebuild the model
(the ``ModelConfig`` and the stuff/thing pseudo-classes), so ``load_checkpoint`` needs only the
path. Everything stored is plain data and tensors, so it loads with ``weights_only=True``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from pydantic import ValidationError

from videocups_ray.config import ModelConfig
from videocups_ray.model.backbone import CheckpointError
from videocups_ray.model.targets import ClassMeta
from videocups_ray.model.vps import PanopticCascadeMaskTrackRCNN, build_model

FORMAT = "videocups-vps/1"


def save_checkpoint(
    path: str | Path, model: PanopticCascadeMaskTrackRCNN, cfg: ModelConfig, meta: ClassMeta, *, extra: dict | None = None
) -> Path:
    """Write atomically (temp file, then rename). ``extra``: plain data, e.g. step, metrics."""
    if model.num_stuff != meta.num_stuff or model.num_thing != meta.num_thing:
        raise ValueError(f"model ({model.num_stuff} stuff, {model.num_thing} thing) does not match meta {meta}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "model_config": cfg.model_dump(mode="json"),
        "class_meta": meta.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(
    path: str | Path, *, map_location: str = "cpu"
) -> tuple[PanopticCascadeMaskTrackRCNN, ModelConfig, ClassMeta, dict]:
    """(model in eval mode, its config, class metadata, extra) from a ``save_checkpoint`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model checkpoint {path}: file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a bad file
        raise CheckpointError(f"model checkpoint {path}: cannot be read with weights_only=True: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"model checkpoint {path}: format {got!r}, expected {FORMAT!r}")
    for key in ("model_config", "class_meta", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"model checkpoint {path}: missing {key!r}")
    try:
        cfg = ModelConfig.model_validate(payload["model_config"])
    except ValidationError as exc:
        raise CheckpointError(f"model checkpoint {path}: invalid model_config: {exc}") from exc
    meta = ClassMeta.from_dict(payload["class_meta"])
    # the stored weights already hold the backbone: do not read cfg.backbone_checkpoint again
    model = build_model(cfg, meta.num_stuff, meta.num_thing, load_backbone=False)
    result = model.load_state_dict(payload["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"model checkpoint {path}: does not match its own config: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model.eval(), cfg, meta, dict(payload.get("extra", {}))
