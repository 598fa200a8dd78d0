"""VideoTracker: temporally consistent pseudo-labels over a (t-1, t, t+1) window.

DESIGN.md section 4 step 5. Frame t is labelled when frame t+1 arrives:

1. Association. The proposals of t are warped into t-1 with the forward flow of t-1
   (``out(x) = M_t(x + f_fw_{t-1}(x))``); pixels of t-1 occluded in t are left out of the IoU.
   Hungarian matching (``linear_sum_assignment``) on pairs with IoU > ``tau_m``; matched
   proposals inherit the track ID.
2. Recovery. Tracks of t-1 left unmatched at t are retried against the proposals of t+1. They
   are carried to t+1 by forward-splatting their pixels along the flow chain
   ``f_fw_{t-1}`` then ``f_fw_t``; where a pixel is occluded at t (the usual reason for the
   miss) the chain has no valid second step, so the first displacement is repeated (constant
   velocity). A backward warp of M_{t+1} through t would read the occluder's flow there and
   never recover a hidden object. A recovered match reserves the proposal of t+1 for the
   track; it is used only if that proposal is not matched directly to a track of t.
3. New IDs for the proposals left over, in proposal order.
4. Semantic vote: per pixel the majority of {S_{t-1} warped, S_t, S_{t+1} warped}; ties keep
   S_t (out-of-frame and occluded samples do not vote).
5. Clip alignment: each track gets the majority pseudo-class of its pixels over the clip
   (``frame_index // clip_length``); tracks seen in fewer than ``min_track_frames`` frames of
   the clip lose their instance label when the clip closes.

Emission (``emit``): ``"online"`` returns frame t as soon as t+1 is in, with ``final=False``
and the clip classes decided so far, then all frames of a clip again with ``final=True`` when
it closes; ``"clip"`` returns only the final frames at clip close.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.optimize import linear_sum_assignment

from videocups_ray import kernels
from videocups_ray.data.types import DataError
from videocups_ray.labeling.instances import propose_frame
from videocups_ray.labeling.semantics import SemanticLabeler
from videocups_ray.labeling.types import FrameCues, FrameProposal, LabelledFrame

if TYPE_CHECKING:  # config types only: the pure path imports without pydantic (gpu_check.py)
    from videocups_ray.config import LabelingConfig

STATE_VERSION = 1
MAX_TRACK_ID = 65535  # panoptic ids are semantic * 65536 + instance


def match_by_iou(ids_a: np.ndarray, ids_b: np.ndarray, iou: np.ndarray, tau: float) -> list[tuple[int, int]]:
    """One-to-one pairs (id_a, id_b) maximising total IoU among pairs with IoU > ``tau``."""
    if iou.size == 0:
        return []
    score = np.where(iou > tau, iou, 0.0)
    rows, cols = linear_sum_assignment(score, maximize=True)
    return [(int(ids_a[r]), int(ids_b[c])) for r, c in zip(rows, cols) if score[r, c] > 0]


def warp_semantic(semantic: np.ndarray, flow: np.ndarray, occlusion: np.ndarray | None,
                  ignore: int) -> np.ndarray:
    """Backward warp of a uint8 class map; out-of-frame and occluded pixels become ``ignore``."""
    return kernels.warp_labels(semantic, flow, occlusion, fill=ignore)


def splat_tracks(tracked: np.ndarray, track_ids: np.ndarray, flow_first: np.ndarray,
                 occ_first: np.ndarray | None, flow_second: np.ndarray) -> np.ndarray:
    """Carry the pixels of ``track_ids`` two frames forward (see the module docstring, step 2).

    Returns an int32 map in the coordinates of frame t+1 (0 where nothing landed).
    """
    h, w = tracked.shape
    out = np.zeros((h, w), np.int32)
    ys, xs = np.nonzero(np.isin(tracked, track_ids))
    if len(ys) == 0:
        return out
    labels = tracked[ys, xs]
    d1 = flow_first[ys, xs]
    x1, y1 = xs + d1[:, 0], ys + d1[:, 1]
    r1, c1 = np.floor(y1 + 0.5).astype(np.int64), np.floor(x1 + 0.5).astype(np.int64)
    inside1 = (r1 >= 0) & (r1 < h) & (c1 >= 0) & (c1 < w)
    chain = inside1.copy()
    if occ_first is not None:
        chain &= ~occ_first[ys, xs]
    d2 = d1.copy()
    d2[chain] = flow_second[r1[chain], c1[chain]]
    r2 = np.floor(y1 + d2[:, 1] + 0.5).astype(np.int64)
    c2 = np.floor(x1 + d2[:, 0] + 0.5).astype(np.int64)
    inside2 = (r2 >= 0) & (r2 < h) & (c2 >= 0) & (c2 < w)
    out[r2[inside2], c2[inside2]] = labels[inside2]
    return out


class VideoTracker:
    """Stateful, ordered per-video labeler; one per stream (see the module docstring).

    ``push`` takes :class:`FrameCues` (needs ``semantics``) or a ready :class:`FrameProposal`.
    Frames of one video must arrive with consecutive ``frame_index``; ``flush`` ends the video
    (emits what is left and resets), after which a new video may start.
    """

    def __init__(self, cfg: LabelingConfig, *, semantics: SemanticLabeler | None = None,
                 emit: Literal["online", "clip"] = "online", max_track_id: int = MAX_TRACK_ID):
        if emit not in ("online", "clip"):
            raise ValueError(f"emit must be 'online' or 'clip', got {emit!r}")
        if max_track_id < 1:
            raise ValueError(f"max_track_id must be >= 1, got {max_track_id}")
        self.cfg = cfg
        self.semantics = semantics
        self.emit = emit
        self.max_track_id = max_track_id
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget everything: window, tracks, clip statistics, IDs."""
        self._video_id: str | None = None
        self._last_index: int | None = None
        self._next_id = 1
        self._prev: FrameProposal | None = None  # frame t-1 (raw semantics, flows)
        self._prev_tracked: np.ndarray | None = None  # track IDs of t-1
        self._cur: FrameProposal | None = None  # frame t, waiting for t+1
        self._reserved: dict[int, int] = {}  # proposal ID of the current frame -> recovered track
        self._clip_index: int | None = None
        self._clip_frames: list[dict] = []  # frame_index, semantic (voted), instance, ignore
        self._track_hist: dict[int, np.ndarray] = {}  # track -> int64 K class histogram (this clip)
        self._track_frames: dict[int, int] = {}  # track -> frames seen in this clip

    def state_dict(self) -> dict:
        """Plain python/numpy state (picklable); ``load_state_dict`` resumes bit-identically."""
        return {
            "version": STATE_VERSION,
            "video_id": self._video_id,
            "last_index": self._last_index,
            "next_id": self._next_id,
            "prev": None if self._prev is None else _copy_dict(self._prev.to_dict()),
            "prev_tracked": None if self._prev_tracked is None else self._prev_tracked.copy(),
            "cur": None if self._cur is None else _copy_dict(self._cur.to_dict()),
            "reserved": [[int(k), int(v)] for k, v in sorted(self._reserved.items())],
            "clip_index": self._clip_index,
            "clip_frames": [_copy_dict(f) for f in self._clip_frames],
            "track_hist": {int(k): v.copy() for k, v in self._track_hist.items()},
            "track_frames": {int(k): int(v) for k, v in self._track_frames.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise DataError(f"tracker state has version {state.get('version')!r}, expected {STATE_VERSION}")
        self.reset()
        self._video_id = state["video_id"]
        self._last_index = state["last_index"]
        self._next_id = int(state["next_id"])
        self._prev = None if state["prev"] is None else FrameProposal.from_dict(_copy_dict(state["prev"]))
        self._prev_tracked = None if state["prev_tracked"] is None else state["prev_tracked"].copy()
        self._cur = None if state["cur"] is None else FrameProposal.from_dict(_copy_dict(state["cur"]))
        self._reserved = {int(k): int(v) for k, v in state["reserved"]}
        self._clip_index = state["clip_index"]
        self._clip_frames = [_copy_dict(f) for f in state["clip_frames"]]
        self._track_hist = {int(k): np.array(v, np.int64) for k, v in state["track_hist"].items()}
        self._track_frames = {int(k): int(v) for k, v in state["track_frames"].items()}

    # ------------------------------------------------------------------ public steps
    def push(self, item: FrameCues | FrameProposal) -> list[LabelledFrame]:
        """Add the next frame of the video; returns the frames finished by it (maybe none)."""
        proposal = self._as_proposal(item)
        self._check_order(proposal)
        out: list[LabelledFrame] = []
        if self._cur is not None:
            out = self._label_current(proposal)
        self._cur = proposal
        return out

    def flush(self) -> list[LabelledFrame]:
        """End of video: label the last frame, close the open clip, then reset."""
        out: list[LabelledFrame] = []
        if self._cur is not None:
            out = self._label_current(None)
        self.reset()
        return out

    def preview(self, nxt: FrameProposal | None) -> LabelledFrame | None:
        """Provisional label (``final=False``) of the waiting frame t now, before t+1's real
        proposal exists; the tracker state is left exactly as it was (low-latency streaming).

        ``nxt`` stands in for t+1 in the semantic vote (e.g. semantics from cues of the pair
        (t, t+1) alone); only its ``semantic`` is used, and None votes without t+1. Track IDs
        equal those ``push`` will give, since associating t needs only t-1 and t; the recovery
        reservations t+1 would get are not made (they belong to t+1's real proposal). So the
        preview can differ from the label ``push`` gives only in the voted semantics and the
        clip classes shown. None when no frame is waiting.
        """
        cur = self._cur
        if cur is None:
            return None
        if nxt is not None:
            nxt.validate()
            if nxt.video_id != cur.video_id or nxt.frame_index != cur.frame_index + 1 or nxt.shape != cur.shape:
                raise DataError(f"{nxt.name}: a preview needs the frame after {cur.name} with shape {cur.shape}, "
                                f"got shape {nxt.shape}")
        saved = (self._next_id, self._reserved, self._clip_index, len(self._clip_frames),
                 {k: v.copy() for k, v in self._track_hist.items()}, dict(self._track_frames))
        try:
            tracked = self._associate(cur, None)
            voted = self._vote(cur, nxt)
            if self._clip_index is None:
                self._clip_index = cur.frame_index // self.cfg.clip_length
            self._add_to_clip(cur.frame_index, voted, tracked, self._ignore_mask(cur))
            return self._render(self._clip_frames[-1], final=False)
        finally:
            (self._next_id, self._reserved, self._clip_index, n_frames,
             self._track_hist, self._track_frames) = saved
            del self._clip_frames[n_frames:]

    # ------------------------------------------------------------------ helpers
    def _as_proposal(self, item: FrameCues | FrameProposal) -> FrameProposal:
        if isinstance(item, FrameCues):
            if self.semantics is None:
                raise DataError(f"{item.name}: the tracker got raw cues but has no SemanticLabeler "
                                "(pass semantics=... or push FrameProposal objects)")
            return propose_frame(item, self.cfg, self.semantics)
        if isinstance(item, FrameProposal):
            item.validate()
            return item
        raise DataError(f"VideoTracker.push expects FrameCues or FrameProposal, got {type(item).__name__}")

    def _check_order(self, p: FrameProposal) -> None:
        if self._video_id is None:
            self._video_id, self._last_index = p.video_id, p.frame_index
            return
        if p.video_id != self._video_id:
            raise DataError(f"{p.name}: tracker is on video {self._video_id!r}; flush() or reset() "
                            "before starting another video")
        expected = self._last_index + 1
        if p.frame_index != expected:
            kind = "repeated or out-of-order" if p.frame_index <= self._last_index else "gap:"
            raise DataError(f"{p.name}: {kind} frame index {p.frame_index}, expected {expected} "
                            f"(last pushed {self._last_index})")
        if self._cur is not None and p.shape != self._cur.shape:
            raise DataError(f"{p.name}: shape {p.shape} differs from the previous frame's {self._cur.shape}")
        self._last_index = p.frame_index

    def _new_id(self) -> int:
        if self._next_id > self.max_track_id:
            raise DataError(f"{self._video_id}: ran out of track IDs (more than {self.max_track_id} "
                            "tracks in one video); cut the video into chunks")
        self._next_id += 1
        return self._next_id - 1

    def _associate(self, cur: FrameProposal, nxt: FrameProposal | None) -> np.ndarray:
        """Track IDs of the current frame (steps 1-3); sets the reservations for the next."""
        prop_ids = np.unique(cur.instances)
        prop_ids = prop_ids[prop_ids != 0]
        if not self.cfg.tracking:
            return cur.instances.astype(np.int32)
        assigned: dict[int, int] = {}
        prev, prev_tracked = self._prev, self._prev_tracked
        lost = np.zeros(0, np.int64)
        if prev is not None and prop_ids.size:
            if prev.flow_fw is None:
                raise DataError(f"{prev.name}: no forward flow, but frame {cur.frame_index} follows it")
            warped = kernels.warp_labels(cur.instances, prev.flow_fw, prev.occ_fw, fill=0)
            valid = None if prev.occ_fw is None else ~prev.occ_fw
            ids_a, ids_b, iou = kernels.iou_matrix(prev_tracked, warped, valid)
            for track, prop in match_by_iou(ids_a, ids_b, iou, self.cfg.tau_m):
                assigned[prop] = track
        if prev is not None:
            seen = np.unique(prev_tracked)
            lost = np.setdiff1d(seen[seen != 0], np.fromiter(assigned.values(), np.int64, len(assigned)))
        used = set(assigned.values())
        for prop in prop_ids.tolist():
            track = self._reserved.get(prop)
            if prop not in assigned and track is not None and track not in used:
                assigned[prop] = track
                used.add(track)
        for prop in prop_ids.tolist():
            if prop not in assigned:
                assigned[prop] = self._new_id()
        self._reserved = {}
        if self.cfg.recovery and nxt is not None and prev is not None and lost.size and cur.flow_fw is not None:
            pred = splat_tracks(prev_tracked, lost, prev.flow_fw, prev.occ_fw, cur.flow_fw)
            ids_a, ids_b, iou = kernels.iou_matrix(pred, nxt.instances, None)
            self._reserved = {prop: track for track, prop in match_by_iou(ids_a, ids_b, iou, self.cfg.tau_m)}
        lut = np.zeros(int(cur.instances.max(initial=0)) + 1, np.int32)
        for prop, track in assigned.items():
            lut[prop] = track
        return lut[cur.instances]

    def _vote(self, cur: FrameProposal, nxt: FrameProposal | None) -> np.ndarray:
        if not self.cfg.semantic_vote:
            return cur.semantic
        ign = self.cfg.ignore_label
        blank = np.full(cur.shape, ign, cur.semantic.dtype)
        prev_w = blank
        if self._prev is not None and cur.flow_bw is not None:
            prev_w = warp_semantic(self._prev.semantic, cur.flow_bw, cur.occ_bw, ign)
        next_w = blank
        if nxt is not None and cur.flow_fw is not None:
            next_w = warp_semantic(nxt.semantic, cur.flow_fw, cur.occ_fw, ign)
        return kernels.majority_vote3(prev_w, cur.semantic, next_w, ignore=ign)

    def _ignore_mask(self, cur: FrameProposal) -> np.ndarray:
        """Pixels of t without a correspondence in t+1 (in t-1 at the last frame)."""
        occ = cur.occ_fw if cur.occ_fw is not None else cur.occ_bw
        if not self.cfg.ignore_occluded or occ is None:
            return np.zeros(cur.shape, bool)
        return occ.astype(bool, copy=True)

    def _label_current(self, nxt: FrameProposal | None) -> list[LabelledFrame]:
        cur = self._cur
        tracked = self._associate(cur, nxt)
        voted = self._vote(cur, nxt)
        ignore = self._ignore_mask(cur)
        self._prev, self._prev_tracked = cur, tracked
        self._cur = None
        clip = cur.frame_index // self.cfg.clip_length
        if self._clip_index is None:
            self._clip_index = clip
        self._add_to_clip(cur.frame_index, voted, tracked, ignore)
        if cur.depth is not None:  # the depth cue rides along to the shard row
            self._clip_frames[-1]["depth"] = cur.depth
        if nxt is None or (cur.frame_index + 1) % self.cfg.clip_length == 0:
            return self._close_clip()  # last frame of its clip or of the video
        if self.emit == "online":
            return [self._render(self._clip_frames[-1], final=False)]
        return []

    def _add_to_clip(self, frame_index: int, semantic: np.ndarray, tracked: np.ndarray,
                     ignore: np.ndarray) -> None:
        self._clip_frames.append({"frame_index": frame_index, "semantic": semantic,
                                  "instance": tracked, "ignore": ignore})
        if not self.cfg.tracking:
            return
        k = self.cfg.num_clusters
        on = tracked != 0
        ids, inv = np.unique(tracked[on], return_inverse=True)
        sem = np.minimum(semantic[on].astype(np.int64), k)  # ignore -> overflow bin k
        hist = np.bincount(inv.astype(np.int64) * (k + 1) + sem, minlength=ids.size * (k + 1))
        hist = hist.reshape(ids.size, k + 1)[:, :k]
        for row, track in enumerate(ids.tolist()):
            if track in self._track_hist:
                self._track_hist[track] += hist[row]
            else:
                self._track_hist[track] = hist[row].astype(np.int64)
            self._track_frames[track] = self._track_frames.get(track, 0) + 1

    def _render(self, f: dict, *, final: bool) -> LabelledFrame:
        semantic, instance = f["semantic"], f["instance"]
        if self.cfg.tracking and (self.cfg.clip_alignment or final):
            top = int(instance.max(initial=0))
            keep = np.zeros(top + 1, bool)
            cls = np.zeros(top + 1, np.int64)
            for track in np.unique(instance).tolist():
                if track == 0:
                    continue
                hist = self._track_hist[track]
                keep[track] = not final or self._track_frames[track] >= self.cfg.min_track_frames
                cls[track] = int(np.argmax(hist)) if hist.any() else -1
            if final:
                instance = np.where(keep[instance], instance, 0).astype(np.int32)
            if self.cfg.clip_alignment:
                aligned = keep[instance] & (instance != 0) & (cls[instance] >= 0)
                semantic = np.where(aligned, cls[instance], semantic).astype(semantic.dtype)
        return LabelledFrame(self._video_id, int(f["frame_index"]), semantic, instance,
                             f["ignore"], final, int(self._clip_index), depth=f.get("depth"))

    def _close_clip(self) -> list[LabelledFrame]:
        out = [self._render(f, final=True) for f in self._clip_frames]
        self._clip_frames = []
        self._track_hist = {}
        self._track_frames = {}
        self._clip_index = None
        return out


def _copy_dict(d: dict) -> dict:
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in d.items()}
