import pytest
import torch

from domainfm.shared.backbones import adapt_input_channels


@pytest.mark.parametrize(("src", "dst"), [(3, 1), (3, 14), (14, 3), (3, 4), (1, 3), (14, 14), (5, 2)])
def test_grey_input_response_is_kept(src: int, dst: int):
    weight = torch.randn(8, src, 4, 4)
    adapted = adapt_input_channels(weight, dst)
    assert adapted.shape == (8, dst, 4, 4)
    grey = torch.randn(2, 1, 16, 16)
    before = torch.nn.functional.conv2d(grey.expand(-1, src, -1, -1), weight, stride=4)
    after = torch.nn.functional.conv2d(grey.expand(-1, dst, -1, -1), adapted, stride=4)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_rgb_to_greyscale_is_the_sum_of_filters():
    weight = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(adapt_input_channels(weight, 1), weight.sum(1, keepdim=True))


def test_more_channels_repeat_the_source_cyclically():
    weight = torch.randn(4, 3, 2, 2)
    adapted = adapt_input_channels(weight, 14)
    torch.testing.assert_close(adapted[:, 3], weight[:, 0] / 5)  # source 0 has copies 0, 3, 6, 9, 12
    torch.testing.assert_close(adapted[:, 13], weight[:, 1] / 5)
    torch.testing.assert_close(adapted[:, 2], weight[:, 2] / 4)


def test_same_count_is_untouched_and_dtype_kept():
    weight = torch.randn(4, 3, 2, 2, dtype=torch.float16)
    assert adapt_input_channels(weight, 3) is weight
    assert adapt_input_channels(weight, 14).dtype == torch.float16
