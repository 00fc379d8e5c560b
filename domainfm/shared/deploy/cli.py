"""``domainfm export bundle``: a downstream checkpoint as a MONAI bundle (MONAI Bundle specification).

The bundle layout, metadata and inference config follow ``docs/source/mb_specification.rst`` of
Project-MONAI/MONAI; see :mod:`domainfm.shared.deploy.bundle` and ``docs/export.md``.
"""

from __future__ import annotations

import shlex
from pathlib import Path


def bundle(checkpoint: Path, out: Path, overwrite: bool = False) -> int:
    """Export a downstream checkpoint (any domain) as a MONAI bundle that verifies and runs offline.

    Writes LICENSE, configs/{metadata.json, inference.json, logging.conf}, models/model.pt (a plain state dict) and
    docs/README.md to OUT, through a run-unique OUT.partial-<pid>-<hex>, and prints the commands that verify and run
    it.

    Args:
        checkpoint: A downstream checkpoint written by a domain's ``train`` command (``domainfm export bundle
            --help`` lists them).
        out: The bundle folder to create (its name is the bundle's name).
        overwrite: Replace an existing OUT that holds a bundle (or nothing).
    """
    from domainfm.shared.deploy.bundle import SCHEMA_FILE, SCHEMA_MD5, export_bundle

    path = export_bundle(Path(checkpoint), Path(out), overwrite=overwrite)
    root, meta, inference = (
        shlex.quote(str(p)) for p in (path, path / "configs/metadata.json", path / "configs/inference.json")
    )
    schema, output = shlex.quote(str(SCHEMA_FILE)), shlex.quote(str(path / "eval"))
    print(f"wrote the MONAI bundle {path}")
    print("verify and run it (INPUTS: a folder of input files; paths are quoted for a POSIX shell):")
    print(f"  python -m monai.bundle verify_metadata --meta_file {meta} --filepath {schema} --hash_val {SCHEMA_MD5}")
    print(
        f"  python -m monai.bundle verify_net_in_out network_def --meta_file {meta} "
        f"--config_file {inference} --device cpu"
    )
    print(
        f"  python -m monai.bundle run --config_file {inference} --meta_file {meta} --bundle_root {root} "
        f"--dataset_dir INPUTS --output_dir {output}"
    )
    return 0
