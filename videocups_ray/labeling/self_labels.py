"""Self-training labels: a trained model's predictions of the training videos merged with the
pseudo-labels, for the next round (``train.rounds``; CUPS / VideoCUPS self-training, simplified
to one offline teacher pass per round).

The motion-found pseudo instances are the most reliable thing labels there are, so they are kept
as they are; the model adds what the motion cue cannot find (static objects) where no pseudo
instance lies, and its semantic map replaces the pseudo-classes (the model's is smoother and
covers the pixels the pseudo-labels leave void). Pure numpy: no model, no files.
"""

from __future__ import annotations

import numpy as np

PREDICTED_ID_OFFSET = 1 << 24  # predicted track IDs are moved above every pseudo track ID (int32)


def merge_self_labels(pseudo_semantic: np.ndarray, pseudo_instance: np.ndarray, pred_semantic: np.ndarray,
                      pred_instance: np.ndarray, *, ignore_label: int = 255) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(semantic uint8, instance int32, ignore bool) of one frame for the next training round.

    Pseudo instance pixels (instance > 0) keep the pseudo semantic class and track ID; elsewhere
    the prediction's semantic class, and its instances with IDs + ``PREDICTED_ID_OFFSET``;
    ``ignore`` where the result is ``ignore_label``. All maps are HxW of one frame.
    """
    shapes = {a.shape for a in (pseudo_semantic, pseudo_instance, pred_semantic, pred_instance)}
    if len(shapes) != 1:
        raise ValueError(f"merge_self_labels: label maps differ in shape {sorted(shapes)}")
    if int(pred_instance.max(initial=0)) >= np.iinfo(np.int32).max - PREDICTED_ID_OFFSET:
        raise ValueError(f"merge_self_labels: predicted track ID {int(pred_instance.max())} does not fit above the offset")
    pseudo_obj = pseudo_instance > 0
    semantic = np.where(pseudo_obj, pseudo_semantic, pred_semantic).astype(np.uint8)
    pred_obj = (pred_instance > 0) & ~pseudo_obj
    instance = np.where(pseudo_obj, pseudo_instance, 0).astype(np.int32)
    instance[pred_obj] = pred_instance[pred_obj].astype(np.int32) + PREDICTED_ID_OFFSET
    return semantic, instance, semantic == ignore_label
