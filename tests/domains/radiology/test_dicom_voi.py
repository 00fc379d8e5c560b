"""read_dicom's display transform against pydicom's own VOI LUT / windowing (PS3.3 C.11.2).

Each case writes a small DICOM file with pydicom, reads it with :func:`read_dicom`, and compares with
``pydicom.pixels.apply_voi_lut`` applied to the Modality LUT output, mapped to [0, 1] over pydicom's output
range (and inverted for MONOCHROME1):

* windows (LINEAR, LINEAR_EXACT, SIGMOID): pydicom returns float64 in ``[y_min, y_max]``, the range of the
  stored bits (``0 .. 2**BitsStored - 1`` unsigned, ``-2**(BitsStored-1) .. 2**(BitsStored-1) - 1``
  signed) passed through RescaleSlope/RescaleIntercept;
* a VOI LUT Sequence: pydicom returns the LUT entries (uint8/uint16), whose range is ``0 .. 2**n - 1`` with
  ``n`` the third value of the LUT Descriptor.

The stored values of every case sweep the whole stored range and include each window's edges, so both the
clipped tails and the ramp are compared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from domainfm.domains.radiology.images import read_dicom

TOLERANCE = 1e-6


def _stored(bits: int, signed: bool, focus: tuple[float, float], extra: tuple[int, ...] = ()) -> np.ndarray:
    """A 32 x 32 image: the stored range's ends, ``extra`` values (edges), a dense sweep of the stored values
    in ``focus`` (the window or LUT input range) and a sweep of the whole stored range."""
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    head = np.array([low, high, *extra], dtype=np.float64)
    dense = np.linspace(*focus, 512)
    values = np.concatenate([head, dense, np.linspace(low, high, 1024 - len(head) - len(dense))])
    return np.clip(np.round(values), low, high).astype(np.int64).reshape(32, 32)


def _write(
    path: Path,
    stored: np.ndarray,
    bits: int,
    signed: bool,
    photometric: str,
    slope: float | None = None,
    intercept: float | None = None,
    **voi: object,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.PhotometricInterpretation = photometric
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    lut = voi.pop("lut", None)
    for keyword, value in voi.items():
        setattr(ds, keyword, value)
    if lut is not None:
        descriptor, data = lut
        item = Dataset()
        item.LUTDescriptor = list(descriptor)
        item.add_new(0x00283006, "US", [int(v) for v in data])  # LUTData
        ds.VOILUTSequence = [item]
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _window_range(bits: int, signed: bool, slope: float | None, intercept: float | None) -> tuple[float, float]:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if slope is None:
        return float(low), float(high)
    return low * slope + intercept, high * slope + intercept


def _pydicom_display(path: Path, output_range: tuple[float, float]) -> np.ndarray:
    """pydicom's Modality LUT then VOI LUT/window, mapped to [0, 1] over ``output_range``, air dark."""
    ds = pydicom.dcmread(path)
    modality = apply_modality_lut(ds.pixel_array, ds)
    if "VOILUTSequence" in ds:  # a LUT is indexed by integers (pydicom warns about float input)
        assert np.array_equal(modality, np.round(modality)), "LUT cases use an integral Modality LUT output"
        modality = modality.astype(np.int64)
    low, high = output_range
    shown = (np.asarray(apply_voi_lut(modality, ds), dtype=np.float64) - low) / (high - low)
    return 1.0 - shown if ds.PhotometricInterpretation == "MONOCHROME1" else shown


WINDOW_CASES = {
    # name: (bits stored, signed, photometric, rescale slope, rescale intercept, VOI elements)
    "linear_12bit_ct_like": (12, False, "MONOCHROME2", 1.0, -1024.0, {"WindowCenter": 40.0, "WindowWidth": 400.0}),
    "linear_16bit_monochrome1_rescaled": (
        16,
        False,
        "MONOCHROME1",
        2.0,
        -1024.0,
        {"WindowCenter": 2976.0, "WindowWidth": 8000.0, "VOILUTFunction": "LINEAR"},
    ),
    "linear_width_one_is_a_threshold": (
        12,
        False,
        "MONOCHROME2",
        None,
        None,
        {"WindowCenter": 100.5, "WindowWidth": 1.0},
    ),
    "linear_exact_12bit": (
        12,
        False,
        "MONOCHROME2",
        1.0,
        -1024.0,
        {"WindowCenter": 40.0, "WindowWidth": 400.0, "VOILUTFunction": "LINEAR_EXACT"},
    ),
    "linear_exact_16bit_signed_monochrome1": (
        16,
        True,
        "MONOCHROME1",
        0.5,
        10.0,
        {"WindowCenter": -200.0, "WindowWidth": 3000.0, "VOILUTFunction": "LINEAR_EXACT"},
    ),
    "sigmoid_12bit": (
        12,
        False,
        "MONOCHROME2",
        1.0,
        -1024.0,
        {"WindowCenter": 40.0, "WindowWidth": 400.0, "VOILUTFunction": "SIGMOID"},
    ),
    "sigmoid_16bit_signed_monochrome1": (
        16,
        True,
        "MONOCHROME1",
        0.5,
        10.0,
        {"WindowCenter": -200.0, "WindowWidth": 3000.0, "VOILUTFunction": "SIGMOID"},
    ),
    "multi_valued_window_uses_the_first": (
        12,
        False,
        "MONOCHROME2",
        1.0,
        -1024.0,
        {"WindowCenter": [300.0, 40.0], "WindowWidth": [1500.0, 400.0]},
    ),
    "window_without_rescale": (
        12,
        False,
        "MONOCHROME2",
        None,
        None,
        {"WindowCenter": 2048.0, "WindowWidth": 1024.0},
    ),
}


