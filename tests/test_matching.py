"""Unsupervised cluster-to-class matching: Hungarian per kind, majority leftovers, apply."""

from __future__ import annotations

import numpy as np
import pytest

from videocups_ray.data.types import DataError
from videocups_ray.metrics import MatchingError, UnsupervisedMatcher

DIV = 1 << 16
V = 255


def matcher() -> UnsupervisedMatcher:
    # 4 GT classes: 0, 1 stuff; 2, 3 things.
    return UnsupervisedMatcher(4, [2, 3], 255, DIV)


def test_hungarian_per_kind_then_majority_for_leftovers():
    m = matcher()
    # Pseudo 10 covers GT 0 (6 px) and 1 (2 px); pseudo 11 covers GT 0 (5 px): Hungarian gives
    # 10 -> 0? No: maximum total is 10 -> 1 (2) + 11 -> 0 (5) = 7 vs 10 -> 0 (6) + 11 -> ... 0
    # overlap with 1 -> 6. So 10 -> 1, 11 -> 0 (one-to-one beats greedy).
    # Pseudo-things 20 (on GT 3) and 21 (on GT 3, fewer pixels) -> 20 -> 3 by Hungarian, 21 is
    # a leftover to its majority class 3. Pseudo 30 only on void -> ignore label.
    gt = np.array([[0] * 6 + [1] * 2 + [0] * 5 + [3] * 4 + [3] * 2 + [V] * 3])
    pred = np.array([[10] * 6 + [10] * 2 + [11] * 5 + [20] * 4 + [21] * 2 + [30] * 3])
    inst = np.array([[0] * 13 + [1] * 4 + [2] * 2 + [0] * 3])
    m.update(gt, pred, inst > 0)
    mapping = m.fit()
    assert mapping.table == {10: 1, 11: 0, 20: 3, 21: 3, 30: V}
    assert mapping.hungarian == (10, 11, 20)
    assert mapping.majority == (21,)
    assert mapping.unmatched == (30,)
    assert mapping.pseudo_things == (20, 21)
    d = mapping.to_dict()
    assert d["pseudo_to_gt"]["10"] == 1 and d["overlap_pixels"]["11"] == 5


def test_things_only_match_things_and_stuff_only_stuff():
    m = matcher()
    # Pseudo-thing 5 lies mostly on stuff 0 but a bit on thing 2: Hungarian (thing block) -> 2.
    # Pseudo-stuff 6 lies mostly on thing 3 but a bit on stuff 1: Hungarian (stuff block) -> 1.
    gt = np.array([[0, 0, 0, 2, 3, 3, 3, 1]])
    pred = np.array([[5, 5, 5, 5, 6, 6, 6, 6]])
    m.update(gt, pred, pred_things=[5])
    assert m.fit().table == {5: 2, 6: 1}


def test_pseudo_class_without_kind_overlap_goes_to_majority():
    # A pseudo-class carrying no instances whose pixels are all on a thing class (GT crowd
    # only, as person in the KITTI sample) gets zero overlap in the stuff block and is
    # assigned to its majority class instead.
    m = matcher()
    m.update(np.array([[0, 0, 3, 3]]), np.array([[7, 7, 8, 8]]), np.zeros((1, 4), bool))
    mapping = m.fit()
    assert mapping.table == {7: 0, 8: 3}
    assert mapping.majority == (8,)


def test_apply_keeps_instances_and_things_mapped_to_stuff_lose_them():
    m = matcher()
    gt = np.array([[2, 2, 0, 0, 0, 1]])
    pred_sem = np.array([[40, 40, 41, 41, 41, 42]])
    pred_inst = np.array([[7, 7, 3, 3, 3, 0]])
    # 40 -> 2 (thing, Hungarian); 41 carries instances but has no thing overlap left, so it is a
    # leftover -> majority class 0 (stuff) and loses its instance; 42 -> 1 (stuff).
    m.update(gt, pred_sem, pred_inst > 0)
    assert m.fit().table == {40: 2, 41: 0, 42: 1}
    out = m.apply(pred_sem * DIV + pred_inst)
    assert out.tolist() == [[2 * DIV + 7, 2 * DIV + 7, 0, 0, 0, DIV]]
    ignored = m.apply(np.array([[V * DIV + 5, 40 * DIV + 1]]))
    assert ignored.tolist() == [[V * DIV, 2 * DIV + 1]]


def test_apply_before_fit_and_unseen_classes_raise():
    m = matcher()
    with pytest.raises(MatchingError, match="before fit"):
        m.apply(np.zeros((2, 2), np.int64))
    m.update(np.array([[0, 1]]), np.array([[3, 4]]), [])
    m.fit()
    with pytest.raises(MatchingError, match=r"frame 9.*\[99\]"):
        m.apply(np.array([[3 * DIV, 99 * DIV]]), where="frame 9")


def test_bad_input_is_named():
    m = matcher()
    with pytest.raises(DataError, match="same shape"):
        m.update(np.zeros((2, 2)), np.zeros((2, 3)), [], where="video 'a' frame 3")
    with pytest.raises(DataError, match="ground-truth class 7"):
        m.update(np.array([[7]]), np.array([[1]]), [])
    with pytest.raises(DataError, match="pseudo-class IDs"):
        m.update(np.array([[0]]), np.array([[-1]]), [])
