"""PQ, AJI, object Dice and count error against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from domainfm.shared.tasks.instance_metrics import InstanceScores


def _case() -> tuple[np.ndarray, np.ndarray]:
    """Three true 4x4 objects: A overlapped by a prediction shifted one column, B found exactly, C missed;
    and one false 2x4 prediction."""
    true, pred = np.zeros((12, 20), int), np.zeros((12, 20), int)
    true[0:4, 0:4], true[0:4, 8:12], true[8:12, 0:4] = 1, 2, 3
    pred[0:4, 1:5], pred[0:4, 8:12], pred[8:10, 14:18] = 5, 7, 9
    return true, pred


def test_two_overlapping_one_missed_and_one_false_object():
    scores = InstanceScores()
    scores.update(*_case())
    result = scores.compute()
    # A-P5: intersection 12, union 20, IoU 0.6; B-P7: IoU 1; C missed; P9 false
    assert (result["tp"], result["fp"], result["fn"]) == (2, 1, 1)
    assert result["sq"] == pytest.approx((0.6 + 1.0) / 2)
    assert result["dq"] == pytest.approx(2 / (2 + 0.5 + 0.5))
    assert result["pq"] == pytest.approx(0.8 * 2 / 3)
    # AJI: (12 + 16) / (20 + 16 + 16 (C alone) + 8 (P9 never paired))
    assert result["aji"] == pytest.approx(28 / 60)
    # object Dice: true side (0.75 * 16 + 1 * 16 + 0 * 16) / 48, predicted side (0.75 * 16 + 16 + 0 * 8) / 40
    assert result["object_dice"] == pytest.approx(0.5 * (28 / 48 + 28 / 40))
    assert (result["true_count"], result["pred_count"], result["count_error"]) == (3, 3, 0)


def test_a_prediction_covering_two_true_objects_matches_at_most_one():
    true, pred = np.zeros((4, 10), int), np.zeros((4, 10), int)
    true[:, 0:3], true[:, 3:5] = 1, 2  # 12 and 8 px, touching
    pred[:, 0:5] = 1  # merged: IoU 12/20 with object 1, 8/20 with object 2
    scores = InstanceScores()
    scores.update(true, pred)
    result = scores.compute()
    assert (result["tp"], result["fp"], result["fn"]) == (1, 0, 1)
    assert result["pq"] == pytest.approx(0.6 * 1 / 1.5)
    # AJI pairs both true objects with the one prediction: (12 + 8) / (20 + 20)
    assert result["aji"] == pytest.approx(0.5)
    assert result["count_error"] == -1 and result["mean_absolute_count_error"] == 1


def test_scores_pool_over_images_and_per_class():
    true, pred = _case()
    true_class = np.array([-1, 0, 1, 1])  # A class 0; B, C class 1
    pred_class = np.full(10, -1)
    pred_class[[5, 7, 9]] = [0, 1, 0]
    scores = InstanceScores(["a", "b"])
    scores.update(true, pred, true_class, pred_class)
    scores.update(np.zeros((3, 3), int), np.zeros((3, 3), int), true_class, pred_class)  # an empty tile adds nothing
    result = scores.compute()
    per = result["per_class"]
    # class a: A-P5 matched (0.6), P9 false -> TP 1, FP 1, FN 0
    assert per["a"]["pq"] == pytest.approx(0.6 * 1 / 1.5)
    # class b: B-P7 exact, C missed
    assert per["b"]["pq"] == pytest.approx(1.0 * 1 / 1.5)
    assert result["mpq"] == pytest.approx((0.4 + 2 / 3) / 2)
    assert result["pq"] == pytest.approx(0.8 * 2 / 3) and result["mean_absolute_count_error"] == 0


def test_no_objects_anywhere_is_undefined_and_no_prediction_scores_zero():
    empty = InstanceScores()
    empty.update(np.zeros((4, 4), int), np.zeros((4, 4), int))
    assert math.isnan(empty.compute()["pq"])
    missed = InstanceScores()
    true = np.zeros((4, 4), int)
    true[1:3, 1:3] = 4
    missed.update(true, np.zeros((4, 4), int))
    result = missed.compute()
    assert result["pq"] == 0 and result["aji"] == 0 and result["object_dice"] == 0 and result["count_error"] == -1
    with pytest.raises(ValueError, match="differ in shape"):
        missed.update(true, np.zeros((3, 3), int))
