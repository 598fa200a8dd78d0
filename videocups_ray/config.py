"""Typed, validated configuration: one model per section, every field commented.

A job's configuration is the defaults below, overlaid by YAML files (``configs/**``), then by
dotted overrides from the command line (``--set labeling.tau_m=0.5``). Unknown keys and wrong
types are errors that name the dotted key. Paper values (VideoCUPS, DESIGN.md section 4) are
the defaults.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the dotted key."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


# --------------------------------------------------------------------------- data
class SynthConfig(_Section):
    """SynthDrive: the procedural driving-video generator (DESIGN.md section 6)."""

    height: int = Field(256, ge=32, le=4096)  # image rows, pixels
    width: int = Field(512, ge=32, le=8192)  # image columns, pixels
    frames: int = Field(30, ge=1)  # frames per sequence
    sequences: int = Field(2, ge=1)  # number of sequences
    seed: int = Field(0, ge=0)  # master seed; sequence s uses seed * 1000 + s
    fps: float = Field(10.0, gt=0)  # frame rate, Hz (KITTI is 10 Hz)
    focal_scale: float = Field(0.9, gt=0)  # focal length as a fraction of the image width
    camera_height: float = Field(1.65, gt=0)  # camera above the road, metres (KITTI: 1.65)
    speed_max: float = Field(12.0, ge=0)  # ego cruising speed upper bound, m/s
    stop_probability: float = Field(0.5, ge=0, le=1)  # chance a sequence contains a full stop
    yaw_amplitude: float = Field(0.03, ge=0)  # ego yaw oscillation amplitude, radians
    parked_cars: int = Field(6, ge=0)  # static cars along the kerbs
    moving_cars: int = Field(4, ge=0)  # cars driving in either direction
    car_speed_max: float = Field(14.0, ge=0)  # other cars' speed upper bound, m/s
    people: int = Field(4, ge=0)  # pedestrians (walking or waiting)
    person_speed_max: float = Field(1.8, ge=0)  # walking speed upper bound, m/s
    waiting_people_fraction: float = Field(0.3, ge=0, le=1)  # people that stand still
    noise_std: float = Field(3.0, ge=0)  # sensor noise, 8-bit grey levels
    exposure_jitter: float = Field(0.08, ge=0)  # relative exposure change between frames
    shadows: bool = True  # cast soft shadows of things onto the ground


class ShardConfig(_Section):
    """Parquet shards of frames and labels (DESIGN.md section 7)."""

    rows_per_shard: int = Field(256, ge=1)  # frames per Parquet file
    rows_per_row_group: int = Field(8, ge=1)  # frames per row group (8-16 reads fastest)
    # bench_shards.py (KITTI frames, 2 busy cores): PNG images are 18-21% smaller than raw+zstd
    # but 2-3.3x slower to write and 2.1-4.4x slower to read+decode; training re-reads every
    # epoch, so raw wins unless storage bandwidth is the bottleneck.
    image_encoding: Literal["png", "raw"] = "raw"  # per-frame image codec
    label_encoding: Literal["png", "raw"] = "raw"  # raw int32 + zstd: half the size of PNG and faster
    compression: Literal["zstd", "snappy", "none"] = "zstd"  # Parquet page compression
    compression_level: int = Field(3, ge=1, le=22)  # zstd level
    png_level: int = Field(1, ge=0, le=9)  # zlib level of PNG-encoded columns (0-9; 1 = fast)
    # --- commit log and resume (data/manifest.py; measured in bench_shards.py)
    manifest_compact_every: int = Field(256, ge=2)  # commits (one small object each) merged into a segment
    manifest_fanout: int = Field(8, ge=2)  # segments of one level merged into one of the next
    # what a resume / `train --shards` checks of the committed shards it relies on: "checksum" reads
    # each one once (sha256), "size" only lists them; a damaged shard is retracted and its frames redone
    verify_on_resume: Literal["checksum", "size", "none"] = "checksum"
    verify_workers: int = Field(4, ge=1)  # threads reading shards for that check (I/O bound)


# --------------------------------------------------------------------------- cues
class FlowConfig(_Section):
    """Optical flow, forward t->t+1 and backward (DESIGN.md section 5)."""

    # oracle = SynthDrive ground truth; simulated = oracle cues after sleeping cost_ms (a load
    # generator for benchmarks and tests of orchestration, never for labels: cues/simulated.py)
    backend: Literal["dis", "raft", "pwc", "oracle", "simulated"] = "dis"  # pwc: PWC-tiny, train-cues' CPU net
    dis_preset: Literal["ultrafast", "fast", "medium"] = "medium"  # chosen by bench_cues.py
    # DIS starts a pair from the previous pair's flow within one batch of consecutive frames
    # (issue 13; bench_pseudolabels.py --cue-variants); never across calls, so never across videos
    dis_warm_start: bool = False  # off: the cue-variant run decides (README, issue 13)
    raft_arch: Literal["raft_small", "raft_large", "raft_tiny"] = "raft_small"  # torchvision layout; tiny = CPU training
    raft_iters: int = Field(12, ge=1)  # RAFT refinement iterations
    # fw-bw consistency (DESIGN.md 4.1): occluded where |fw + bw(x+fw)|^2 >= alpha1 (|fw|^2 + |bw|^2) + alpha2
    occlusion_alpha1: float = Field(0.01, ge=0)  # relative tolerance (paper: 0.01)
    occlusion_alpha2: float = Field(0.5, ge=0)  # absolute tolerance, px^2 (paper: 0.5)
    checkpoint: str | None = None  # local .pt/.safetensors for learned backends
    device: str = "cpu"  # "cpu", "cuda", "cuda:1"
    batch_size: int = Field(4, ge=1)  # frame pairs per call
    cost_ms: float = Field(50.0, ge=0)  # backend "simulated" only: ms slept per frame pair (no CPU used)


class DepthConfig(_Section):
    """Depth and motion probability (DESIGN.md section 5)."""

    backend: Literal["geometry", "monodepth", "oracle", "simulated"] = "geometry"  # simulated: see FlowConfig
    min_parallax: float = Field(0.5, ge=0)  # px; below it triangulation is unreliable
    ransac_threshold: float = Field(0.5, gt=0)  # px; essential-matrix inlier threshold (bench_cues.py)
    translation_prior_deg: float | None = Field(10.0, gt=0)  # deg; ego heading prior around the optical axis, None = off
    motion_sigma: float = Field(2.0, gt=0)  # px; Sampson residual giving motion prob 0.5 (DIS noise ~1 px)
    max_depth: float = Field(80.0, gt=0)  # metres; depth is clipped here
    min_depth: float = Field(0.5, gt=0)  # metres; depth is clipped here from below
    below_ground_ratio: float = Field(1.3, gt=1)  # static depth / road-plane depth above it = moving
    # depth / ground-contact depth ratio (either way) giving motion prob 0.5; None = cue off. bench_cues.py:
    # on oracle flow motion IoU 0.23 -> 0.57, on DIS flow recall up but false positives on trees (off by default)
    contact_ratio: float | None = Field(None, gt=1.15)
    # road-plane fit (metric scale): RANSAC over static triangulated points of the lower-central image
    plane_rows_below: float = Field(0.15, ge=0, lt=0.5)  # candidates start this fraction of the height below the centre
    plane_half_width: float = Field(0.35, gt=0, le=0.5)  # ... within this fraction of the width either side of it
    plane_max_points: int = Field(2000, ge=20)  # candidates sampled for the fit
    plane_ransac_iters: int = Field(64, ge=1)  # RANSAC hypotheses (3-point planes)
    plane_inlier_tol: float = Field(0.03, gt=0)  # inlier distance, relative to the median |y| of the points
    plane_min_vertical: float = Field(0.9, gt=0, le=1)  # min y component of the unit normal (near-horizontal road)
    plane_min_inliers: float = Field(0.2, gt=0, le=1)  # min inlier fraction; below it the fit fails (prior used)
    encoder: Literal["resnet18", "resnet50"] = "resnet18"  # learned backend
    checkpoint: str | None = None
    device: str = "cpu"
    batch_size: int = Field(4, ge=1)
    cost_ms: float = Field(50.0, ge=0)  # backend "simulated" only: ms slept per frame (no CPU used)


class FeatureConfig(_Section):
    """Per-pixel features for semantic clustering (DESIGN.md section 5)."""

    backend: Literal["handmade", "dino", "simulated"] = "handmade"  # simulated: see FlowConfig
    stride: int = Field(4, ge=1)  # feature map is 1/stride of the image resolution
    arch: Literal["vit_small_patch8", "vit_base_patch8"] = "vit_small_patch8"  # DINO layout
    crop_size: int = Field(224, ge=32)  # sliding-window crop, pixels (high-res pass)
    crop_overlap: float = Field(0.5, ge=0, lt=1)  # fraction of crop overlap
    # handmade descriptor (bench_cues.py): groups are z-scored per frame and balanced, then weighted
    context_sigmas: tuple[float, ...] = (2.0, 6.0)  # Gaussian context radii, feature-map px (colour, texture)
    smooth_sigma: float = Field(1.5, ge=0)  # Gaussian smoothing of the whole descriptor, feature-map px; 0 = off
    weight_colour: float = Field(1.0, ge=0)  # relative weight of the Lab colour groups (pixel + context)
    weight_texture: float = Field(1.0, ge=0)  # relative weight of the texture-energy groups (pixel + context)
    weight_position: float = Field(1.0, ge=0)  # relative weight of the image-row channel
    weight_geometry: float = Field(1.0, ge=0)  # relative weight of depth-derived channels (0 with no depth)
    # geometric class evidence (issue 13; bench_pseudolabels.py --ablation, chosen on the tuning
    # split), each a balanced group like the above; 0 = off (the channels are zero)
    weight_height: float = Field(0.0, ge=0)  # height above a fitted ground plane, and "on the ground"
    weight_normal: float = Field(0.0, ge=0)  # depth-derived normals: horizontal (road) vs vertical (facade)
    weight_sky: float = Field(0.0, ge=0)  # no valid depth / far clip (no parallax), towards the frame top
    weight_column: float = Field(0.0, ge=0)  # distance from the image's vertical centre line
    # DepthG-style fusion: context and smoothing pool only over similar log depth (range sigma,
    # log-depth units: 0.3 ~ +-35 % depth); 0 = plain Gaussians (no depth guidance)
    depth_guide_sigma: float = Field(0.0, ge=0)  # log-depth units; 0 = off (ablation: no gain on test or KITTI)
    max_depth: float = Field(80.0, gt=0)  # metres; depth at/over 0.95x this counts as sky (= cues.depth.max_depth)
    checkpoint: str | None = None
    device: str = "cpu"
    batch_size: int = Field(4, ge=1)
    cost_ms: float = Field(50.0, ge=0)  # backend "simulated" only: ms slept per frame (no CPU used)


class CameraConfig(_Section):
    """The recording camera as the cues assume it (depth and features share it). SynthDrive's own
    rig is ``synth.focal_scale`` / ``synth.camera_height`` (the truth it renders, written into each
    frame's K, which the cues then use instead of this section)."""

    focal: float | None = Field(None, gt=0)  # px; used when a frame has no extra["K"] (KITTI ~721)
    focal_scale: float = Field(0.9, gt=0)  # focal = focal_scale * width when focal is None (px/px)
    camera_height: float = Field(1.65, gt=0)  # metres above the road; fixes the metric scale of geometry depth


class CuesConfig(_Section):
    flow: FlowConfig = FlowConfig()
    depth: DepthConfig = DepthConfig()
    features: FeatureConfig = FeatureConfig()


# --------------------------------------------------------------------------- labeling
class LabelingConfig(_Section):
    """Pseudo-label generation (DESIGN.md section 4). Paper values are the defaults."""

    # instances: region growing on (depth, flow, motion probability)
    alpha: float = Field(0.15, ge=0, lt=1)  # motion-probability seed threshold
    radius: int = Field(8, ge=1, le=32)  # neighbourhood, L-inf pixels
    tau_d: float = Field(0.02, gt=0)  # relative depth difference to join
    tau_f: float = Field(0.04, gt=0)  # relative flow difference to join
    min_pixels: int = Field(50, ge=1)  # smaller regions are discarded
    border_margin: int = Field(0, ge=0)  # px; motion seeds this close to the image edge are ignored
    device: Literal["cpu", "cuda"] = "cpu"  # region growing: Numba on CPU, CuPy on the GPU (needs .[gpu])
    # semantics
    num_clusters: int = Field(27, ge=2)  # K of cosine k-means (pseudo-classes)
    kmeans_iters: int = Field(30, ge=1)  # mini-batch k-means passes
    kmeans_samples_per_frame: int = Field(512, ge=1)  # features sampled per frame for fitting
    kmeans_frames_per_video: int = Field(8, ge=1)  # frames per video sampled for the pass-1 centroid fit
    depth_fusion: bool = True  # P* = a P_low + (1-a) P_high with a = 1/(d+1)
    median_depth: float | None = None  # metres; rescales relative depth for the fusion
    crf: bool = False  # optional dense-CRF refinement
    crf_iters: int = Field(5, ge=1)  # mean-field iterations
    crf_weight: float = Field(3.0, ge=0)  # smoothness-kernel weight (Potts), in logits
    crf_sigma: float = Field(3.0, gt=0)  # smoothness-kernel std, pixels
    cluster_temperature: float = Field(0.1, gt=0)  # softmax temperature on cosine similarity
    # tracking and temporal consistency
    tau_m: float = Field(0.4, gt=0, le=1)  # min warped IoU to continue a track
    recovery: bool = True  # retry unmatched tracks of t-1 against warped t+1
    semantic_vote: bool = True  # 3-frame majority vote on semantics
    clip_length: int = Field(30, ge=1)  # frames per clip for class alignment
    clip_alignment: bool = True  # one pseudo-class per track per clip
    min_track_frames: int = Field(2, ge=1)  # tracks seen in fewer frames of a clip are dropped
    tracking: bool = True  # off = per-frame IDs (ablation)
    ignore_occluded: bool = True  # pixels of t with no correspondence in t+1 go into the ignore mask
    # thing/stuff split
    psi: float = Field(0.01, ge=0, le=1)  # class c is a thing if ratio_c > psi
    ignore_label: int = Field(255, ge=0)  # semantic value of unreliable pixels
    # write the depth cue (metres) into the shards' optional depth column, so that eval scores
    # DVPQ against ground truth with depth (SynthDrive, Cityscapes-DVPS); costs H*W*4 bytes a row
    write_depth_cue: bool = False


# --------------------------------------------------------------------------- dataset readers
class DatasetsConfig(_Section):
    """Options of the dataset readers (videocups_ray/data/formats.py)."""

    waymo_cameras: tuple[int, ...] = (1, 2, 3, 4, 5)  # Waymo cameras read, one video each (1 FRONT .. 5 SIDE_RIGHT)
    waymo_class_map: Literal["cityscapes", "native"] = "cityscapes"  # Waymo classes -> train IDs (README table)


# --------------------------------------------------------------------------- evaluation
class EvalConfig(_Section):
    num_classes: int = Field(19, ge=1)  # Cityscapes train IDs
    things: tuple[int, ...] = (11, 13)  # person, car (KITTI-STEP evaluation)
    ignore_label: int = Field(255, ge=0)
    label_divisor: int = Field(65536, ge=2)  # panoptic id = semantic * divisor + instance
    window_sizes: tuple[int, ...] = (1, 2, 3, 4)  # VPQ windows, frames
    # VPQ protocol: "vps" = mcahny/vps eval_vpq (crowd ignored, stuff = one segment per class);
    # "vip-deeplab" = ViP-DeepLab eval_dvpq (no crowd, every panoptic ID a segment).
    protocol: Literal["vps", "vip-deeplab"] = "vps"
    # DVPQ depth thresholds (absolute relative error); DVPQ is computed whenever both the ground
    # truth and the prediction carry depth. ViP-DeepLab's values.
    depth_thresholds: tuple[float, ...] = (0.5, 0.25, 0.1)
    # AQ split (issue 14): a ground-truth track is "moving" when at least this fraction of its
    # pixels, over the whole sequence, lies on the ground-truth independent-motion mask.
    moving_fraction: float = Field(0.5, gt=0, le=1)


# --------------------------------------------------------------------------- ray
class ActorResources(_Section):
    num_cpus: float = Field(0.5, ge=0)  # small and explicit (2-core hang trap)
    num_gpus: float = Field(0.0, ge=0)  # fractional allowed
    memory: int = Field(0, ge=0)  # bytes reserved for the scheduler; 0 = not declared
    replicas: int = Field(1, ge=1)  # pool size (the minimum when max_replicas is larger)
    # flow, features (corpus engine): the pool grows up to this many actors while calls back up,
    # and shrinks back to replicas when idle (pipelines/pool_autoscaler.py); 0 = fixed at replicas
    max_replicas: int = Field(0, ge=0)
    # custom Ray resources per actor, e.g. {"gpu_memory_gb": 8} (nodes that declare it) or
    # {"node_type:gpu-a100": 0.01} (pin to one node group); {} = none
    resources: dict[str, float] = Field(default_factory=dict)


class RayConfig(_Section):
    address: str | None = None  # None = start a local instance; "auto"; "ray://host:10001"
    num_cpus: int | None = None  # local instance only; None = all cores
    object_store_memory: int = Field(768 * 1024**2, ge=64 * 1024**2)  # local only, bytes
    temp_dir: str | None = None  # local only; keep it short (socket path limit)
    flow: ActorResources = ActorResources()
    depth: ActorResources = ActorResources()
    features: ActorResources = ActorResources()
    tracker: ActorResources = ActorResources(num_cpus=0.25)
    writer: ActorResources = ActorResources(num_cpus=0.25)  # replicas = size of the shard writer pool
    reader: ActorResources = ActorResources(num_cpus=0.25, replicas=2)  # decode next to the data; streams spread over them
    write_drain_keep: int = Field(16, ge=0)  # writer calls left in flight per writer when the driver drains (backpressure)
    max_videos_in_flight: int = Field(4, ge=1)  # streams processed at once
    max_frames_in_flight: int = Field(8, ge=1)  # per stream
    # driver: move what exists when labelling starts (imports, actors, config) out of Python's GC
    # (gc.freeze) until the run ends, so the gc.collect() Ray asks for when the object store fills
    # scans only objects made since; nothing made during the run escapes collection
    freeze_driver_gc: bool = True
    chunk_frames: int = Field(300, ge=4)  # long videos are cut into chunks of this length
    max_restarts: int = Field(3, ge=0)  # actor restarts before a chunk is failed
    chunk_overlap: int = Field(2, ge=2)  # frames shared by consecutive chunks (vote window + ID stitching)
    max_chunk_attempts: int = Field(3, ge=1)  # tries of one chunk (tracker/depth state lost) before it is skipped
    autoscale_backlog: float = Field(2.0, gt=0)  # calls in flight per actor above which a cue pool grows (max_replicas)
    autoscale_idle_s: float = Field(5.0, ge=0)  # seconds with fewer calls than actors before a grown pool shrinks by one

    @model_validator(mode="after")
    def _pools_that_grow(self) -> "RayConfig":
        """``max_replicas`` only where a pool can grow, and never below ``replicas`` (no silent no-op)."""
        for kind in ("reader", "depth", "tracker", "writer"):
            if getattr(self, kind).max_replicas:
                raise ValueError(f"ray.{kind}.max_replicas: only the flow and features pools grow (a depth actor "
                                 "holds its streams' state; readers, trackers and writers follow the streams); set 0")
        for kind in ("flow", "features"):
            res = getattr(self, kind)
            if res.max_replicas and res.max_replicas < res.replicas:
                raise ValueError(f"ray.{kind}.max_replicas ({res.max_replicas}) is below replicas ({res.replicas}); "
                                 "0 keeps the pool fixed")
        return self


class StreamConfig(_Section):
    """Live streams (``videocups stream``, ``pipelines/stream_service.py``), per stream."""

    backpressure: Literal["block", "drop"] = "block"  # when the queue is full: wait, or drop the new frame
    max_pending: int = Field(4, ge=1)  # frames accepted but not yet labelled
    # first (provisional) label of frame t when t+1 arrives, t+1 stood in by cues of the pair (t, t+1)
    # alone ("one_frame", local engine), or when t+2 arrives with exact cues ("exact"; the Ray engine's
    # trackers always work this way); final labels are exact either way
    latency: Literal["one_frame", "exact"] = "one_frame"
    # Ray engine: frames of one stream submitted to the cue actors and not yet answered by its tracker;
    # more than one overlaps the cue latency of consecutive frames (the tracker still takes them in order)
    max_frames_in_flight: int = Field(4, ge=1)
    poll_s: float = Field(0.01, gt=0)  # Ray engine: how long a stream's worker waits for a new frame, then for a reply, in turn


# --------------------------------------------------------------------------- model/train
class ModelConfig(_Section):
    """Panoptic Cascade MaskTrack R-CNN (DESIGN.md section 8); see videocups_ray/model/."""

    backbone: Literal["resnet18", "resnet50"] = "resnet18"
    backbone_checkpoint: str | None = None  # DINO ResNet in torchvision layout
    backbone_norm: Literal["frozen_bn", "bn"] = "frozen_bn"  # frozen_bn needs a checkpoint; bn from scratch
    trainable_backbone_layers: int = Field(3, ge=0, le=5)  # 5 = all, 0 = backbone frozen
    fpn_channels: int = Field(128, ge=8)  # FPN/RPN width; torchvision uses 256, 128 is the lighter CPU default (bench_model_step)
    cascade_ious: tuple[float, ...] = (0.5, 0.6, 0.7)  # cascade stage IoU thresholds
    cascade_loss_weights: tuple[float, ...] = (1.0, 0.5, 0.25)  # per-stage loss weight (Cascade R-CNN)
    box_head_dim: int = Field(512, ge=8)  # width of the 2-fc box head and of the track head
    mask_head_channels: int = Field(128, ge=8)  # conv width of the (small) mask head
    mask_head_convs: int = Field(2, ge=1)  # 3x3 convs before the 2x deconv
    semantic_head_channels: int = Field(128, ge=8)  # Panoptic-FPN semantic branch width
    embed_dim: int = Field(128, ge=8)  # tracking embedding size
    min_size: int = Field(256, ge=32)  # input resize, shorter side
    max_size: int = Field(512, ge=32)  # input resize, longer side
    # RPN (torchvision's Faster R-CNN defaults): one anchor size per FPN level P2..P6, in input pixels
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # anchor side per level, px (after the resize)
    anchor_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height/width of the anchors at every level
    rpn_fg_iou: float = Field(0.7, gt=0, le=1)  # anchor IoU with a box at or above which it is foreground
    rpn_bg_iou: float = Field(0.3, ge=0, le=1)  # anchor IoU below which it is background
    rpn_batch_per_image: int = Field(256, ge=1)  # anchors sampled per image for the RPN loss
    rpn_positive_fraction: float = Field(0.5, gt=0, le=1)  # of the sampled anchors
    rpn_nms_threshold: float = Field(0.7, gt=0, le=1)  # proposal NMS IoU
    rpn_pre_nms_train: int = Field(1000, ge=1)  # proposals per FPN level before NMS, training
    rpn_post_nms_train: int = Field(500, ge=1)  # proposals per image after NMS, training
    rpn_pre_nms_test: int = Field(500, ge=1)  # proposals per FPN level before NMS, inference
    rpn_post_nms_test: int = Field(300, ge=1)  # proposals per image after NMS, inference
    rois_per_image: int = Field(128, ge=1)  # RoIs sampled per image for the cascade, training
    positive_fraction: float = Field(0.25, gt=0, le=1)  # of sampled RoIs
    score_threshold: float = Field(0.5, ge=0, le=1)  # inference detection threshold
    nms_threshold: float = Field(0.5, gt=0, le=1)  # per-class box NMS IoU, inference
    detections_per_image: int = Field(50, ge=1)  # kept after NMS, inference
    mask_overlap: float = Field(0.5, ge=0, le=1)  # panoptic fusion: min visible fraction of a mask
    semantic_loss_weight: float = Field(1.0, ge=0)  # Panoptic-FPN semantic cross-entropy
    # semantic head over every thing class instead of one merged "thing": pixels no detection
    # covers keep their thing class (instance 0) instead of void (issue 14: SQ of a weak detector)
    semantic_thing_classes: bool = False
    track_loss_weight: float = Field(1.0, ge=0)  # MaskTrack embedding cross-entropy
    track_temperature: float = Field(0.1, gt=0)  # cosine / T = matching logit, training and association alike
    ref_frame_grad: bool = True  # backprop through the reference frame's backbone pass (False: ~1/3 cheaper CPU step)
    track_score_weight: float = Field(1.0, ge=0)  # association: weight of log detection score (track columns)
    track_iou_weight: float = Field(2.0, ge=0)  # association: weight of box IoU with the track
    track_class_weight: float = Field(10.0, ge=0)  # association: bonus for the same class
    track_memory: int = Field(10, ge=1)  # frames a lost track stays matchable
    track_momentum: float = Field(0.5, ge=0, le=1)  # embedding update: new = m*old + (1-m)*det


class TrainConfig(_Section):
    lr: float = Field(2e-5, gt=0)  # AdamW (paper)
    weight_decay: float = Field(1e-4, ge=0)
    epochs: int = Field(8, ge=1)  # paper
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = Field(2, ge=1)  # frame pairs per worker
    grad_clip: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(50, ge=1)  # steps
    workers: tuple[int, int] = (1, 1)  # (min, max) Ray Train workers
    # elastic (min < max): seconds between Ray Train's checks for room to add workers (nodes that
    # appeared); a resize restarts the workers from the last checkpoint. Ray's default is 60
    resize_check_s: float = Field(60.0, gt=0)
    use_gpu: bool = False
    strategy: Literal["ddp", "deepspeed"] = "ddp"
    zero_stage: int = Field(2, ge=1, le=3)
    drop_loss: bool = True  # Video DropLoss
    drop_loss_iou: float = Field(0.5, gt=0, le=1)  # tau_iou
    copy_paste: bool = True
    copy_paste_max: int = Field(8, ge=0)  # tubes pasted per pair
    copy_paste_scale: tuple[float, float] = (0.25, 1.5)  # uniform tube scale range
    copy_paste_min: int = Field(1, ge=0)  # fewest tubes pasted per pair
    copy_paste_flip: float = Field(0.5, ge=0, le=1)  # probability of a horizontal flip per tube
    copy_paste_min_pixels: int = Field(16, ge=1)  # a tube needs this many pixels in each frame
    self_enhanced: bool = True
    self_enhanced_after: int = Field(200, ge=0)  # warm-up steps
    self_enhanced_every: int = Field(1, ge=1)  # predict self-enhanced tubes every k-th step (a forward per pair)
    self_enhanced_score: float = Field(0.75, ge=0, le=1)  # min prediction score to paste
    self_enhanced_iou: float = Field(0.5, gt=0, le=1)  # skip predictions at this IoU with pseudo boxes
    seed: int = 0
    max_failures: int = Field(2, ge=0)
    # --- Ray Train runtime (pipelines/train*.py)
    cpus_per_worker: float = Field(0.5, gt=0)  # logical CPUs per Ray Train worker (0.5: 2-core hang trap with map_batches)
    torch_threads: int | None = Field(None, ge=1)  # intra-op threads per worker; None = torch's default
    ddp_find_unused: bool = True  # DDP find_unused_parameters (heads without targets in a step)
    bf16: bool = True  # DeepSpeed bf16 when the GPU supports it (never on CPU)
    keep_checkpoints: int = Field(2, ge=1)  # Ray Train checkpoints kept in the run folder
    log_every: int = Field(1, ge=1)  # steps between progress lines / metrics.jsonl records
    fail_after_step: int | None = Field(None, ge=1)  # test hook: raise once right after this step's checkpoint
    # --- training data (Ray Data: read -> decode -> pairs -> augment)
    pair_stride: int = Field(1, ge=1)  # frames between a pair's key and reference frame
    cache_pairs: bool = False  # materialize decoded pairs once (small corpora: later epochs skip decoding)
    shuffle_buffer: int = Field(16, ge=0)  # pairs in each worker's local shuffle buffer; 0 = off
    flip_prob: float = Field(0.5, ge=0, le=1)  # augmentation: horizontal flip of a whole pair
    color_jitter: float = Field(0.1, ge=0, lt=1)  # augmentation: max relative brightness/contrast change
    copy_paste_bank: int = Field(64, ge=1)  # tubes kept per worker as copy-paste sources
    # --- learning-rate schedule and self-training (issue 14: a CPU recipe that beats the pseudo-labels)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: decay to lr * min_lr_ratio at max_steps
    warmup_steps: int = Field(0, ge=0)  # linear warm-up from lr * 0.01 (from-scratch BN needs it at high lr)
    min_lr_ratio: float = Field(0.02, ge=0, le=1)  # final lr of the cosine schedule, relative to lr
    rounds: int = Field(1, ge=1)  # self-training: round r > 1 trains on round r-1's predictions of the training videos
    round_steps: int | None = Field(None, ge=1)  # steps of each self-training round after the first; None = max_steps

    @model_validator(mode="after")
    def _schedule_needs_steps(self) -> "TrainConfig":
        if self.lr_schedule == "cosine" and self.max_steps is None:
            raise ValueError("train.lr_schedule='cosine' needs train.max_steps (the schedule's length)")
        return self


class InferConfig(_Section):
    """Inference with a trained checkpoint (``videocups infer``, ``pipelines/infer.py``)."""

    batch_size: int = Field(4, ge=1)  # frames per model forward
    actors: int = Field(1, ge=1)  # Ray Data actors (one video per call) for the ray engine
    cpus_per_actor: float = Field(0.5, gt=0)  # logical CPUs per inference actor
    gpus_per_actor: float = Field(0.0, ge=0)  # GPUs per inference actor (fractional allowed)


# --------------------------------------------------------------------------- cue training
class CueTrainingConfig(_Section):
    """Self-supervised training of the learned cues (``videocups train-cues flow|depth``).

    The network shapes come from ``cues.flow`` (``raft_arch``) and ``cues.depth`` (``encoder``,
    ``min_depth``, ``max_depth``) and ``camera`` (``camera_height``), so the checkpoint loads into those backends.
    """

    # --- data (Ray Data: windows of consecutive frames read through the pseudo-labeling readers)
    height: int = Field(128, ge=32)  # training resolution, rows (frames are resized; K is scaled)
    width: int = Field(256, ge=32)  # training resolution, columns
    window_stride: int = Field(1, ge=1)  # frames between the starts of consecutive windows
    cache_windows: bool = True  # materialize the decoded, resized windows once (later epochs skip reading)
    flip_prob: float = Field(0.5, ge=0, le=1)  # augmentation: horizontal flip of a whole window
    color_jitter: float = Field(0.1, ge=0, lt=1)  # augmentation: max relative brightness/contrast change
    shuffle_buffer: int = Field(16, ge=0)  # windows in each worker's local shuffle buffer; 0 = off
    reader_actors: int = Field(1, ge=1)  # Ray Data reader actors (each opens the input once)
    reader_cpus: float = Field(0.5, gt=0)  # logical CPUs per reader actor (2-core hang trap)
    augment_tasks: int = Field(1, ge=1)  # concurrent augmentation tasks (each a ~1 GB torch process)
    # --- optimisation (Ray Train: DDP or DeepSpeed ZeRO, elastic worker counts)
    max_steps: int = Field(2000, ge=1)  # optimizer steps in total (over all epochs)
    max_minutes: float | None = Field(None, gt=0)  # wall-clock budget of one run's loop; stops with a checkpoint
    batch_size: int = Field(2, ge=1)  # windows per worker per step
    lr: float = Field(1e-4, gt=0)  # AdamW learning rate (UFlow, Monodepth2: 1e-4)
    weight_decay: float = Field(1e-4, ge=0)  # AdamW weight decay
    grad_clip: float = Field(1.0, gt=0)  # max gradient norm
    workers: tuple[int, int] = (1, 1)  # (min, max) Ray Train workers; min < max is elastic
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when the Ray cluster has GPUs (logged)
    strategy: Literal["ddp", "deepspeed"] = "ddp"  # DeepSpeed ZeRO (train.zero_stage) for big nets
    cpus_per_worker: float = Field(0.5, gt=0)  # logical CPUs per Ray Train worker
    torch_threads: int | None = Field(None, ge=1)  # intra-op threads per worker; None = torch's default
    bf16: bool = True  # bf16 autocast on GPUs that support it (never on CPU)
    checkpoint_every: int = Field(100, ge=1)  # steps between Ray Train checkpoints
    keep_checkpoints: int = Field(2, ge=1)  # checkpoints kept in the run folder
    max_failures: int = Field(2, ge=0)  # worker-group restarts from the last checkpoint
    log_every: int = Field(10, ge=1)  # steps between metrics.jsonl records / progress updates
    seed: int = 0  # torch / numpy seed (per rank: seed * 1000 + rank)
    fail_after_step: int | None = Field(None, ge=1)  # test hook: raise once right after this step's checkpoint
    # --- flow losses (UFlow / SMURF)
    flow_net: Literal["raft", "pwc"] = "raft"  # raft: cues.flow.raft_arch; pwc: PWC-tiny (fast on CPUs)
    flow_iters: int = Field(6, ge=1)  # RAFT refinement iterations in training
    flow_gamma: float = Field(0.8, gt=0, le=1)  # weight of iteration i is gamma^(iters-1-i) (RAFT sequence loss)
    photometric: Literal["census", "ssim"] = "census"  # census (UFlow) or SSIM + L1 (Monodepth2)
    census_radius: int = Field(3, ge=1)  # census window half-size, px (7x7 window)
    smooth_weight: float = Field(2.0, ge=0)  # edge-aware flow smoothness weight (UFlow: 2 for census)
    smooth_order: Literal[1, 2] = 2  # first- or second-order flow smoothness (UFlow: 2)
    edge_weight: float = Field(150.0, ge=0)  # edge-awareness: exp(-edge_weight * |grad I|), I in [0, 1]
    occlusion_after: int = Field(100, ge=0)  # steps before fw-bw occlusion masking starts (UFlow warm-up)
    occlusion_penalty: float = Field(2.0, ge=0)  # photometric cost of a fw-bw occluded pixel (UnFlow's lambda_p)
    dis_teacher_weight: float = Field(0.0, ge=0)  # robust L1 to DIS flow on its fw-bw consistent pixels; 0 = pure UFlow
    selfsup_weight: float = Field(0.0, ge=0)  # SMURF self-supervision from a full-image teacher; 0 = off
    selfsup_after: int = Field(500, ge=0)  # steps before self-supervision starts
    selfsup_crop: float = Field(0.1, ge=0, lt=0.5)  # crop this fraction from each side for the student
    # --- depth losses (Monodepth2 + DynamoDepth-style motion mask)
    ssim_weight: float = Field(0.85, ge=0, le=1)  # photometric error = a (1 - SSIM) / 2 + (1 - a) L1
    disp_smooth_weight: float = Field(1e-3, ge=0)  # edge-aware smoothness of mean-normalised disparity
    automask: bool = True  # Monodepth2 auto-masking (identity reprojection joins the minimum)
    motion_margin: float = Field(0.02, ge=0)  # a pixel is moving where rigid error - flow error > margin
    motion_weight: float = Field(1.0, ge=0)  # weight of the motion-mask term; 0 = motion decoder untrained
    motion_smooth_weight: float = Field(1e-3, ge=0)  # edge-aware smoothness of the motion probability
    motion_after: int = Field(200, ge=0)  # steps of depth-only warm-up before the motion mask gates depth
    height_weight: float = Field(0.1, ge=0)  # metric scale: |log(road height) - log(camera.camera_height)|
    road_region: tuple[float, float, float, float] = (0.8, 1.0, 0.35, 0.65)  # rows/cols fractions assumed road
    pose_width: int = Field(16, ge=4)  # channels of the first pose-net conv (doubles per stride-2 layer)
    init_depth: float | None = Field(10.0, gt=0)  # metres a fresh depth net predicts (head bias); None = sigmoid(0)


# --------------------------------------------------------------------------- top level
class Config(_Section):
    synth: SynthConfig = SynthConfig()
    shards: ShardConfig = ShardConfig()
    camera: CameraConfig = CameraConfig()
    cues: CuesConfig = CuesConfig()
    labeling: LabelingConfig = LabelingConfig()
    eval: EvalConfig = EvalConfig()
    datasets: DatasetsConfig = DatasetsConfig()
    ray: RayConfig = RayConfig()
    stream: StreamConfig = StreamConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()
    cue_training: CueTrainingConfig = CueTrainingConfig()

    def hash(self) -> str:
        """Stable short hash of the full configuration (stored in shard manifests)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        lines.append(f"{key}: {e['msg']} (got {e.get('input')!r})")
    return f"invalid configuration from {source}:\n  " + "\n  ".join(lines)


def _deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``a.b.c``, checking each key exists in Config."""
    parts = dotted.split(".")
    model: type[BaseModel] | None = Config
    node = tree
    for i, part in enumerate(parts):
        fields = model.model_fields if model is not None else {}
        if part not in fields:
            known = ", ".join(sorted(fields)) or "(none)"
            raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r}; known here: {known}")
        ann = fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if i == len(parts) - 1:
            node[part] = value
        else:
            if model is None:
                raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is not a section")
            node = node.setdefault(part, {})


def parse_override(text: str) -> tuple[str, Any]:
    """``"labeling.tau_m=0.5"`` -> ``("labeling.tau_m", 0.5)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key!r}: cannot parse value {raw!r}: {exc}") from exc
    return key.strip(), value


def load_config(
    paths: list[str | Path] | tuple[str | Path, ...] = (),
    overrides: list[str] | tuple[str, ...] = (),
) -> Config:
    """Defaults, then each YAML file in order, then ``key=value`` overrides."""
    tree: dict = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping at top level")
        try:
            Config.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_format_validation_error(exc, str(p))) from None
        tree = _deep_merge(tree, data)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, "overrides")) from None


def with_overrides(cfg: Config, **sections: dict) -> Config:
    """A copy of ``cfg`` with some fields of some sections replaced, validated."""
    tree = _deep_merge(cfg.model_dump(), sections)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, "with_overrides")) from None
