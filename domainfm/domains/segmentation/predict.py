"""``domainfm segmentation predict``: masks at each input's native size and name, over the input.

A GMS (Huo et al., AAAI 2025) or UNet segmenter runs through its deployed contract
(:mod:`domainfm.domains.segmentation.deploy`): the picture is read as ``segmentation ingest`` reads it,
resized to the training size, segmented, and the probability map resized back to the input's size. For
each input ``NAME.EXT`` the outputs are

* ``masks/NAME.png``: the mask at the input's size, 0 background and 255 foreground (probability >=
  ``threshold``); for a NIfTI input ``masks/NAME.nii.gz``, a uint8 0/1 volume with the input's affine and
  header, predicted slice by slice along the third array axis (each slice as stored: first array axis as
  rows; grey values mapped to 0..255 by the volume's 0.5-99.5 percentiles, as ``_to_uint8`` maps deep images);
* ``overlays/NAME.png``: the mask tinted and outlined over the input (NIfTI: over its middle slice);
* with ``probabilities``: ``probabilities/NAME.tif``, float32 probabilities (NIfTI: ``.nii.gz``);
* with ``explain`` (pictures): ``explanations/NAME.png``, the ``domainfm explain`` overlay of the summed
  foreground probability (integrated gradients; docs/explain.md), the same picture ``explain`` writes.

``predictions.csv`` gives per input its size, the foreground fraction and the mask's file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from domainfm.shared.config import Fraction
from domainfm.shared.deploy.card import Deployable, predict_array
from domainfm.shared.predict import InputFile, Outputs

PICTURES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUMES = (".nii", ".nii.gz")


def _probability(deployable: Deployable, image: np.ndarray, device: torch.device) -> np.ndarray:
    """Foreground probability ``[H, W]`` of a raw ``[3, H, W]`` image (0..255)."""
    return predict_array(deployable, image[None], device)[0, 0]


def _predict_picture(
    deployable: Deployable,
    item: InputFile,
    outputs: Outputs,
    threshold: float,
    probabilities: bool,
    device: torch.device,
    explain: bool = False,
) -> dict[str, Any]:
    import tifffile

    from domainfm.shared.deploy import read_input
    from domainfm.shared.predict.pictures import overlay_labels, save_png

    image = read_input(item.path, deployable.card)[0].numpy()
    probability = _probability(deployable, image, device)
    mask = probability >= threshold
    save_png(mask.astype(np.uint8) * 255, outputs.path("masks", ".png"))
    picture = np.clip(image.transpose(1, 2, 0) + 0.5, 0, 255).astype(np.uint8)
    save_png(overlay_labels(picture, mask.astype(np.int64), 2), outputs.path("overlays", ".png"))
    if probabilities:
        tifffile.imwrite(outputs.path("probabilities", ".tif"), probability.astype(np.float32))
    if explain:
        from domainfm.shared.predict.explanations import explain_overlay

        title = f"{item.path.name} ({deployable.card.kind})"
        explain_overlay(deployable, image, title, outputs.path("explanations", ".png"), device)
    height, width = mask.shape
    return {"height": height, "width": width, "slices": 1, "foreground": float(mask.mean()),
            "mask": f"masks/{item.stem}.png"}  # fmt: skip


def _volume_to_uint8(volume: np.ndarray) -> np.ndarray:
    values = volume.astype(np.float64)
    low, high = np.percentile(values, [0.5, 99.5])
    high = high if high > low else low + 1
    return np.clip((values - low) / (high - low) * 255 + 0.5, 0, 255).astype(np.uint8)


def _predict_volume(
    deployable: Deployable, item: InputFile, outputs: Outputs, threshold: float, probabilities: bool, device
) -> dict[str, Any]:
    import nibabel

    from domainfm.shared.predict import PredictError
    from domainfm.shared.predict.pictures import overlay_labels, save_png

    try:
        volume_file = nibabel.load(str(item.path))
        volume = np.asarray(volume_file.dataobj)
    except Exception as error:  # nibabel raises several types for broken files
        raise PredictError(f"{item.path} is not a readable NIfTI file ({error})") from error
    if volume.ndim == 4 and volume.shape[3] == 1:
        volume = volume[..., 0]
    if volume.ndim == 2:
        volume = volume[..., None]
    if volume.ndim != 3:
        raise PredictError(f"{item.path} holds a volume of shape {list(volume.shape)}; give a 2-D or 3-D NIfTI image")
    if not np.isfinite(volume).all():
        raise PredictError(f"{item.path} holds NaN or infinite values: fill them first")
    grey = _volume_to_uint8(volume)
    maps = np.empty(volume.shape, np.float32)
    for z in range(volume.shape[2]):
        image = np.repeat(grey[None, :, :, z], 3, axis=0).astype(np.float32)
        maps[..., z] = _probability(deployable, image, device)
    mask = (maps >= threshold).astype(np.uint8)
    header = volume_file.header.copy()
    header.set_data_dtype(np.uint8)
    nibabel.save(nibabel.Nifti1Image(mask, volume_file.affine, header), str(outputs.path("masks", ".nii.gz")))
    if probabilities:
        header = volume_file.header.copy()
        header.set_data_dtype(np.float32)
        nibabel.save(
            nibabel.Nifti1Image(maps, volume_file.affine, header), str(outputs.path("probabilities", ".nii.gz"))
        )
    middle = volume.shape[2] // 2
    picture = np.repeat(grey[:, :, middle, None], 3, axis=2)
    save_png(overlay_labels(picture, mask[:, :, middle].astype(np.int64), 2), outputs.path("overlays", ".png"))
    return {"height": volume.shape[0], "width": volume.shape[1], "slices": volume.shape[2],
            "foreground": float(mask.mean()), "mask": f"masks/{item.stem}.nii.gz"}  # fmt: skip


def predict(
    checkpoint: Path,
    input: list[Path],
    out: Path,
    threshold: Fraction = 0.5,
    probabilities: bool = False,
    explain: bool = False,
    device: str = "auto",
    overwrite: bool = False,
    json: bool = False,
) -> int:
    """Segment pictures or NIfTI volumes of any size: masks at each input's size and name, and overlays.

    Writes OUT/masks/NAME.png (0/255; NIfTI inputs: NAME.nii.gz with the input's affine), OUT/overlays/NAME.png,
    optionally OUT/probabilities/NAME.tif, and OUT/predictions.csv. Resumable: a rerun predicts only the
    inputs not finished (docs/predict.md).

    Args:
        checkpoint: A segmenter written by ``domainfm segmentation train`` (GMS or UNet).
        input: Picture files (.png/.jpg/.tif/.bmp), NIfTI files (.nii/.nii.gz), or folders holding them
            (searched recursively; outputs keep the relative names).
        out: The folder to write (new, empty, or an earlier ``predict`` output to resume).
        threshold: Foreground where the probability is at least this.
        probabilities: Also write the probability maps.
        explain: Also write an integrated-gradients overlay per picture (slow on big images; not for NIfTI).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        overwrite: Predict every input again (also needed to reuse OUT with another model or options).
        json: Print the summary as JSON instead of a table.
    """
    import json as json_module

    from domainfm.shared.engine import resolve_device
    from domainfm.shared.predict import load_for_domain, run_predictions

    torch_device = resolve_device(device)
    deployable = load_for_domain(checkpoint, "segmentation")
    deployable.network.to(torch_device)

    def predict_one(deployable: Deployable, item: InputFile, outputs: Outputs) -> dict[str, Any]:
        if item.path.name.lower().endswith(VOLUMES):
            return _predict_volume(deployable, item, outputs, threshold, probabilities, torch_device)
        return _predict_picture(deployable, item, outputs, threshold, probabilities, torch_device, explain)

    run = run_predictions(
        deployable, input, out, predict_one, suffixes=PICTURES + VOLUMES, what="pictures or NIfTI volumes",
        options={"threshold": threshold, "probabilities": probabilities, "explain": explain}, overwrite=overwrite,
        progress=not json, title=f"segmentation predict ({deployable.card.kind})",
    )  # fmt: skip
    if json:
        print(json_module.dumps(run.to_dict(), indent=2))
    return 2 if run.failed else 0
