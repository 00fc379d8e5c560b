"""``domainfm explain``: an attribution map of one input (or a whole slide) as a PNG overlay."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from domainfm.shared.config import PositiveInt

STEP_OPTIONS = {"integrated_gradients": "n_steps", "gradient_shap": "n_samples"}


def explain(
    checkpoint: Path,
    input: Path,
    out: Path,
    method: Literal["integrated_gradients", "gradient_shap", "occlusion", "attention_rollout"] = "integrated_gradients",
    target: str | None = None,
    steps: PositiveInt | None = None,
    baseline: Literal["mean", "zeros", "blur"] = "mean",
    device: str = "auto",
    json: bool = False,
    overwrite: bool = False,
    tiles: bool = False,
) -> int:
    """Explain a downstream model's output on one input (or a whole slide) as a PNG overlay (captum).

    What is explained: a class's logit (classification; default the predicted class), a label's logit
    (multi-label; default the highest), or the sum over the output map (segmentation, cloud curtain).
    Details, baselines and the sanity checks: docs/explain.md.

    Args:
        checkpoint: A downstream checkpoint written by a domain's ``train`` command.
        input: A picture (.png/.jpg/.tif), a radiograph (.dcm), a chip (.npy [C, H, W]) or, for a slide
            tile classifier, a whole slide (.svs, .ndpi, .mrxs, pyramidal .tif, ...): any input the
            model's domain reads.
        out: The PNG to write.
        method: ``integrated_gradients``, ``gradient_shap``, ``occlusion`` or ``attention_rollout`` (ViT only).
        target: A class/label name or index to explain; default the predicted one (per tile on slides).
        steps: Integration steps (integrated_gradients; default 50, 16 per slide tile) or samples
            (gradient_shap; default 20, 8 per slide tile); unused by occlusion and attention_rollout.
        baseline: The reference input: ``mean`` (the training mean colour/value), ``zeros`` or ``blur``.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        json: Print the numbers as JSON.
        overwrite: Replace an overlay that ``domainfm explain`` wrote at ``out`` (any other file is refused).
        tiles: Slides only: also write each tile's mean attribution, score and explained class beside ``out``
            in the domain's tile formats (whole slides: OUT.geojson, tiles QuPath imports, and OUT.tif, a
            pyramidal map with one pixel per tile; docs/explain.md).
    """
    from domainfm.shared.explain.overlay import is_overlay
    from domainfm.shared.explain.targets import ExplainError
    from domainfm.shared.outputs import check_output, lock_output

    out, input = Path(out), Path(input)
    if out.suffix.lower() != ".png":
        raise ExplainError(f"--out {out}: the overlay is a PNG; give a file name ending in .png")
    with lock_output(out, "explanation overlay"):
        check_output(out, "explanation overlay", overwrite, is_overlay)  # never replaces a user's picture
        return _explain(checkpoint=checkpoint, input=input, out=out, method=method, target=target,
                        steps=steps, baseline=baseline, device=device, json=json, tiles=tiles,
                        overwrite=overwrite)  # fmt: skip


def _explain(
    checkpoint: Path,
    input: Path,
    out: Path,
    method: str,
    target: str | None,
    steps: int | None,
    baseline: str,
    device: str,
    json: bool,
    tiles: bool = False,
    overwrite: bool = False,
) -> int:
    import json as json_module

    from PIL import Image

    from domainfm.shared.deploy import load_deployable, read_input
    from domainfm.shared.engine import resolve_device
    from domainfm.shared.errors import DomainfmError
    from domainfm.shared.explain.attribution import attribute
    from domainfm.shared.explain.overlay import render_overlay
    from domainfm.shared.explain.slides import explain_slide, is_slide, owns_tile_output
    from domainfm.shared.explain.targets import ExplainError
    from domainfm.shared.outputs import check_output

    torch_device = resolve_device(device)
    deployable = load_deployable(checkpoint)
    deployable.network.to(torch_device)
    options: dict = {"baseline": baseline}
    if steps is not None and method in STEP_OPTIONS:
        options[STEP_OPTIONS[method]] = steps  # checked by the method (IG needs at least 2)
    slide = is_slide(input, deployable.card)
    if tiles and not slide:
        raise ExplainError(f"--tiles: {input} is not a slide; per-tile maps are written for slides only")
    tile_paths = None
    if tiles:
        tile_paths = (out.with_suffix(".geojson"), out.with_suffix(".tif"))
        for path in tile_paths:  # never a user's file; ours only with --overwrite
            check_output(path, "per-tile explanation", overwrite, lambda p: owns_tile_output(deployable.card, p),
                         ExplainError)  # fmt: skip
    if slide:
        summary = explain_slide(deployable, input, out, method, target, progress=not json, tile_outputs=tile_paths,
                                **options)  # fmt: skip
        if json:
            print(json_module.dumps(summary, indent=2))
        else:
            print(
                f"{method} on {summary['tiles']} tiles of {input.name} at {summary['mpp']:g} mpp "
                f"(target: {summary['target']}); wrote {out}"
                + (f", {tile_paths[0]} and {tile_paths[1]}" if tile_paths else "")
            )
        return 0
    try:
        image = read_input(input, deployable.card)
    except DomainfmError:
        raise
    except (OSError, ValueError) as error:  # e.g. a truncated or mislabelled picture
        raise ExplainError(f"{input}: cannot be read as an input of {deployable.card.kind} ({error})") from error
    except Image.DecompressionBombError as error:  # Pillow's guard against decompression bombs
        raise ExplainError(
            f"{input}: too many pixels to read safely (Pillow's limit is {Image.MAX_IMAGE_PIXELS} pixels; {error}); "
            "crop or downscale it first"
        ) from error
    result = attribute(deployable, image, method, target, **options)
    render_overlay(image, result, deployable.card, f"{input.name} ({deployable.card.kind})", out)
    if json:
        print(json_module.dumps({"input": str(input), "out": str(out), **result.to_dict()}, indent=2))
        return 0
    line = f"{method}: {result.explained} of {input.name}, f(x) = {result.score:.4g}"
    if result.baseline_score is not None:
        line += f", f(baseline {result.baseline}) = {result.baseline_score:.4g}"
    if result.delta is not None:
        line += f", completeness error {result.delta:.2e} (relative {result.relative_delta:.2g})"
    print(f"{line}; wrote {out}")
    return 0
