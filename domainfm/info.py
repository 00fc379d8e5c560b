"""``domainfm info``: versions, devices and registered backbones, for bug reports and provenance."""

from __future__ import annotations

import importlib.metadata
import platform
from typing import Any

from domainfm import __version__

CORE_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "lightning",
    "torchmetrics",
    "zarr",
    "numcodecs",
    "jsonargparse",
)
OPTIONAL_PACKAGES = (
    "monai",
    "peft",
    "captum",
    "dask",
    "distributed",
    "openslide-python",
    "openslide-bin",
    "rasterio",
    "pyhdf",
    "pydicom",
    "tokenizers",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages domainfm uses (``None`` when not installed)."""
    versions: dict[str, str | None] = {}
    for name in (*CORE_PACKAGES, *OPTIONAL_PACKAGES):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def visible_devices() -> list[dict[str, Any]]:
    """The devices torch can use: always the CPU, then each CUDA device (name, memory, capability)."""
    import os

    import torch

    devices: list[dict[str, Any]] = [{"type": "cpu", "threads": torch.get_num_threads(), "cores": os.cpu_count()}]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            devices.append(
                {
                    "type": "cuda",
                    "index": index,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                    "bf16": torch.cuda.is_bf16_supported(),
                }
            )
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append({"type": "mps"})
    return devices


def collect_info() -> dict[str, Any]:
    """Everything ``domainfm info`` reports, as a JSON-serialisable dict."""
    from domainfm.shared.backbones import BACKBONES

    return {
        "domainfm": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(),
        "devices": visible_devices(),
        "backbones": [
            {
                "name": spec.name,
                "family": spec.family,
                "timm_name": spec.timm_name,
                "img_size": spec.img_size,
                "feature_format": spec.feature_format,
                "test_variant": spec.test_variant,
                "giant": spec.giant,
                "description": spec.description,
            }
            for spec in map(BACKBONES.get, BACKBONES.names())
        ],
    }


def info(json: bool = False) -> None:
    """Print versions of torch/timm/monai/zarr/lightning, visible devices and registered backbones.

    Args:
        json: Print one JSON object instead of a table.
    """
    import json as json_module

    data = collect_info()
    if json:
        print(json_module.dumps(data, indent=2))
        return
    print(f"domainfm {data['domainfm']} on Python {data['python']} ({data['platform']})\n\npackages:")
    for name, version in data["versions"].items():
        print(f"  {name:18s} {version or '(not installed)'}")
    print("\ndevices:")
    for device in data["devices"]:
        print("  " + ", ".join(f"{k}={v}" for k, v in device.items()))
    print("\nbackbones:")
    for spec in data["backbones"]:
        tag = " [giant: config only]" if spec["giant"] else " [test]" if spec["test_variant"] else ""
        print(f"  {spec['name']:30s} {spec['family']:9s} {spec['description']}{tag}")
