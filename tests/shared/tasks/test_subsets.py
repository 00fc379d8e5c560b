import numpy as np
import pytest

from domainfm.shared.tasks.subsets import label_fraction


def test_plain_choice_is_seeded_sorted_and_at_least_two():
    ids = np.arange(10, 110)
    subset = label_fraction(ids, 0.1, seed=4)
    assert len(subset) == 10 and set(subset) <= set(ids) and np.all(np.diff(subset) > 0)
    assert np.array_equal(subset, label_fraction(ids, 0.1, seed=4))
    assert not np.array_equal(subset, label_fraction(ids, 0.1, seed=5))
    assert len(label_fraction(ids, 0.001, seed=0)) == 2
    assert np.array_equal(label_fraction(ids, 1.0, seed=0), ids)
    # the choice the radiology probe made before it moved here
    expected = np.sort(np.random.default_rng(4).choice(ids, size=10, replace=False))
    assert np.array_equal(subset, expected)


def test_stratified_choice_keeps_every_class():
    ids = np.arange(50)
    labels = np.array([0] * 40 + [1] * 8 + [2] * 2)
    subset = label_fraction(ids, 0.1, seed=1, labels=labels)
    assert [int((labels[subset] == c).sum()) for c in range(3)] == [4, 1, 1]
    assert np.array_equal(subset, label_fraction(ids, 0.1, seed=1, labels=labels))


def test_count_caps_at_all_ids():
    ids = np.arange(7)
    assert len(label_fraction(ids, count=3, seed=0)) == 3
    assert np.array_equal(label_fraction(ids, count=100, seed=0), ids)
    with pytest.raises(ValueError, match="exactly one"):
        label_fraction(ids, 0.5, count=3)
