"""What ``pathology tile`` arguments name: slide files, plain images, and folders of either.

A folder expands to its slide and image files (sorted, recursively; a ``masks/`` folder and the store's
``qc/`` pictures are not inputs). When every file of a folder lies in a subfolder, the subfolders are the
classes (``folder/<class>/*.png``, the layout of CRC-100K, BACH and most patch sets) and each image's tiles
take its class. A ``masks/`` folder beside the images (same stems) is the folder of label masks when
``--labels`` is not given (image + mask pairs: tiles take the majority class of their mask pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from domainfm.domains.pathology.slides import IMAGE_SUFFIXES, SlideError

SLIDE_SUFFIXES = (".svs", ".ndpi", ".vms", ".vmu", ".mrxs", ".scn", ".bif", ".svslide", ".dcm", ".tif", ".tiff")
MASKS_FOLDER = "masks"
NOT_INPUTS = {MASKS_FOLDER, "qc"}


@dataclass
class TileInputs:
    """Files to tile, the class of each image found in a class folder, and a ``masks/`` folder when present."""

    files: list[Path] = field(default_factory=list)
    image_classes: dict[str, str] = field(default_factory=dict)
    masks: Path | None = None


def expand_inputs(paths: list[Path]) -> TileInputs:
    """Expands folder arguments (see the module docstring); files are kept as given, in order."""
    found = TileInputs()
    suffixes = set(SLIDE_SUFFIXES) | set(IMAGE_SUFFIXES)
    for path in map(Path, paths):
        if not path.is_dir():
            found.files.append(path)
            continue
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in suffixes and not NOT_INPUTS & set(p.relative_to(path).parts[:-1])
        )
        if not files:
            raise SlideError(f"{path}: a folder with no slide or image files ({', '.join(sorted(suffixes))})")
        if all(len(p.relative_to(path).parts) > 1 for p in files):  # class subfolders
            found.image_classes |= {str(p): p.relative_to(path).parts[0] for p in files}
        if (path / MASKS_FOLDER).is_dir():
            found.masks = path / MASKS_FOLDER
        found.files += files
    return found
