"""The ViP-DeepLab VPQ protocol next to the mcahny/vps one, and DVPQ with depth metrics.

Every difference between the two protocols has a hand-computed case here (numbers worked out
in the comments); a brute-force transcription of ``eval_dvpq``'s counting rules (dicts over
the windows stacked side by side) checks the streaming implementation on random maps.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from videocups_ray.metrics import DVPQ, VPQ, DepthMetrics
from videocups_ray.metrics.dvpq import depth_reject_mask

DIV = 1000
V = 255


def pan(semantic, instance=0) -> np.ndarray:
    return np.asarray(semantic, np.int64) * DIV + np.asarray(instance, np.int64)


def score(gt, pred, protocol, windows=(1,)) -> dict:
    """3 classes: 0 and 1 stuff, 2 thing."""
    m = VPQ(3, [2], V, DIV, window_sizes=windows, protocol=protocol)
    for g, p in zip(gt, pred):
        m.update(np.asarray(g), np.asarray(p), "s")
    return m.result()


def test_difference_1_crowd_is_an_ordinary_segment():
    # GT: crowd car (class 2, instance 0) on px 0-1, road on px 2-3.
    # Pred: car 5 on px 0, class-1 stuff on px 1, road on px 2-3.
    gt = [pan([[2, 2, 0, 0]], [[0, 0, 0, 0]])]
    pred = [pan([[2, 1, 0, 0]], [[5, 0, 0, 0]])]
    # vps: crowd neither matched nor FN; car 5 lies wholly on its class's crowd -> no FP;
    # class 1 is one FP; road TP. PQ = mean(road 1, class1 0) = 0.5, class 2 not counted.
    vps = score(gt, pred, "vps")["per_window"][1]
    assert vps["PQ"] == pytest.approx(0.5) and 2 not in vps["per_class"]
    # vip-deeplab: GT 2000 is a segment: IoU(2000, 2005) = 1 / (2 + 1 - 1) = 0.5, not > 0.5,
    # so FN 1 and FP 1 for class 2; PQ = mean(1, 0, 0) = 1/3.
    vip = score(gt, pred, "vip-deeplab")["per_window"][1]
    assert vip["PQ"] == pytest.approx(1 / 3)
    assert vip["per_class"][2] == {"PQ": 0.0, "TP": 0, "FP": 1, "FN": 1}


def test_difference_2_stuff_instance_ids_are_kept():
    gt = [pan([[0, 0, 0, 0]])]
    pred = [pan([[0, 0, 0, 0]], [[1, 1, 2, 2]])]
    # vps: stuff instance dropped -> one segment, IoU 1.
    assert score(gt, pred, "vps")["VPQ"] == pytest.approx(1.0)
    # vip-deeplab: two segments of 2 px against 4 px: IoU 2 / 4 = 0.5 each, no match;
    # FN 1, FP 2 -> PQ 0.
    r = score(gt, pred, "vip-deeplab")["per_window"][1]
    assert r["PQ"] == 0.0 and r["per_class"][0] == {"PQ": 0.0, "TP": 0, "FP": 2, "FN": 1}


def test_difference_3_false_positive_excused_by_void_only():
    # GT: crowd car px 0-1, void px 2, road px 3-5. Pred: void px 0, car 7 on px 1-3, road px 4-5.
    gt = [pan([[2, 2, V, 0, 0, 0]])]
    pred = [pan([[V, 2, 2, 2, 0, 0]], [[0, 7, 7, 7, 0, 0]])]
    # Road: IoU 2 / (3 + 2 - 2) = 2/3 in both protocols.
    # vps: car 7 lies 1/3 on void + 1/3 on its class's crowd = 2/3 > 0.5 -> not an FP;
    # PQ = road only = 2/3.
    assert score(gt, pred, "vps")["VPQ"] == pytest.approx(2 / 3)
    # vip-deeplab: only void excuses (1/3) -> FP; and the crowd GT 2000 is an FN
    # (IoU 1 / (2 + 3 - 1 - 1) = 1/3). PQ = mean(2/3, 0) = 1/3.
    r = score(gt, pred, "vip-deeplab")["per_window"][1]
    assert r["PQ"] == pytest.approx(1 / 3) and r["per_class"][2]["FP"] == 1 and r["per_class"][2]["FN"] == 1


def test_same_in_both_windows_stacked_and_absent_classes_excluded():
    # A car tracked in both frames, but the prediction switches its ID in frame 1.
    gt = [pan([[2, 2, 0, 0]], [[1, 1, 0, 0]])] * 2
    pred = [pan([[2, 2, 0, 0]], [[1, 1, 0, 0]]), pan([[2, 2, 0, 0]], [[2, 2, 0, 0]])]
    for protocol in ("vps", "vip-deeplab"):
        r = score(gt, pred, protocol, windows=(1, 2))["per_window"]
        # k=1: two windows, car TP in each. k=2: the 4-px tube against two 2-px tubes:
        # IoU 0.5 each -> FN 1, FP 2.
        assert r[1]["per_class"][2] == {"PQ": 1.0, "TP": 2, "FP": 0, "FN": 0}
        assert r[2]["per_class"][2] == {"PQ": 0.0, "TP": 0, "FP": 2, "FN": 1}
        assert r[2]["num_windows"] == 1
        # class 1 has no GT and no prediction: not averaged in (PQ = mean(road 1, car 0)).
        assert 1 not in r[2]["per_class"] and r[2]["PQ"] == pytest.approx(0.5)


def test_protocol_is_checked():
    with pytest.raises(ValueError, match="protocol"):
        VPQ(3, [2], protocol="coco")


# --------------------------------------------------------------------------- brute force
def _eval_dvpq_reference(gts, preds, num_classes, window):
    """eval_dvpq's rules, written out with dicts over windows stacked side by side: IDs
    class * DIV + instance, GT void = class V (never FN; the union leaves out a prediction's
    overlap with void; an unmatched prediction over half on void is no FP), match at IoU >
    0.5 within a class, class ``num_classes`` (rejected pixels) never scored, PQ averaged
    over classes with any TP/FP/FN."""
    tp, fp, fn, iou_sum = Counter(), Counter(), Counter(), Counter()
    for s in range(len(gts) - window + 1):
        g = np.concatenate(gts[s:s + window], axis=1).ravel()
        p = np.concatenate(preds[s:s + window], axis=1).ravel()
        ga, pa, inter = Counter(g.tolist()), Counter(p.tolist()), Counter(zip(g.tolist(), p.tolist()))
        void = V * DIV
        gm, pm = set(), set()
        for (gi, pi), a in inter.items():
            if gi // DIV != pi // DIV or gi // DIV == V:
                continue
            iou = a / (ga[gi] + pa[pi] - a - inter.get((void, pi), 0))
            if iou > 0.5:
                tp[gi // DIV] += 1
                iou_sum[gi // DIV] += iou
                gm.add(gi)
                pm.add(pi)
        for gi in ga:
            if gi not in gm and gi // DIV != V:
                fn[gi // DIV] += 1
        for pi in pa:
            if pi not in pm and inter.get((void, pi), 0) / pa[pi] <= 0.5:
                fp[pi // DIV] += 1
    pqs = [iou_sum[c] / (tp[c] + 0.5 * fp[c] + 0.5 * fn[c])
           for c in range(num_classes) if tp[c] + fp[c] + fn[c] > 0]
    return float(np.mean(pqs))


def test_vip_protocol_equals_eval_dvpq_rules_on_random_maps():
    rng = np.random.default_rng(7)
    h, w, n = 6, 7, 5
    gts, preds, dgt, dpred = [], [], [], []
    for _ in range(n):
        sem = rng.choice([0, 1, 2, V], size=(h, w), p=[0.35, 0.25, 0.3, 0.1])
        gts.append(pan(sem, np.where(sem == 2, rng.integers(0, 3, (h, w)), 0)))
        psem = np.where(rng.random((h, w)) < 0.8, np.where(sem == V, 0, sem), rng.choice([0, 1, 2], (h, w)))
        preds.append(pan(psem, rng.integers(0, 3, (h, w))))  # stuff instances too
        dgt.append(np.where(rng.random((h, w)) < 0.8, rng.uniform(2, 50, (h, w)), 0.0))
        dpred.append(dgt[-1] * rng.uniform(0.6, 1.4, (h, w)))
    m = DVPQ(3, [2], V, DIV, window_sizes=(1, 2, 3), thresholds=(0.5, 0.1))
    for t in range(n):
        m.update(gts[t], preds[t], dgt[t], dpred[t], "s", frame_index=t)
    r = m.result()
    for lam in (0.5, 0.1):
        rejected = [np.where(depth_reject_mask(dgt[t], dpred[t], lam), 3 * DIV, preds[t]) for t in range(n)]
        for k in (1, 2, 3):
            want = _eval_dvpq_reference(gts, rejected, 3, k)
            assert r["per_threshold"][str(lam)]["per_window"][k]["PQ"] == pytest.approx(want)
    # With no rejection DVPQ is plain VPQ of the protocol.
    plain = VPQ(3, [2], V, DIV, window_sizes=(2,), protocol="vip-deeplab")
    for t in range(n):
        plain.update(gts[t], preds[t], "s")
    assert plain.result()["VPQ"] == pytest.approx(_eval_dvpq_reference(gts, preds, 3, 2))


# --------------------------------------------------------------------------- DVPQ + depth
def test_dvpq_hand_computed_and_depth_metrics():
    gt = pan([[0, 0, 0, 0]])
    pred = pan([[0, 0, 0, 0]])
    d_gt = np.array([[10.0, 10.0, 10.0, 0.0]])
    d_pred = np.array([[10.0, 10.0, 12.0, 5.0]])  # px 2: rel. error 0.2; px 3: no GT depth
    m = DVPQ(3, [2], V, DIV, window_sizes=(1,))
    m.update(gt, pred, d_gt, d_pred, "s")
    r = m.result()
    # lambda 0.5 / 0.25 keep px 2: IoU 1. lambda 0.1 rejects it: pred 3 px, GT 4 px, IoU 3/4.
    assert [r["per_threshold"][k]["VPQ"] for k in ("0.5", "0.25", "0.1")] == pytest.approx([1, 1, 0.75])
    assert r["DVPQ"] == pytest.approx((1 + 1 + 0.75) / 3)
    # AbsRel over the 3 valid pixels: (0 + 0 + 0.2) / 3; delta1: all 3 within 1.25.
    assert r["depth"]["AbsRel"] == pytest.approx(0.2 / 3)
    assert r["depth"]["SqRel"] == pytest.approx(0.04 / 3)
    assert r["depth"]["delta1"] == pytest.approx(1.0)


def test_depth_abs_rel_is_averaged_per_sequence_like_eval_dvpq():
    dm = DepthMetrics()
    dm.update(np.array([[10.0, 10.0]]), np.array([[11.0, 11.0]]), "a")  # 0.1 on 2 px
    dm.update(np.array([[10.0]]), np.array([[13.0]]), "a")  # 0.3 on 1 px -> seq a: 0.5/3
    dm.update(np.array([[4.0]]), np.array([[4.0]]), "b")  # seq b: 0
    assert dm.result()["AbsRel"] == pytest.approx((0.5 / 3 + 0) / 2)
    assert DepthMetrics().result()["AbsRel"] is None
