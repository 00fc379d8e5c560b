"""``domainfm pathology phantom`` and ``domainfm pathology study``: the phantom slide and the phantom study.

Verbs of the domain's CLI group (``domainfm/domains/pathology/cli.py`` names them); the library's own
verbs are in :mod:`domainfm.domains.pathology.commands`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from domainfm.shared.config import NonNegativeInt, PositiveFloat, PositiveInt, Seed


def phantom(
    out: Path,
    size: PositiveInt = 4096,
    seed: Seed = 0,
    mpp: PositiveFloat | None = 0.25,
    tumor: bool = True,
    without_mpp: bool = False,
    overwrite: bool = False,
) -> int:
    """Write a phantom Aperio SVS (pyramid, JPEG, mpp, objective power) with tissue classes (+ FILE.truth.npz).

    Args:
        out: The slide file (``.svs``).
        size: Level-0 width and height in pixels.
        seed: Random seed.
        mpp: Level-0 microns per pixel.
        tumor: Include tumour tissue (the slide label of the MIL phantom).
        without_mpp: Leave the resolution out of the file (a slide without mpp).
        overwrite: Replace a phantom slide written earlier (any other file at ``out`` is refused).
    """
    from domainfm.shared.outputs import check_output, lock_output
    from domainfm.studies.pathology.phantom import is_phantom_slide, write_phantom_slide

    with lock_output(out, "phantom slide"):
        check_output(out, "phantom slide", overwrite, is_phantom_slide)
        slide = write_phantom_slide(Path(out), size, seed, None if without_mpp else mpp, tumor, progress=True)
    print(f"wrote {slide.path} ({slide.size[0]}x{slide.size[1]}, levels {slide.downsamples}) and {slide.truth_path}")
    return 0


def phantom_cells(
    out: Path,
    images: PositiveInt = 8,
    size: PositiveInt = 256,
    seed: Seed = 0,
    mpp: PositiveFloat = 0.5,
    glands: NonNegativeInt = 2,
    slides: NonNegativeInt = 0,
    slide_size: PositiveInt = 2048,
) -> int:
    """Write phantom H&E fields with nuclei (epithelial, lymphocyte, stromal) and glands, with instance truth.

    OUT/images/*.png, OUT/nuclei/*.tif and OUT/glands/*.tif (instance ids), OUT/nuclei.csv and
    OUT/glands.csv (image,id,class): the layout ``pathology instances-tile`` reads. With ``slides``, also
    OUT/slides/cells_slide_K.tif: whole slides (lossless pyramidal TIFF with the mpp, nuclei 2 um apart)
    and their nucleus truth (``.tif.cells.npz``) for ``pathology predict`` with an instance segmenter.

    Args:
        out: Output folder (new or empty).
        images: Fields written.
        size: Their side in pixels.
        seed: Random seed.
        mpp: Microns per pixel.
        glands: Glands attempted per field.
        slides: Whole slides also written (OUT/slides).
        slide_size: Their side in pixels.
    """
    from domainfm.shared.outputs import run_folder
    from domainfm.studies.pathology.phantom_cells import write_cell_phantom, write_cell_slide

    with run_folder(Path(out), what="phantom folder"):
        stems = write_cell_phantom(Path(out), images, size, seed, mpp, glands)
        for k in range(slides):
            path = Path(out) / "slides" / f"cells_slide_{k:03d}.tif"
            write_cell_slide(path, slide_size, mpp, seed * 100_003 + 50_000 + k, max(glands, 1) * 8, gap=2.0)
    print(f"wrote {len(stems)} fields of {size}x{size} px at {mpp} mpp to {out} (images/, nuclei/, glands/)")
    if slides:
        print(f"wrote {slides} slides of {slide_size}x{slide_size} px to {Path(out) / 'slides'}")
    return 0


def study(
    out: Path,
    slides: PositiveInt = 12,
    slide_size: PositiveInt = 1536,
    test_slides: PositiveInt = 4,
    tile_size: PositiveInt = 64,
    mpp: list[PositiveFloat] | None = None,
    backbone: str = "test_vit",
    pretrain_epochs: PositiveInt = 40,
    objective: dict[str, Any] | None = None,
    mil_epochs: PositiveInt = 40,
    seed: Seed = 0,
    device: str = "auto",
) -> int:
    """The phantom study: PLUTO pretraining, linear probe vs a random-initialised encoder, and slide MIL.

    Args:
        out: Output folder.
        slides: Phantom slides (every other one with tumour).
        slide_size: Their side in pixels at 0.5 mpp.
        test_slides: Held-out slides (the last ones).
        tile_size: Tile side in pixels.
        mpp: Tile resolutions (default 0.5 and 1.0).
        backbone: ViT backbone.
        pretrain_epochs: Pretraining epochs.
        objective: PLUTO objective options (tiny defaults for the test backbones).
        mil_epochs: ABMIL epochs.
        seed: Random seed.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
    """
    from domainfm.shared.config import save_resolved_config
    from domainfm.shared.outputs import run_folder
    from domainfm.studies.pathology.workflow import run_study

    with run_folder(Path(out)):  # new, empty or an earlier run of domainfm: never a folder of other files
        save_resolved_config(Path(out))
        run_study(
            Path(out), slides, slide_size, test_slides, tile_size, tuple(mpp or [0.5, 1.0]), backbone, pretrain_epochs,
            objective, mil_epochs, seed, device,
        )  # fmt: skip
        print((Path(out) / "results.md").read_text())
    return 0


def instances_study(
    out: Path,
    images: PositiveInt = 10,
    test_images: PositiveInt = 3,
    size: PositiveInt = 192,
    tile_size: PositiveInt = 64,
    backbone: str = "test_vit",
    pretrain_epochs: PositiveInt = 30,
    epochs: PositiveInt = 6,
    width: PositiveInt = 16,
    device: str = "auto",
) -> int:
    """The cell-phantom study: PLUTO-pretrained vs random frozen encoder under the nuclei head (OUT/results.md).

    10 % and 100 % of the labelled train tiles, three seeds, PQ and AJI on the held-out fields' tiles.

    Args:
        out: Output folder.
        images: Phantom fields.
        test_images: Held-out fields (the last ones).
        size: Field side in pixels at 0.5 mpp.
        tile_size: Tile side in pixels.
        backbone: ViT backbone.
        pretrain_epochs: PLUTO pretraining epochs.
        epochs: Head training epochs at 100 % labels (the same number of steps at 10 %).
        width: Decoder channels.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
    """
    from domainfm.shared.config import save_resolved_config
    from domainfm.shared.outputs import run_folder
    from domainfm.studies.pathology.instances_study import run_instance_study

    with run_folder(Path(out)):
        save_resolved_config(Path(out))
        run_instance_study(
            Path(out), images, test_images, size, tile_size, backbone, pretrain_epochs, epochs, width=width,
            device=device,
        )  # fmt: skip
        print((Path(out) / "results.md").read_text())
    return 0
