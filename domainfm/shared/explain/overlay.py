"""PNG overlays: the input (or a slide thumbnail) beside the same picture with the attribution heat map.

The picture: RGB inputs as they are (scaled by the card's ``input_range``); grey inputs in grey;
multiband inputs as a **false-colour composite**: MODIS bands 7-2-1 (``B07`` 2.1 um -> red, ``B02`` NIR ->
green, ``B01`` red -> blue; the "Bands 7-2-1" composite of NASA Worldview, where clouds are white/cyan,
vegetation green and bare soil brown) when the card has those band names, else the first three
channels; every composite channel is stretched between its 2nd and 98th percentile. Two-channel inputs
show channel 1 in grey.

The heat map: signed methods (integrated gradients, gradient SHAP) use the diverging ``RdBu_r`` colour map
centred on zero (red raises the explained score, blue lowers it), symmetric about the largest magnitude;
occlusion (the score drop per pixel) and attention rollout (a distribution over pixels) use the
sequential ``inferno`` map over their range. The heat map is drawn with alpha 0.55 over the picture, with
a colour bar; the title names the method, the target, ``f(x)`` and, for integrated gradients, the
completeness error. Files are written atomically (a temporary file in the same folder, then
``os.replace``) with matplotlib's Agg canvas and no pyplot state.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.shared.deploy.card import ModelCard
from domainfm.shared.explain.attribution import Attribution
from domainfm.shared.outputs import partial_path

ALPHA = 0.55
DIVERGING, SEQUENTIAL = "RdBu_r", "inferno"
FALSE_COLOUR = ("B07", "B02", "B01")
PANEL_INCHES, DPI = 3.6, 110

SOFTWARE = "domainfm explain"  # the PNG text chunk that marks an overlay as ours (for --overwrite)


def _stretch(values: np.ndarray) -> np.ndarray:
    low, high = np.percentile(values, [2, 98])
    if high <= low:
        high = low + 1e-6
    return np.clip((values - low) / (high - low), 0, 1)


def display_rgb(image: np.ndarray | torch.Tensor, card: ModelCard) -> np.ndarray:
    """``[H, W, 3]`` floats in [0, 1] to show a raw input ``[C, H, W]`` (``[1, C, H, W]`` accepted).

    See the module docstring for grey, RGB and multiband inputs.
    """
    array = image.detach().double().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, float)
    if array.ndim == 4:
        array = array[0]
    channels = array.shape[0]
    if channels in (1, 3) and card.input_range is not None:
        low, high = card.input_range
        picture = np.clip((array - low) / max(high - low, 1e-12), 0, 1)
    elif channels == 3:
        picture = np.stack([_stretch(c) for c in array])
    elif channels < 3:
        picture = _stretch(array[0])[None]
    else:
        names = list(card.channel_names)
        order = [names.index(n) for n in FALSE_COLOUR] if set(FALSE_COLOUR) <= set(names) else [0, 1, 2]
        picture = np.stack([_stretch(array[i]) for i in order])
    if picture.shape[0] == 1 or channels == 2:
        picture = np.repeat(picture[:1], 3, axis=0)
    return picture.transpose(1, 2, 0)


def composite_name(card: ModelCard) -> str:
    """How :func:`display_rgb` shows inputs of ``card`` (for captions)."""
    if card.in_channels == 3:
        return "RGB"
    if card.in_channels < 3:
        return "grey" if card.channel_names[0] == "grey" else f"{card.channel_names[0]} (grey)"
    if set(FALSE_COLOUR) <= set(card.channel_names):
        return "false colour 7-2-1 (B07, B02, B01)"
    return f"false colour ({', '.join(card.channel_names[:3])})"


def _norm(heat: np.ndarray, signed: bool) -> Any:
    from matplotlib.colors import Normalize

    finite = heat[np.isfinite(heat)]
    if signed:
        bound = float(np.abs(finite).max()) if finite.size else 1.0
        bound = bound if bound > 0 else 1.0
        return Normalize(-bound, bound)
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return Normalize(low, high if high > low else low + 1e-12)


def write_figure(
    picture: np.ndarray,
    heat: np.ndarray,
    signed: bool,
    title: str,
    path: Path,
    label: str,
    left_title: str,
    right_title: str = "attribution over the input",
) -> Path:
    """The picture and the picture under the heat map (NaN: not drawn), a colour bar, a title; written atomically.

    Args:
        picture: ``[H, W, 3]`` floats in [0, 1].
        heat: ``[H, W]`` values (NaN where nothing was attributed, e.g. background of a slide).
        signed: Diverging colour map centred on zero, else sequential.
        title: Figure title (may hold line breaks).
        path: Destination PNG (parents are created).
        label: Colour-bar label.
        left_title: Caption of the plain picture.
        right_title: Caption of the overlay.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = heat.shape
    fig = Figure(figsize=(2 * PANEL_INCHES + 1.0, PANEL_INCHES * height / width + 0.9), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, width_ratios=[1, 1, 0.05])
    for ax in axes[:2]:
        ax.imshow(picture, interpolation="nearest")
        ax.set_axis_off()
    axes[0].set_title(left_title, fontsize=8)
    cmap = colormaps[DIVERGING if signed else SEQUENTIAL]
    shown = axes[1].imshow(
        np.ma.masked_invalid(heat), cmap=cmap, norm=_norm(heat, signed), alpha=ALPHA, interpolation="nearest"
    )
    axes[1].set_title(right_title, fontsize=8)
    fig.colorbar(shown, cax=axes[2], label=label)
    fig.suptitle(title, fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)  # unique to this run: never a user's file
    try:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": SOFTWARE})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def is_overlay(path: str | Path) -> bool:
    """Whether ``path`` is a PNG overlay that ``domainfm explain`` wrote (its ``Software`` text chunk)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and str(image.info.get("Software", "")).startswith(SOFTWARE)
    except Exception:  # missing, unreadable or not an image: not ours
        return False


def attribution_title(attribution: Attribution, title: str | None = None) -> str:
    """Title lines: the caller's title, then method, target, ``f(x)`` and IG's completeness error."""
    lines = [title] if title else []
    lines.append(
        f"{attribution.method}: target '{attribution.target_name}' ({attribution.explained}), "
        f"f(x) = {attribution.score:.4g}"
        + (" (the rollout map does not depend on the target)" if attribution.method == "attention_rollout" else "")
    )
    if attribution.baseline_score is not None:
        numbers = f"baseline {attribution.baseline}: f = {attribution.baseline_score:.4g}"
        if attribution.delta is not None:
            numbers += (
                f"; sum of attributions = {float(attribution.map.double().sum()):.4g}, completeness error "
                f"{attribution.delta:.2e} (relative to f(x) - f(baseline): {attribution.relative_delta or 0:.2g})"
            )
        lines.append(numbers)
    return "\n".join(lines)


def colourbar_label(method: str) -> str:
    """What the colour bar measures."""
    return {
        "integrated_gradients": "attribution (sum over channels)",
        "gradient_shap": "attribution (sum over channels)",
        "occlusion": "score drop when occluded",
        "attention_rollout": "share of rolled-out attention",
    }[method]


def render_overlay(
    image: np.ndarray | torch.Tensor,
    attribution: Attribution,
    card: ModelCard,
    title: str | None,
    path: str | Path,
) -> Path:
    """Writes the input and its attribution heat map as one PNG (see the module docstring).

    Args:
        image: The raw input ``[1, C, H, W]`` or ``[C, H, W]`` that was explained.
        attribution: Its :class:`~.attribution.Attribution`.
        card: The model's card (input range, channel names).
        title: A first title line (e.g. the input's file name), or ``None``.
        path: Destination PNG.

    Returns:
        ``path``.
    """
    picture = display_rgb(image, card)
    heat = attribution.heatmap()
    if heat.shape != picture.shape[:2]:
        raise ValueError(f"attribution {heat.shape} and input {picture.shape[:2]} differ in size")
    return write_figure(
        picture,
        heat,
        attribution.signed,
        attribution_title(attribution, title),
        Path(path),
        colourbar_label(attribution.method),
        f"input ({composite_name(card)})",
    )
