"""Adapting a stem (first convolution / patch embedding) to another number of input channels.

The rule (applied when a checkpoint's stem has ``C_src`` input channels and the backbone ``C_dst``):

* ``C_dst == C_src``: unchanged.
* ``C_dst < C_src`` (e.g. RGB -> 1-channel X-ray): source channel ``k`` is folded into target channel
  ``k mod C_dst`` by summation. For ``C_dst == 1`` this is the sum of the RGB filters that ConVIRT and
  timm's ``adapt_input_conv`` use for greyscale inputs.
* ``C_dst > C_src`` (e.g. RGB -> 14 MODIS bands): the source filters are repeated cyclically
  (target ``j`` takes source ``j mod C_src``) and each copy is divided by the number of copies of its
  source channel (for 3 -> 14: 5, 5 and 4 copies). timm's ``adapt_input_conv`` scales every copy by
  ``C_src / C_dst`` instead, which is the same when ``C_src`` divides ``C_dst``.

Both cases keep the response to a grey input (all channels equal) exactly, for any channel counts, so
pretrained activations keep their scale. Channel *identity*
is not preserved: a band-aware mapping (a checkpoint's band names matched to the store's) belongs to the
domain that knows the bands and should be applied before this fallback.
"""

from __future__ import annotations

import torch


def adapt_input_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Returns a stem weight ``[out, C_src, *k]`` converted to ``[out, in_chans, *k]`` by the module rule.

    Args:
        weight: The checkpoint's first-layer weight, input channels on dimension 1.
        in_chans: Input channels of the target backbone.
    """
    if weight.ndim < 2:
        raise ValueError(f"stem weight must have an input-channel dimension, got shape {tuple(weight.shape)}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    src = weight.shape[1]
    if in_chans == src:
        return weight
    dtype = weight.dtype
    w = weight.float()
    if in_chans < src:
        out = torch.zeros(w.shape[0], in_chans, *w.shape[2:], dtype=w.dtype)
        for k in range(src):
            out[:, k % in_chans] += w[:, k]
    else:
        index = torch.arange(in_chans) % src
        copies = torch.bincount(index, minlength=src).to(w.dtype)
        shape = (1, in_chans) + (1,) * (w.ndim - 2)
        out = w[:, index] / copies[index].reshape(shape)
    return out.to(dtype)
