"""``export_bundle``: a downstream checkpoint as a MONAI bundle that runs and verifies offline.

Layout and metadata follow the MONAI Bundle specification (``docs/source/mb_specification.rst`` in
Project-MONAI/MONAI; config syntax in ``docs/source/config_syntax.md``)::

    OUT/
      LICENSE                  Apache-2.0 notice (code and configs) + the terms of the weights
      configs/metadata.json    versions, network_data_format (input ``image``, output ``pred``), the card
      configs/inference.json   LoadImaged -> network -> inferer -> Activationsd -> writer, under ``run``
      models/model.pt          the network's plain state dict (``torch.load(weights_only=True)`` reads it)
      docs/README.md           what the model does, its input/output contract and the commands

``network_def`` instantiates :func:`domainfm.shared.deploy.build_network` with the card's ``kind`` and
``build`` (a randomly initialised network, nothing downloaded), and MONAI's ``CheckpointLoader`` loads
``models/model.pt`` (``weights_only=True`` in monai 1.6). The network takes *raw* inputs (what a file
holds) and owns its normalisation, so the preprocessing is only reading: ``PILReader`` with
``reverse_indexing=False`` (PIL's default ``True`` transposes height and width) for pictures,
``NumpyReader`` for ``.npy`` chips. Predictions equal :func:`domainfm.shared.deploy.predict` on the same
files: class probabilities go to ``predictions.csv`` (MONAI ``ClassificationSaver``, full float
precision), maps to ``<stem>_pred.npy`` (:class:`SaveNpyd`, float32; MONAI's image writers need
nibabel/ITK or quantise to PNG).

``metadata.json`` validates against the MONAI metadata schema ``meta_schema_20240725.json`` shipped in
this package (:data:`SCHEMA_FILE`, md5 :data:`SCHEMA_MD5`): ``python -m monai.bundle verify_metadata
--filepath SCHEMA --hash_val MD5`` finds the file and never downloads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.shared.deploy.bundle_runtime import config_safe, config_value
from domainfm.shared.deploy.bundle_text import LOGGING_CONF, license_text, readme_text
from domainfm.shared.deploy.card import Deployable, ModelCard
from domainfm.shared.deploy.inputs import PICTURES
from domainfm.shared.errors import DomainfmError
from domainfm.shared.outputs import (
    MARKER,
    check_output,
    has_marker,
    lock_output,
    partial_path,
    remove_leftovers,
    replace_output,
    write_marker,
)
from domainfm.shared.plugins import domain_of_kind

# The MONAI bundle metadata schema (JSON Schema draft 2019-09), the content published by Project-MONAI
# at SCHEMA_URL (their copy of the MONAI-extra-test-data 0.8.1 release asset of the same name).
SCHEMA_FILE = Path(__file__).with_name("meta_schema_20240725.json")
SCHEMA_URL = "https://project-monai.github.io/schema/meta_schema_20240725.json"
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"
BUNDLE_VERSION = "0.1.0"
# Packages the bundle itself needs beyond monai/torch/numpy (``python -m monai.bundle``, the engine).
RUNTIME_PACKAGES = ("pytorch-ignite", "fire")


class BundleError(DomainfmError, ValueError):
    """A bundle that cannot be written (existing output folder, a checkpoint the bundle cannot express)."""


def input_suffixes(card: ModelCard) -> list[str]:
    """File suffixes a bundle of ``card`` reads, sorted: what ``read_input`` reads for it.

    The domain's own readers, pictures for 1- and 3-channel models, and ``.npy`` arrays.
    """
    from domainfm.shared.deploy.registry import domain_module

    suffixes = set(getattr(domain_module(card.kind), "INPUT_READERS", {})) | {".npy"}
    if card.in_channels in (1, 3):
        suffixes |= set(PICTURES)
    return sorted(suffixes)


def _version(distribution: str) -> str | None:
    try:
        return importlib_metadata.version(distribution)
    except importlib_metadata.PackageNotFoundError:
        return None


def required_packages(network: nn.Module) -> dict[str, str]:
    """``{distribution: version}`` the network's modules come from, plus domainfm and the bundle runtime.

    torch, monai and numpy are left out: metadata records them in their own fields.

    Args:
        network: The exported network.
    """
    from domainfm import __version__

    top_level = {type(module).__module__.split(".")[0] for module in network.modules()}
    distributions = importlib_metadata.packages_distributions()
    packages = {"domainfm": __version__}
    for name in sorted(top_level - {"domainfm", "torch", "monai", "numpy", "builtins"}):
        for distribution in distributions.get(name, [name]):
            version = _version(distribution)
            if version:
                packages[distribution] = version
    for distribution in RUNTIME_PACKAGES:
        version = _version(distribution)
        if version:
            packages[distribution] = version
    return packages


def card_from_metadata(metadata: dict[str, Any]) -> ModelCard:
    """The :class:`ModelCard` stored in a bundle's ``configs/metadata.json`` (its ``domainfm`` key).

    Args:
        metadata: The parsed ``metadata.json``.
    """
    return ModelCard.from_dict(config_value(metadata["domainfm"]))


def _probe(deployable: Deployable) -> tuple[torch.Size, torch.dtype]:
    """Output shape and dtype of the network on a random raw input, and a check that ``network_def`` rebuilds it."""
    from domainfm.shared.deploy.registry import build_network

    card = deployable.card
    low, high = card.input_range if card.input_range else (0.0, 1.0)
    generator = torch.Generator().manual_seed(0)
    images = low + (high - low) * torch.rand(1, card.in_channels, *card.spatial_shape, generator=generator)
    rebuilt = build_network(card.kind, card.build)
    rebuilt.load_state_dict(deployable.network.state_dict())
    deployable.network.eval()
    with torch.no_grad():
        expected = deployable.network(images)
        got = rebuilt.eval()(images)
    if not isinstance(expected, torch.Tensor):
        raise BundleError(f"{card.kind} returns {type(expected).__name__}, not a tensor; a bundle needs one `pred`")
    if not torch.allclose(expected, got, atol=1e-5, rtol=1e-5):
        raise BundleError(
            f"{card.kind}: the network rebuilt from the card (network_def) does not reproduce the checkpoint's "
            "outputs; its `build` misses something the checkpoint's network has"
        )
    return expected.shape, expected.dtype


def _sliding_window(card: ModelCard, out_shape: Sequence[int]) -> bool:
    """Whether the network slides a window over larger inputs (itself: the bundle's inferer stays simple)."""
    return card.sliding_window and list(out_shape[2:]) == list(card.spatial_shape)


def _tensor_format(
    card: ModelCard, out_shape: Sequence[int], dtype: torch.dtype, probabilities: bool
) -> dict[str, Any]:
    spatial = list(out_shape[2:])
    return {
        "type": "image" if spatial else "probabilities",
        "format": "classes",
        "num_channels": card.out_channels,
        "spatial_shape": spatial,
        "dtype": str(dtype).removeprefix("torch."),
        "value_range": [0, 1] if probabilities else [],
        "is_patch_data": False,
        "channel_def": {str(i): name for i, name in enumerate(card.class_names)},
    }


def bundle_metadata(card: ModelCard, out_shape: Sequence[int], dtype: torch.dtype, network: nn.Module) -> dict:
    """``configs/metadata.json`` of a bundle of ``card``.

    Args:
        card: The model card.
        out_shape: The network's output shape for one input of the card's size (``[1, C]`` or ``[1, C, H, W]``).
        dtype: The network's output dtype.
        network: The network (its modules name the required packages).
    """
    import monai

    from domainfm import __version__

    sliding = _sliding_window(card, out_shape)
    task_text = {
        "classification": "one class per input (softmax over the classes)",
        "multilabel": "independent labels per input (a sigmoid per label)",
        "segmentation": "a probability map per input",
    }[card.task]
    description = (
        f"domainfm {card.kind} ({card.details.get('backbone') or card.details.get('model', 'network')}): "
        f"{task_text}. Input: {card.details.get('input', 'raw values')}; {card.in_channels} channel(s) "
        f"({', '.join(card.channel_names)}), raw values as the file holds them (the network normalises). "
        f"Output `pred`: {card.out_channels} channel(s) ({', '.join(card.class_names)}). Input geometry: "
        f"{card.input_transform.describe()}."
    )
    image = {
        "type": "image",
        "format": "magnitude",
        "modality": domain_of_kind(card.kind).modality,
        "num_channels": card.in_channels,
        "spatial_shape": list(card.spatial_shape),
        "dtype": "float32",
        "value_range": list(card.input_range) if card.input_range else [],
        "is_patch_data": sliding,
        "channel_def": {str(i): name for i, name in enumerate(card.channel_names)},
    }
    return config_safe(
        {
            "schema": SCHEMA_URL,
            "version": BUNDLE_VERSION,
            "changelog": {
                BUNDLE_VERSION: f"exported by domainfm {__version__} from {Path(card.details.get('source', '')).name}"
            },
            "monai_version": monai.__version__,
            "pytorch_version": torch.__version__.split("+")[0],
            "numpy_version": np.__version__,
            "required_packages_version": required_packages(network),
            "name": f"domainfm {card.kind}",
            "task": f"{card.kind}: {card.task}",
            "description": description,
            "authors": "domainfm developers",
            "copyright": "Copyright (c) the domainfm developers",
            "license": "code and configs: Apache-2.0; weights: the terms of their training data (see LICENSE)",
            "data_type": "npy" if input_suffixes(card) == [".npy"] else "picture (png/jpg/tif/bmp)",
            "image_classes": f"{card.in_channels} channel(s): {', '.join(card.channel_names)}",
            "pred_classes": f"{card.out_channels} channel(s) of probabilities: {', '.join(card.class_names)}",
            "intended_use": "Research use; not validated for diagnosis or operational decisions.",
            "network_data_format": {
                "inputs": {"image": image},
                "outputs": {"pred": _tensor_format(card, out_shape, dtype, card.activation == "none")},
                "post_processed_outputs": {"pred": _tensor_format(card, out_shape, dtype, True)},
            },
            "domainfm": card.to_dict(),
        }
    )


def _preprocessing(card: ModelCard) -> dict[str, Any]:
    # domainfm's own reading (read_input): the bundle takes every file `predict` takes, read the same way.
    reader = {
        "_target_": "domainfm.shared.deploy.bundle_runtime.ReadInputd",
        "keys": "image",
        "card": config_safe(card.to_dict(), "the model card"),
    }
    return {"_target_": "Compose", "transforms": [reader]}


def inference_config(card: ModelCard, out_shape: Sequence[int]) -> dict[str, Any]:
    """``configs/inference.json``: read raw files, run the network, activate, write ``pred`` (under ``run``).

    Args:
        card: The model card.
        out_shape: The network's output shape for one input of the card's size.
    """
    classes = len(out_shape) == 2
    # The network applies the model's input transform itself (resize, letterbox or sliding window), so the
    # bundle's inferer never changes the geometry: `monai.bundle run` and `predict` run the same module.
    inferer = {"_target_": "SimpleInferer"}
    activation = {"softmax": {"softmax": True}, "sigmoid": {"sigmoid": True}, "none": {}}[card.activation]
    post: list[dict[str, Any]] = [{"_target_": "Activationsd", "keys": "pred", **activation}]
    handlers: list[dict[str, Any]] = [
        {
            "_target_": "CheckpointLoader",
            "load_path": "$@bundle_root + '/models/model.pt'",
            "load_dict": {"model": "@network"},
            "map_location": "@device",
        },
        {"_target_": "StatsHandler", "iteration_log": False},
    ]
    if classes:
        handlers.append(
            {
                "_target_": "ClassificationSaver",
                "output_dir": "@output_dir",
                "filename": "predictions.csv",
                "batch_transform": "$lambda batch: [item['image'].meta for item in batch]",
                "output_transform": "$monai.handlers.from_engine(['pred'])",
            }
        )
    else:
        post.append(
            {"_target_": "domainfm.shared.deploy.bundle_runtime.SaveNpyd", "keys": "pred", "output_dir": "@output_dir"}
        )
    return {
        "imports": ["$import torch", "$import monai"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "input_suffixes": input_suffixes(card),
        "datalist": {
            "_target_": "domainfm.shared.deploy.bundle_runtime.datalist",
            "folder": "@dataset_dir",
            "suffixes": "@input_suffixes",
        },
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {
            "_target_": "domainfm.shared.deploy.build_network",
            "kind": card.kind,
            "build": config_safe(card.build, "the card's build"),
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": _preprocessing(card),
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        # One file per batch: segmentation inputs may differ in size.
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": post},
        "handlers": handlers,
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
        "finalize": [],
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=4) + "\n")


def is_bundle(out: Path) -> bool:
    """Whether ``out`` is a bundle domainfm exported (what ``--overwrite`` may replace).

    Recognised by ``configs/metadata.json`` holding domainfm's model card; a bundle of another tool, or any
    other folder, is never deleted.
    """
    try:
        meta = json.loads((Path(out) / "configs" / "metadata.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("domainfm"), dict) and "kind" in meta["domainfm"]


def is_bundle_partial(path: Path) -> bool:
    """An unfinished bundle of a killed export (it carries domainfm's marker until it is complete)."""
    return has_marker(path, "bundle-partial")


def export_bundle(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Writes the MONAI bundle of a downstream checkpoint to ``out`` and returns ``out``.

    The bundle is written to ``OUT.partial-<pid>-<hex>`` (unique to the run) and renamed at the end, so ``out``
    never holds half a bundle; one run writes ``out`` at a time, and ``--overwrite`` replaces only a bundle
    domainfm exported (:func:`is_bundle`), never another folder.

    Args:
        checkpoint: A downstream checkpoint (see :func:`domainfm.shared.deploy.load_deployable`).
        out: The bundle folder (its name is the bundle's name); its parent is created when missing.
        overwrite: Replace an existing ``out`` that holds a domainfm bundle (an empty folder needs no flag).

    Raises:
        OutputError: ``out`` exists (without ``overwrite``, or is not a domainfm bundle), or another run writes it.
        BundleError: The checkpoint cannot be expressed as a bundle.
        NotDeployableError: ``checkpoint`` is not a downstream checkpoint.
    """
    from domainfm.shared.deploy.registry import load_deployable
    from domainfm.shared.optional import require

    require("monai", "export")
    out = Path(out)
    with lock_output(out, "bundle"):  # one writer per bundle
        check_output(out, "bundle", overwrite, is_bundle, error=BundleError)
        deployable = load_deployable(checkpoint)
        card = deployable.card
        out_shape, dtype = _probe(deployable)
        config = inference_config(card, out_shape)
        meta = bundle_metadata(card, out_shape, dtype, deployable.network)
        remove_leftovers(out, is_bundle_partial)
        partial = partial_path(out)  # unique to this run: never a folder a user owns
        try:
            partial.mkdir(parents=True)
            write_marker(partial, "bundle-partial")  # marks a leftover as ours, should this run be killed
            for folder in ("configs", "models", "docs"):
                (partial / folder).mkdir()
            (partial / "LICENSE").write_text(license_text(card))
            _write_json(partial / "configs" / "metadata.json", meta)
            _write_json(partial / "configs" / "inference.json", config)
            (partial / "configs" / "logging.conf").write_text(LOGGING_CONF)
            state = {k: v.detach().cpu().contiguous() for k, v in deployable.network.state_dict().items()}
            torch.save(state, partial / "models" / "model.pt")
            readme = readme_text(
                card, meta, out_shape, _sliding_window(card, out_shape), input_suffixes(card), SCHEMA_MD5
            )
            (partial / "docs" / "README.md").write_text(readme)
            (partial / MARKER).unlink()
            replace_output(partial, out)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return out
