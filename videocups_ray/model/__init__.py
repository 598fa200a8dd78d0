"""The video panoptic model: Panoptic Cascade MaskTrack R-CNN, Video DropLoss, video copy-paste.

Pure torch/torchvision; no Ray. ``pipelines/train.py`` builds it with ``build_model``, feeds it
frame pairs through ``collate_pairs`` (after ``video_copy_paste``), and saves it with
``save_checkpoint``; inference runs ``VideoPanopticPredictor`` over each video.
"""

from videocups_ray.data.checkpoints import CheckpointError
from videocups_ray.model.backbone import LoadReport, load_backbone_checkpoint, load_backbone_state
from videocups_ray.model.cascade import drop_loss_weights
from videocups_ray.model.checkpoint import load_checkpoint, save_checkpoint
from videocups_ray.model.copy_paste import Tube, extract_tubes, tubes_from_predictions, use_self_enhanced, video_copy_paste
from videocups_ray.model.targets import ClassMeta, collate_pairs, frame_targets, instance_boxes, pair_to_model_inputs
from videocups_ray.model.tracking import (
    PanopticFrame,
    VideoPanopticPredictor,
    VideoTrackMemory,
    associate,
    association_scores,
    panoptic_fusion,
)
from videocups_ray.model.vps import PanopticCascadeMaskTrackRCNN, build_model

__all__ = [
    "CheckpointError", "ClassMeta", "LoadReport", "PanopticCascadeMaskTrackRCNN", "PanopticFrame", "Tube",
    "VideoPanopticPredictor", "VideoTrackMemory", "associate", "association_scores", "build_model",
    "collate_pairs", "drop_loss_weights", "extract_tubes", "frame_targets", "instance_boxes",
    "load_backbone_checkpoint", "load_backbone_state", "load_checkpoint", "panoptic_fusion",
    "pair_to_model_inputs", "save_checkpoint", "tubes_from_predictions", "use_self_enhanced", "video_copy_paste",
]
