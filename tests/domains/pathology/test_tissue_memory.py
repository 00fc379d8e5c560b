"""Tissue detection's memory does not grow faster than its mask: the growth bench's 40k-px slide (issue #20)."""

import tracemalloc

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.filters import rank, threshold_otsu
from skimage.morphology import closing, disk, footprint_rectangle
from skimage.morphology import remove_small_objects as skimage_remove_small_objects

from domainfm.domains.pathology.tissue import (
    REFERENCE_MPP,
    TissueParams,
    _histogram_uint8,
    _saturation_value,
    component_sizes,
    fill_enclosed_holes,
    remove_small_objects,
    tissue_fractions,
    tissue_mask,
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


def test_strip_conversions_equal_one_conversion():
    rng = np.random.default_rng(3)
    thumbnail = rng.integers(0, 256, (301, 123, 3), dtype=np.uint8)
    hsv = np.asarray(Image.fromarray(thumbnail).convert("HSV"))
    saturation, value = _saturation_value(thumbnail, rows=17)
    assert np.array_equal(saturation, hsv[..., 1]) and np.array_equal(value, hsv[..., 2])
    for low, high in ((0, 255), (37, 38), (90, 200)):
        values = rng.integers(low, high + 1, (211, 97)).astype(np.uint8)
        assert threshold_otsu(hist=_histogram_uint8(values, rows=13)) == threshold_otsu(values)


def _reference_mask(thumbnail: np.ndarray, params: TissueParams, thumb_mpp: float) -> np.ndarray:
    """The tissue mask as computed before its memory work: whole-image scikit-image steps."""
    hsv = np.array(Image.fromarray(thumbnail).convert("HSV"))
    values = rank.median(hsv[..., 1], footprint_rectangle((params.median, params.median)))
    mask = values > max(params.min_saturation, float(threshold_otsu(values)))
    mask = closing(mask, disk(params.close_radius))
    scale = (REFERENCE_MPP / thumb_mpp) ** 2
    mask = skimage_remove_small_objects(mask, max_size=max(1, int(params.min_object_px_at_8mpp * scale)))
    holes, _ = ndimage.label(~mask)
    fill = np.bincount(holes.ravel()) <= max(1, int(params.max_hole_px_at_8mpp * scale))
    fill[0] = False
    fill[np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))] = False
    return mask | fill[holes]


def test_tissue_mask_memory_is_a_few_bytes_per_thumbnail_pixel():
    # Glass with tissue blobs, 2,000 px a side: each step frees what the next does not need, and no step
    # makes an int64 copy of the image (the mask once peaked at 18 bytes a pixel, 113 MB at 2,500 px).
    rng = np.random.default_rng(4)
    thumbnail = np.full((2000, 2000, 3), 240, np.uint8)
    thumbnail[_blobs((2000, 2000), 5)] = (200, 120, 170)
    thumbnail = np.clip(thumbnail + rng.integers(-6, 7, thumbnail.shape), 0, 255).astype(np.uint8)
    params = TissueParams()
    tracemalloc.start()
    mask = tissue_mask(thumbnail, 4.0, params)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 * 2000 * 2000
    assert np.array_equal(mask, _reference_mask(thumbnail, params, 4.0))  # the same mask as before
    assert 0.1 < mask.mean() < 0.9  # and a real one: glass and tissue both found
