"""The labeling stage (semantic labeler + tracker of one stream) and the shard row it makes.

Pure code: the local engine calls it in a loop, the Ray tracker actors host it unchanged.
"""

from __future__ import annotations

import numpy as np

from videocups_ray.config import Config
from videocups_ray.data.types import DataError
from videocups_ray.labeling import FrameCues, LabelledFrame, SemanticLabeler, VideoTracker
from videocups_ray.stages.base import Resources


class LabelStage:
    """Semantic labeler + tracker for one video stream (``emit="clip"``: final frames only)."""

    resources = Resources(num_cpus=0.25)

    def __init__(self, cfg: Config, centroids: np.ndarray, *, emit: str = "clip"):
        self.cfg = cfg.labeling
        self.centroids = np.asarray(centroids, np.float32)
        self.emit = emit  # "clip": final frames only; "online": provisional frames too (streaming)
        self._tracker: VideoTracker | None = None

    def setup(self, device: str | None = None) -> None:
        labeler = SemanticLabeler(self.centroids, self.cfg)
        self._tracker = VideoTracker(self.cfg, semantics=labeler, emit=self.emit)

    @property
    def tracker(self) -> VideoTracker:
        if self._tracker is None:
            self.setup()
        assert self._tracker is not None
        return self._tracker

    def push(self, cues: FrameCues) -> list[LabelledFrame]:
        """Next frame of the current video; returns the frames whose clip closed."""
        return self.tracker.push(cues)

    def flush(self) -> list[LabelledFrame]:
        """End of the video: the remaining frames; the stage is ready for the next video."""
        return self.tracker.flush()

    def reset(self) -> None:
        self.tracker.reset()

    def state_dict(self) -> dict:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state)

    def teardown(self) -> None:
        self._tracker = None


def labelled_to_row(labelled: LabelledFrame, image: np.ndarray) -> dict:
    """Keyword arguments of :meth:`ShardWriter.add` for one final frame.

    ``semantic`` is the pseudo-class of every pixel, ``ignore`` the unreliable pixels (DESIGN.md
    section 4 step 7) as a separate mask, ``instance`` the track ID (0 none). Neither the
    ignore label nor the thing/stuff split is burnt in: the split needs the whole corpus, and
    the reader decides (training voids the ignore mask; evaluation scores every pixel's class;
    bench_pseudolabels.py --quick measured voiding the occlusion mask at -7 STQ points with
    oracle cues on SynthDrive, as the sky and the image border are "occluded" for the flow).
    """
    if not labelled.final:
        raise DataError(f"{labelled.name}: only final frames go to shards (got a provisional one)")
    if image.shape[:2] != labelled.semantic.shape:
        raise DataError(f"{labelled.name}: image {image.shape[:2]} and labels {labelled.semantic.shape} differ")
    row = {"video_id": labelled.video_id, "frame_index": int(labelled.frame_index), "image": image,
           "semantic": labelled.semantic.astype(np.uint8), "instance": labelled.instance.astype(np.int32),
           "ignore": labelled.ignore.astype(bool)}
    if labelled.depth is not None:  # labeling.write_depth_cue: the shards' optional depth column
        row["depth"] = labelled.depth
    return row
