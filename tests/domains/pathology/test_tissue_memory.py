"""Tissue detection's memory does not grow faster than its mask: the growth bench's 40k-px slide (issue #20)."""

import tracemalloc

import numpy as np
from scipy import ndimage
from skimage.morphology import remove_small_objects as skimage_remove_small_objects

from domainfm.domains.pathology.tissue import (
    component_sizes,
    fill_enclosed_holes,
    remove_small_objects,
    tissue_fractions,
)


def _blobs(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.uniform_filter(rng.random(shape), 5) > 0.52  # objects and holes of many sizes


def test_remove_small_objects_equals_scikit_image():
    for seed in range(6):
        mask = _blobs((157, 211), seed)
        for max_size in (1, 4, 30, 400):
            ours = remove_small_objects(mask, max_size)
            assert np.array_equal(ours, skimage_remove_small_objects(mask, max_size=max_size))
    assert not remove_small_objects(np.zeros((5, 5), bool), 3).any()


def test_component_sizes_in_row_blocks_equal_one_bincount():
    labels, count = ndimage.label(_blobs((301, 97), 1))
    expected = np.bincount(labels.ravel(), minlength=count + 1)
    assert np.array_equal(component_sizes(labels, count, rows=7), expected)
    assert np.array_equal(component_sizes(labels, count), expected)


def test_tissue_fractions_and_hole_filling_stay_near_one_table_of_the_mask():
    # A 2,000-px mask (a 32k-px slide at 16x): the summed-area table is one int32 array, and the label counts
    # are never converted to int64 whole (both used to cost several int64 copies of the mask).
    mask = _blobs((2000, 2000), 2)
    coords = np.stack(np.meshgrid(np.arange(0, 31000, 448), np.arange(0, 31000, 448)), -1).reshape(-1, 2)
    tracemalloc.start()
    fractions = tissue_fractions(mask, 16.0, coords.astype(np.float64), 448.0)
    fractions_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    filled = fill_enclosed_holes(mask, 50)
    holes_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    pixels = mask.size
    assert fractions_peak < 5 * pixels  # int32 table: 4 bytes a pixel (int64 temporaries were 32)
    assert holes_peak < 7 * pixels  # int32 labels, bool copies and 512-row blocks (a whole bincount: 12+)
    # and the values are those of the plain computation
    table = np.zeros((2001, 2001), np.int64)
    table[1:, 1:] = mask.cumsum(0).cumsum(1)
    x0, y0 = np.clip(np.round(coords / 16.0).astype(np.int64), 0, 2000).T
    x1, y1 = np.clip(np.round((coords + 448.0) / 16.0).astype(np.int64), 0, 2000).T
    inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    assert np.array_equal(fractions, np.clip(inside / 784.0, 0, 1).astype(np.float32))
    holes, _ = ndimage.label(~mask)
    sizes = np.bincount(holes.ravel())
    fill = sizes <= 50
    fill[0] = False
    fill[np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))] = False
    assert np.array_equal(filled, mask | fill[holes])