def _edges(center: float, width: float, slope: float | None, intercept: float | None) -> tuple[int, ...]:
    """Stored values at and beside the window's edges and centre (LINEAR's and LINEAR_EXACT's)."""
    slope, intercept = (1.0, 0.0) if slope is None else (slope, intercept)
    points = [center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2, center - width / 2, center + width / 2]
    points += [center - 0.5, center]
    return tuple(int(np.floor((p - intercept) / slope)) + d for p in points for d in (-1, 0, 1))


@pytest.mark.parametrize("case", WINDOW_CASES)
def test_window_matches_pydicom(case: str, tmp_path: Path):
    bits, signed, photometric, slope, intercept, voi = WINDOW_CASES[case]
    center, width = (np.atleast_1d(voi["WindowCenter"])[0], np.atleast_1d(voi["WindowWidth"])[0])
    edges = _edges(float(center), float(width), slope, intercept)
    stored = _stored(
        bits, signed, (min(edges) - 2 * width / (slope or 1), max(edges) + 2 * width / (slope or 1)), edges
    )
    path = _write(tmp_path / f"{case}.dcm", stored, bits, signed, photometric, slope, intercept, **dict(voi))
    expected = _pydicom_display(path, _window_range(bits, signed, slope, intercept))
    got = read_dicom(path)
    assert got.shape == stored.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    # the comparison is not vacuous: the window leaves dark, bright and intermediate pixels
    assert expected.min() < 0.05 and expected.max() > 0.95
    if case != "linear_width_one_is_a_threshold":
        assert ((expected > 0.05) & (expected < 0.95)).sum() >= 3


LUT_CASES = {
    # name: (bits, signed, photometric, intercept, LUT Descriptor, LUT data)
    "lut_16bit_entries_not_spanning_their_range": (
        12,
        False,
        "MONOCHROME2",
        None,
        (256, 1000, 16),
        np.linspace(2000, 40000, 256).round(),
    ),
    "lut_12bit_monochrome1": (
        12,
        False,
        "MONOCHROME1",
        None,
        (512, 0, 12),
        (4095 * np.sqrt(np.linspace(0, 1, 512))).round(),
    ),
    "lut_8bit_negative_first_value_signed": (
        16,
        True,
        "MONOCHROME2",
        None,
        (300, -100, 8),
        np.linspace(10, 250, 300).round(),
    ),
    "lut_after_integer_rescale": (12, False, "MONOCHROME2", -1024, (400, 100, 10), np.linspace(0, 1023, 400).round()),
}


@pytest.mark.parametrize("case", LUT_CASES)
def test_voi_lut_sequence_matches_pydicom(case: str, tmp_path: Path):
    bits, signed, photometric, intercept, descriptor, data = LUT_CASES[case]
    first = descriptor[1]
    slope = None if intercept is None else 1.0
    offset = 0 if intercept is None else intercept
    # stored values below, at and past the LUT's first and last mapped inputs, plus the full sweep
    edges = tuple(
        int(v - offset) for v in (first - 1, first, first + 1, first + descriptor[0] - 1, first + descriptor[0])
    )
    stored = _stored(bits, signed, (min(edges), max(edges)), edges)
    # a window is present too: the LUT takes precedence, as in pydicom's apply_voi_lut
    voi = {"lut": (descriptor, data), "WindowCenter": 100.0, "WindowWidth": 50.0}
    path = _write(tmp_path / f"{case}.dcm", stored, bits, signed, photometric, slope, intercept, **voi)
    expected = _pydicom_display(path, (0.0, 2.0 ** descriptor[2] - 1))
    got = read_dicom(path)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    assert len(np.unique(expected)) > 100  # the LUT's ramp is seen, not only its ends


def test_a_linear_window_narrower_than_one_is_refused_with_the_path(tmp_path: Path):
    stored = _stored(12, False, (0, 4095))
    path = _write(tmp_path / "w.dcm", stored, 12, False, "MONOCHROME2", WindowCenter=100.0, WindowWidth=0.5)
    with pytest.raises(ValueError, match=r"w\.dcm.*Window Width"):
        read_dicom(path)
