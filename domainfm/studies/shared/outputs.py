"""Phantom outputs: written under a run-unique name and renamed into place, replacing only a phantom.

A phantom folder (``radiology phantom``, ``segmentation phantom``) must be new, empty, or a phantom folder
domainfm wrote (its ``.domainfm.json`` marker of kind ``phantom``), and replacing one needs ``--overwrite``;
a user's folder is refused, never written into (:mod:`domainfm.shared.outputs`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from domainfm.shared.outputs import check_output, has_marker, lock_output, partial_path, replace_output, write_marker

PHANTOM_KIND = "phantom"


def is_phantom_folder(folder: Path) -> bool:
    """Whether ``folder`` is a phantom folder domainfm wrote."""
    return folder.is_dir() and has_marker(folder, PHANTOM_KIND)


@contextlib.contextmanager
def phantom_folder(out: str | Path, what: str, overwrite: bool) -> Iterator[Path]:
    """Yields a fresh folder to write the phantom into; it becomes ``out`` when the block ends without error."""
    out = Path(out)
    with lock_output(out, what):
        check_output(out, what, overwrite, is_phantom_folder)
        partial = partial_path(out)
        partial.mkdir(parents=True)
        try:
            yield partial
            write_marker(partial, PHANTOM_KIND)
            replace_output(partial, out)
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
