"""An encoder's record on store tiles: grey replicated to RGB, mismatches named, downstream records inherit it."""

from __future__ import annotations

import pytest
import torch

from domainfm.shared.model import InputTransform, TransformError, TransformModule
from domainfm.shared.model.encoders import downstream_transform, fit_store, record_or, tile_input

MEAN, STD = [0.1, 0.5, 0.9], [0.2, 0.3, 0.4]


def _rgb(size: int = 8, geometry: str = "resize") -> InputTransform:
    return InputTransform(
        channels=["red", "green", "blue"],
        size=[size, size],
        geometry=geometry,
        scale=1 / 255,
        mean=MEAN,
        std=STD,
        quantise="uint8",
        input_range=[0.0, 255.0],
    )


def test_grey_store_tiles_are_replicated_and_standardised_per_channel():
    record = fit_store(_rgb(), channels=1, tile_size=8, source="enc.safetensors")
    assert record.input_channels == ["grey"] and record.in_channels == 1 and record.model_channels == 3
    tiles = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    out = tile_input(record)(tiles)
    assert out.shape == (2, 3, 8, 8)
    for c in range(3):
        expected = (tiles[:, 0].double() / 255 - MEAN[c]) / STD[c]
        torch.testing.assert_close(out[:, c].double(), expected, rtol=1e-5, atol=1e-5)
    assert InputTransform.from_dict(record.to_dict()) == record  # the mapping survives the checkpoint


def test_other_store_sizes_are_resized_to_the_model_size_before_the_mapping():
    record = fit_store(_rgb(size=4), channels=1, tile_size=8, source="enc.safetensors")
    tiles = torch.randint(0, 256, (1, 1, 8, 8)).float()
    small = torch.nn.functional.interpolate(tiles, size=(4, 4), mode="bilinear", antialias=True)
    small = small.round().clamp(0, 255)
    expected = (small.repeat(1, 3, 1, 1) / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(tile_input(record)(tiles), expected)


def test_records_without_a_mapping_keep_their_old_dict():
    record = _rgb()
    assert "input_channels" not in record.to_dict()
    assert fit_store(record, channels=3, tile_size=8, source="x") is record


@pytest.mark.parametrize(("channels", "tile_size", "geometry", "message"), [
    (4, 8, "resize", r"enc\.safetensors: the encoder takes 3 channel\(s\).*store's tiles have 4"),
    (3, 16, "exact", r"enc\.safetensors: the encoder takes exactly 8x8 tiles.*Tile the store at 8 px"),
])  # fmt: skip
def test_a_store_that_does_not_fit_the_encoder_is_named(channels, tile_size, geometry, message):
    with pytest.raises(TransformError, match=message):
        fit_store(_rgb(geometry=geometry), channels=channels, tile_size=tile_size, source="enc.safetensors")


def test_only_one_grey_channel_maps_onto_several():
    with pytest.raises(TransformError, match="input_channels"):
        InputTransform(channels=["grey"], size=[4, 4], input_channels=["grey"])
    with pytest.raises(TransformError, match="input_channels"):
        InputTransform(channels=["a", "b", "c"], size=[4, 4], input_channels=["x", "y"])


def test_a_downstream_record_keeps_the_encoder_statistics_and_takes_its_own_geometry():
    encoder = fit_store(_rgb(size=8), channels=1, tile_size=8, source="x")
    down = downstream_transform(encoder, geometry="letterbox", details={"mpps": [0.5]})
    assert (down.mean, down.std, down.scale, down.channels) == (MEAN, STD, encoder.scale, encoder.channels)
    assert down.input_channels == ["grey"] and down.geometry == "letterbox" and down.size == [8, 8]
    assert down.details["mpps"] == [0.5] and encoder.details == {}
    raw = torch.randint(0, 256, (1, 1, 8, 8)).float()
    torch.testing.assert_close(TransformModule(down)(raw), TransformModule(encoder)(raw))


def test_record_or_prefers_the_saved_record():
    saved = _rgb().to_dict()
    assert record_or({"transform": saved}, lambda: pytest.fail("derived although a record is saved")) == _rgb()
    assert record_or({}, lambda: _rgb(size=4)).size == [4, 4]
