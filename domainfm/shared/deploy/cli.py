"""``domainfm export bundle``: a downstream checkpoint as a MONAI bundle (MONAI Bundle specification).

The bundle layout, metadata and inference config follow ``docs/source/mb_specification.rst`` of
Project-MONAI/MONAI; see :mod:`domainfm.shared.deploy.bundle` and ``docs/export.md``.
"""

from __future__ import annotations

from pathlib import Path


def bundle(checkpoint: Path, out: Path, overwrite: bool = False) -> int:
    """Export a downstream checkpoint (any domain) as a MONAI bundle that verifies and runs offline.

    Writes LICENSE, configs/{metadata.json, inference.json, logging.conf}, models/model.pt (a plain state
    dict) and docs/README.md to OUT, through OUT.partial, and prints the commands that verify and run it.

    Args:
        checkpoint: A downstream checkpoint written by a domain's ``train`` command (``domainfm export bundle
            --help`` lists them).
        out: The bundle folder to create (its name is the bundle's name).
        overwrite: Replace an existing OUT that holds a bundle (or nothing).
    """
    from domainfm.shared.deploy.bundle import SCHEMA_FILE, SCHEMA_MD5, export_bundle

    path = export_bundle(Path(checkpoint), Path(out), overwrite=overwrite)
    print(f"wrote the MONAI bundle {path}")
    print("verify and run it (INPUTS: a folder of input files):")
    print(
        f"  python -m monai.bundle verify_metadata --meta_file {path}/configs/metadata.json "
        f"--filepath {SCHEMA_FILE} --hash_val {SCHEMA_MD5}"
    )
    print(
        f"  python -m monai.bundle verify_net_in_out network_def --meta_file {path}/configs/metadata.json "
        f"--config_file {path}/configs/inference.json --device cpu"
    )
    print(
        f"  python -m monai.bundle run --config_file {path}/configs/inference.json "
        f"--meta_file {path}/configs/metadata.json --bundle_root {path} --dataset_dir INPUTS "
        f"--output_dir {path}/eval"
    )
    return 0
