"""Instance-segmentation scores: panoptic quality, AJI, object-level Dice and count error, per class and overall.

* **PQ = DQ x SQ** (Kirillov et al., "Panoptic Segmentation", CVPR 2019; for nuclei, Graham et al.
  2019, HoVer-Net): a predicted and a true object match when their IoU exceeds 0.5 (such a match is
  unique); ``DQ = TP / (TP + FP/2 + FN/2)``, ``SQ`` = mean IoU of the matches.
* **AJI** (Kumar et al., IEEE TMI 2017): every true object is paired with the predicted object of largest
  IoU; ``AJI = sum |G n S| / (sum |G u S| + area of predicted objects never paired)``.
* **Object Dice** (Sirinukunwattana et al., GlaS challenge, MedIA 2017): the area-weighted Dice of every
  true object with its most-overlapping prediction and of every prediction with its most-overlapping true
  object, averaged.
* **Count error**: predicted minus true objects, and its absolute value.

Scores are pooled over all images (true positives, intersections, unions and areas summed before the
ratios, as CoNIC pools PQ): tiles without objects then count for what they hold instead of being undefined.
Per class, only the objects of that class (true and predicted) take part, as PanNuke's and CoNIC's
multi-class PQ. torchmetrics' ``PanopticQuality`` scores category/instance pairs but has no AJI or object
Dice, so one contingency table here serves all four.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _contingency(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Intersections ``[n_true, n_pred]`` of the objects present, their areas, and their ids."""
    true_ids = np.unique(true[true > 0])
    pred_ids = np.unique(pred[pred > 0])
    t = np.searchsorted(true_ids, true.ravel())  # 0..n for present ids; background handled below
    p = np.searchsorted(pred_ids, pred.ravel())
    inside = (true.ravel() > 0) & (pred.ravel() > 0)
    table = np.bincount(t[inside] * len(pred_ids) + p[inside], minlength=len(true_ids) * len(pred_ids)).reshape(
        len(true_ids), len(pred_ids)
    )
    true_area = np.bincount(t[true.ravel() > 0], minlength=len(true_ids))
    pred_area = np.bincount(p[pred.ravel() > 0], minlength=len(pred_ids))
    return table.astype(np.float64), true_area.astype(np.float64), pred_area.astype(np.float64), true_ids


@dataclass
class _Sums:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou: float = 0.0
    aji_inter: float = 0.0
    aji_union: float = 0.0
    dice_true: float = 0.0  # sum over true objects of area x Dice
    area_true: float = 0.0
    dice_pred: float = 0.0
    area_pred: float = 0.0
    n_true: int = 0
    n_pred: int = 0

    def add(self, true: np.ndarray, pred: np.ndarray, threshold: float) -> None:
        inter, true_area, pred_area, _ = _contingency(true, pred)
        union = true_area[:, None] + pred_area[None, :] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        matched = iou > threshold
        self.tp += int(matched.sum())
        self.fn += len(true_area) - int(matched.any(1).sum())
        self.fp += len(pred_area) - int(matched.any(0).sum())
        self.iou += float(iou[matched].sum())
        self.n_true += len(true_area)
        self.n_pred += len(pred_area)
        used = np.zeros(len(pred_area), bool)
        for i in range(len(true_area)):  # AJI: each true object with its best prediction
            if len(pred_area) and inter[i].max() > 0:
                j = int(iou[i].argmax())
                self.aji_inter += inter[i, j]
                self.aji_union += union[i, j]
                used[j] = True
            else:
                self.aji_union += true_area[i]
        self.aji_union += float(pred_area[~used].sum())
        dice = np.divide(2 * inter, true_area[:, None] + pred_area[None, :], out=np.zeros_like(inter), where=inter > 0)
        if len(true_area):
            best = dice[np.arange(len(true_area)), inter.argmax(1)] if len(pred_area) else np.zeros(len(true_area))
            self.dice_true += float((true_area * best).sum())
            self.area_true += float(true_area.sum())
        if len(pred_area):
            best = dice[inter.argmax(0), np.arange(len(pred_area))] if len(true_area) else np.zeros(len(pred_area))
            self.dice_pred += float((pred_area * best).sum())
            self.area_pred += float(pred_area.sum())

    def scores(self) -> dict[str, float]:
        nan = float("nan")
        denominator = self.tp + 0.5 * self.fp + 0.5 * self.fn
        dq = self.tp / denominator if denominator else nan
        sq = self.iou / self.tp if self.tp else (0.0 if denominator else nan)
        sides = [s / a for s, a in ((self.dice_true, self.area_true), (self.dice_pred, self.area_pred)) if a]
        return {
            "pq": dq * sq if denominator else nan,
            "dq": dq,
            "sq": sq,
            "aji": self.aji_inter / self.aji_union if self.aji_union else nan,
            "object_dice": float(np.mean(sides)) if len(sides) == 2 else (0.0 if sides else nan),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "true_count": self.n_true,
            "pred_count": self.n_pred,
            "count_error": self.n_pred - self.n_true,
        }


def _of_class(ids: np.ndarray, classes: np.ndarray, c: int) -> np.ndarray:
    keep = np.zeros(max(int(ids.max()) + 1, len(classes)), bool)
    selected = np.flatnonzero(np.asarray(classes) == c)
    keep[selected[selected < len(keep)]] = True
    keep[0] = False
    return np.where(keep[ids], ids, 0)


@dataclass
class InstanceScores:
    """Pools instance scores over images, overall and per class.

    Attributes:
        class_names: Class of each class index (empty: overall scores only).
        threshold: IoU above which a prediction matches a true object (0.5: matches are unique).
    """

    class_names: list[str] = field(default_factory=list)
    threshold: float = 0.5
    overall: _Sums = field(default_factory=_Sums)
    per_class: dict[int, _Sums] = field(default_factory=dict)
    images: int = 0
    abs_count_error: int = 0

    def update(
        self,
        true: np.ndarray,
        pred: np.ndarray,
        true_class: np.ndarray | None = None,
        pred_class: np.ndarray | None = None,
    ) -> None:
        """Adds one image: ``[H, W]`` id maps (0 = background) and the class index of each id (indexed by id)."""
        true, pred = np.asarray(true, np.int64), np.asarray(pred, np.int64)
        if true.shape != pred.shape:
            raise ValueError(f"true and predicted id maps differ in shape: {true.shape} vs {pred.shape}")
        before = (self.overall.n_true, self.overall.n_pred)
        self.overall.add(true, pred, self.threshold)
        self.images += 1
        self.abs_count_error += abs((self.overall.n_pred - before[1]) - (self.overall.n_true - before[0]))
        if true_class is None or pred_class is None:
            return
        for c in range(len(self.class_names)):
            sums = self.per_class.setdefault(c, _Sums())
            sums.add(_of_class(true, true_class, c), _of_class(pred, pred_class, c), self.threshold)

    def compute(self) -> dict[str, object]:
        """Overall scores, ``mean_absolute_count_error`` per image, ``mpq`` (mean PQ of classes present), per class."""
        result: dict[str, object] = dict(self.overall.scores())
        result["mean_absolute_count_error"] = self.abs_count_error / self.images if self.images else float("nan")
        per_class = {self.class_names[c]: sums.scores() for c, sums in sorted(self.per_class.items())}
        if per_class:
            present = [s["pq"] for s in per_class.values() if s["true_count"]]
            result["mpq"] = float(np.mean(present)) if present else float("nan")
            result["per_class"] = per_class
        return result
