"""Self-describing model checkpoints: config + class metadata + weights in one file.

Like torchvision's weights-as-data, a checkpoint carries what is needed to rebuild the model
(the ``ModelConfig`` and the stuff/thing pseudo-classes), so ``load_checkpoint`` needs only the
path. Everything stored is plain data and tensors, so it loads with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from videocups_ray.data.checkpoints import CheckpointError, read_torch_file, write_torch_file
from videocups_ray.model.targets import ClassMeta
from videocups_ray.model.vps import PanopticCascadeMaskTrackRCNN, build_model

if TYPE_CHECKING:
    from videocups_ray.config import ModelConfig

FORMAT = "videocups-vps/1"


def save_checkpoint(
    path: str | Path, model: PanopticCascadeMaskTrackRCNN, cfg: ModelConfig, meta: ClassMeta, *, extra: dict | None = None
) -> Path:
    """Write atomically (temp file, then rename). ``extra``: plain data, e.g. step, metrics."""
    if model.num_stuff != meta.num_stuff or model.num_thing != meta.num_thing:
        raise ValueError(f"model ({model.num_stuff} stuff, {model.num_thing} thing) does not match meta {meta}")
    payload = {
        "format": FORMAT,
        "model_config": cfg.model_dump(mode="json"),
        "class_meta": meta.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    return write_torch_file(payload, path)


def load_checkpoint(
    path: str | Path, *, map_location: str = "cpu"
) -> tuple[PanopticCascadeMaskTrackRCNN, ModelConfig, ClassMeta, dict]:
    """(model in eval mode, its config, class metadata, extra) from a ``save_checkpoint`` file."""
    from pydantic import ValidationError  # lazy: building a model (gpu_check.py) needs no pydantic

    from videocups_ray.config import ModelConfig

    payload = read_torch_file(path, "model checkpoint", map_location=map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        hint = " (a training-state file? pass the run's model.pt)" if isinstance(payload, dict) and "step" in payload else ""
        raise CheckpointError(f"model checkpoint {path}: format {got!r}, expected {FORMAT!r}{hint}")
    for key in ("model_config", "class_meta", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"model checkpoint {path}: missing {key!r}")
    try:
        cfg = ModelConfig.model_validate(payload["model_config"])
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        key = ".".join(str(p) for p in first.get("loc", ()))
        raise CheckpointError(f"model checkpoint {path}: invalid model_config ({key}: {first.get('msg')})") from exc
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
