"""The model contract's input transform: geometry, quantisation, standardisation, and its record."""

import numpy as np
import pytest
import torch
from torch import nn

from domainfm.shared.model import (
    ContractModel,
    InputTransform,
    TransformError,
    apply_geometry,
    standardise,
    transform_array,
)
from domainfm.shared.model.transform import letterbox_box


def _record(**changes) -> InputTransform:
    fields = {"channels": ["grey"], "size": [8, 8], "geometry": "letterbox", "scale": 1 / 255, "quantise": "uint8"}
    return InputTransform(**{**fields, **changes})


def test_letterbox_keeps_the_aspect_and_centres_on_the_fill():
    # A 4 x 8 image of constant 200 into 8 x 8: the longer side fills the canvas, rows 2..5 hold the image.
    image = torch.full((1, 1, 4, 8), 200.0)
    out = apply_geometry(image, [8, 8], "letterbox", fill=7.0)
    assert letterbox_box(4, 8, 8) == (2, 0, 4, 8)
    assert torch.equal(out[0, 0, 2:6], torch.full((4, 8), 200.0))
    assert torch.equal(out[0, 0, :2], torch.full((2, 8), 7.0)) and torch.equal(out[0, 0, 6:], torch.full((2, 8), 7.0))
    # A tall image: columns are padded instead.
    assert letterbox_box(9, 3, 6) == (0, 2, 6, 2)


def test_resize_matches_pils_antialiased_bilinear_within_rounding():
    from PIL import Image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    ours = transform_array(image, _record(geometry="resize", size=[16, 16]))[0].astype(int)
    pil = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(ours - pil).max() <= 1  # the same filter; PIL rounds in fixed point


def test_same_size_is_the_identity_for_every_geometry():
    image = torch.rand(2, 1, 8, 8) * 255
    for geometry in ("exact", "resize", "letterbox", "window"):
        assert torch.equal(apply_geometry(image, [8, 8], geometry), image)
        module = _record(geometry=geometry).module()
        assert torch.equal(module.geometry(image), image)  # on the model grid: taken as it is, not rounded


def test_store_tile_equals_what_the_module_makes_of_the_same_raw_input():
    raw = np.random.default_rng(1).uniform(0, 255, (1, 30, 21)).astype(np.float32)
    record = _record(mean=[0.4], std=[0.2])
    stored = transform_array(raw, record)
    assert stored.dtype == np.uint8 and stored.shape == (1, 8, 8)
    module = record.module()
    on_grid = module.geometry(torch.from_numpy(raw)[None])
    assert torch.equal(on_grid[0], torch.from_numpy(stored).float())  # rounded exactly as stored
    expected = standardise(torch.from_numpy(stored)[None], [0.4], [0.2], 1 / 255)
    torch.testing.assert_close(module(torch.from_numpy(raw)[None]), expected, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(1, 30, 21), (1, 37, 37), (3, 20, 20)])
def test_store_tile_equals_the_module_on_grid_for_every_shape_and_out_of_range_values(shape):
    # Square pictures skip the letterbox canvas and ingest quantises without the straight-through graph:
    # neither may change a value, including values the clamp cuts off.
    raw = np.random.default_rng(2).uniform(0, 255, shape).astype(np.float32)
    raw[:, : shape[1] // 3] = -60.0  # bands far outside 0..255, wide enough to survive the antialiasing
    raw[:, -(shape[1] // 3) :] = 320.0
    record = _record(channels=["r", "g", "b"][: shape[0]], size=[16, 16], mean=[0.0] * shape[0], std=[1.0] * shape[0])
    stored = transform_array(raw, record)
    assert stored.dtype == np.uint8 and stored.shape == (shape[0], 16, 16)
    assert stored.min() == 0 and stored.max() == 255  # the clamp was exercised
    on_grid = record.module().geometry(torch.from_numpy(raw)[None])
    assert torch.equal(on_grid[0], torch.from_numpy(stored).float())


def test_quantisation_rounds_the_value_and_passes_the_gradient():
    record = _record()
    raw = (torch.rand(1, 1, 20, 10, generator=torch.Generator().manual_seed(0)) * 255).requires_grad_(True)
    module = record.module()
    on_grid = module.geometry(raw)
    assert torch.equal(on_grid, torch.round(on_grid.detach()).clamp(0, 255))
    weights = torch.randn(on_grid.shape, generator=torch.Generator().manual_seed(1))
    (gradient,) = torch.autograd.grad((on_grid * weights).sum(), raw)
    # The straight-through gradient is the resampling's own gradient (non-zero, finite), not zero.
    reference = raw.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad((apply_geometry(reference, [8, 8], "letterbox") * weights).sum(), reference)
    torch.testing.assert_close(gradient, expected)
    assert gradient.abs().sum() > 0


def test_standardise_uses_scale_mean_and_std_per_channel():
    tiles = torch.tensor([[[[255.0]], [[0.0]], [[51.0]]]], dtype=torch.float32)
    out = standardise(tiles.to(torch.uint8), [0.5, 0.0, 0.1], [0.5, 1.0, 0.2], scale=1 / 255)
    torch.testing.assert_close(out.flatten(), torch.tensor([1.0, 0.0, 0.5]))
    assert standardise(tiles.double(), [0.0], [1.0]).dtype == torch.float64  # float64 copies stay float64


def test_record_round_trip_and_validation():
    record = _record(mean=[0.3], std=[0.1], details={"display": "x"})
    assert InputTransform.from_dict(record.to_dict()) == record
    with pytest.raises(TransformError, match=r"unknown key\(s\) \['colour'\]"):
        InputTransform.from_dict({**record.to_dict(), "colour": 1})
    with pytest.raises(TransformError, match="geometry 'stretch'"):
        _record(geometry="stretch")
    with pytest.raises(TransformError, match="2 means and 1 stds for 1 channels"):
        _record(mean=[0.1, 0.2])
    with pytest.raises(TransformError, match="std"):
        _record(std=[0.0])


class _Scale(nn.Module):
    """A 'network' that doubles its input: output on the input's grid."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


def test_exact_geometry_refuses_other_sizes_by_name():
    model = ContractModel(_record(geometry="exact", quantise=None, scale=1.0), _Scale())
    with pytest.raises(TransformError, match="takes exactly 8x8 inputs, got 9x8"):
        model(torch.zeros(1, 1, 9, 8))
    with pytest.raises(TransformError, match=r"takes inputs \[B, 1, H, W\] \(grey\), got \[1, 3, 8, 8\]"):
        model(torch.zeros(1, 3, 8, 8))


def test_resized_maps_come_back_at_the_input_size():
    model = ContractModel(_record(geometry="resize", quantise=None, scale=1.0), _Scale(), output_grid="input")
    image = torch.full((1, 1, 12, 20), 3.0)
    out = model(image)
    assert out.shape == (1, 1, 12, 20)
    torch.testing.assert_close(out, torch.full_like(out, 6.0))
    # letterbox: the padding is cropped away before resizing back, so no border of fill leaks in
    boxed = ContractModel(_record(quantise=None, scale=1.0, fill=-100.0), _Scale(), output_grid="input")
    torch.testing.assert_close(boxed(image), torch.full((1, 1, 12, 20), 6.0))


def test_window_geometry_slides_only_over_maps():
    record = _record(geometry="window", quantise=None, scale=1.0)
    image = torch.rand(1, 1, 20, 13, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ContractModel(record, _Scale(), output_grid="input")(image), 2 * image)
    with pytest.raises(TransformError, match="no pixel grid to slide a window over"):
        ContractModel(record, _Scale(), output_grid="fixed")(image)
