"""``domainfm models convert``: a publisher's checkpoint -> one domainfm checkpoint that rebuilds it exactly.

Steps: the catalogue entry names the backbone, the layout and the model's own transform; the layout reads
the architecture from the source's config (or ``--config``) and renames every source tensor; the backbone
is built on PyTorch's ``meta`` device (shapes only, no memory) and the converted keys must match its
state dict exactly, key for key and shape for shape, or the conversion fails naming the tensors; then the
tensors are streamed into a safetensors file (:mod:`~domainfm.shared.foundation.safetensors_stream`),
one at a time from a memory-mapped source, so the peak memory stays near one tensor, not two copies of
the checkpoint (``domainfm bench convert`` measures it).

The file carries two metadata entries: ``domainfm_backbone`` (the ``create_backbone`` arguments, so
``load_backbone(FILE)`` and every ``--encoder``/``--checkpoint`` option rebuild it) and
``domainfm_foundation`` (the model's name, its :class:`~domainfm.shared.model.transform.InputTransform`,
pooling, the source file, the tensors deliberately dropped and the extras kept beside the backbone under
``extra.``: a SimMIM decoder and mask token, a CLIP projection).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from domainfm.shared.backbones.checkpoint import EXTRA_PREFIX, METADATA_KEY
from domainfm.shared.foundation.catalogue import FoundationModel, foundation_model
from domainfm.shared.foundation.layouts import SourceWeights, TargetModel, get_layout
from domainfm.shared.foundation.sources import ConversionError, read_config
from domainfm.shared.model.transform import InputTransform

FOUNDATION_KEY = "domainfm_foundation"


@dataclass
class ConversionReport:
    """What a conversion did, for the command's summary and for tests."""

    out: Path
    model: str
    tensors: int
    extras: list[str]
    dropped: dict[str, str]
    build_args: dict[str, Any]
    transform: InputTransform
    notes: list[str] = field(default_factory=list)


def convert_checkpoint(
    name: str,
    source: str | Path,
    out: str | Path,
    config: str | Path | None = None,
    progress: bool = False,
    layout: str | None = None,
) -> ConversionReport:
    """Converts ``source`` (the publisher's file or folder) for catalogue model ``name`` into ``out``.

    ``layout`` reads the file in another layout than the catalogue's (e.g. ``dinov2_github`` for a model's
    original DINOv2-code checkpoint instead of its timm release); the result is checked as strictly.
    """
    entry = foundation_model(name)
    if layout is not None and layout != entry.layout:
        entry = replace(entry, layout=layout)
    source, out = Path(source), Path(out)
    if out.suffix != ".safetensors":
        raise ConversionError(f"--out {out}: converted checkpoints are .safetensors files")
    if out.resolve() == source.resolve():
        raise ConversionError(f"--out {out} is the source file; write the conversion to a new file")
    converter = get_layout(entry.layout)
    arch = dict(converter.read_arch(source, read_config(config)))
    build_args, record, notes = _build_args(entry, arch)
    target = _target(build_args)
    weights = converter.convert(source, read_config(config), target)
    notes += weights.notes
    entries = _check(source, entry, weights, target)
    metadata = {
        METADATA_KEY: build_args,
        FOUNDATION_KEY: {
            "model": entry.name,
            "title": entry.title,
            "layout": entry.layout,
            "transform": record.to_dict(),
            "pooling": entry.pooling,
            "source": source.name,
            "dropped": weights.dropped,
            "extras": sorted(weights.extras),
        },
    }
    _write(out, entries, weights, metadata, progress)
    return ConversionReport(
        out, entry.name, len(weights.backbone), sorted(weights.extras), weights.dropped, build_args, record, notes
    )


def _build_args(entry: FoundationModel, arch: dict[str, Any]) -> tuple[dict[str, Any], InputTransform, list[str]]:
    record = entry.transform
    notes: list[str] = []
    in_chans = int(arch.pop("in_chans", record.in_channels))
    if in_chans != record.in_channels:
        raise ConversionError(
            f"the source has {in_chans} input channels; {entry.name} takes {record.in_channels} "
            f"({', '.join(record.channels)})"
        )
    img_size = arch.pop("img_size", None)
    if img_size is not None:
        img_size = int(img_size if isinstance(img_size, int) else img_size[0])
        if [img_size, img_size] != list(record.size):
            record = replace(record, size=[img_size, img_size])
            notes.append(f"input size {img_size} from the source's config (catalogue: {entry.transform.size})")
    size = record.size[0]
    args: dict[str, Any] = {"name": entry.backbone, "in_chans": in_chans, "img_size": size, **arch}
    if entry.pooling != "model":
        args["pooling"] = entry.pooling
    return args, record, notes


def _target(build_args: dict[str, Any]) -> TargetModel:
    from domainfm.shared.backbones import create_backbone
    from domainfm.shared.backbones.specs import get_backbone_spec

    args = dict(build_args)
    name = args.pop("name")
    try:
        with torch.device("meta"):
            backbone = create_backbone(name, **args)
    except TypeError as error:
        raise ConversionError(f"the source's architecture arguments do not build {name}: {error}") from error
    shapes = {key: tuple(value.shape) for key, value in backbone.model.state_dict().items()}
    return TargetModel(get_backbone_spec(name).timm_name, shapes)


def _materialise(value: torch.Tensor | Any) -> torch.Tensor:
    return value() if callable(value) else value


def _check(
    source: Path, entry: FoundationModel, weights: SourceWeights, target: TargetModel
) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    missing = sorted(set(target.shapes) - set(weights.backbone))
    unexpected = sorted(set(weights.backbone) - set(target.shapes))
    entries, shapes = [], []
    for key in sorted(weights.backbone):
        if key in unexpected:
            continue
        tensor = _materialise(weights.backbone[key])
        if tuple(tensor.shape) != target.shapes[key]:
            shapes.append(f"{key} {tuple(tensor.shape)} vs {target.shapes[key]}")
        entries.append((key, tensor.dtype, tuple(tensor.shape)))
        del tensor
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit {entry.name} ({target.timm_name}, layout {entry.layout}):"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if keys:
                more = f", ... ({len(keys) - 10} more)" if len(keys) > 10 else ""
                lines.append(f"  {title} tensors ({len(keys)}): {', '.join(keys[:10])}{more}")
        lines.append(
            "  Check that the file is this model's release (`domainfm models show "
            f"{entry.name}`) and that --config describes its width and depth."
        )
        raise ConversionError("\n".join(lines))
    for key in sorted(weights.extras):
        tensor = _materialise(weights.extras[key])
        entries.append((EXTRA_PREFIX + key, tensor.dtype, tuple(tensor.shape)))
        del tensor
    return entries


def _write(
    out: Path,
    entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
    weights: SourceWeights,
    metadata: dict[str, Any],
    progress: bool,
) -> None:
    import json

    from domainfm.shared.foundation.safetensors_stream import write_streaming

    def produce(key: str) -> torch.Tensor:
        if key.startswith(EXTRA_PREFIX) and key[len(EXTRA_PREFIX) :] in weights.extras:
            return _materialise(weights.extras[key[len(EXTRA_PREFIX) :]])
        return _materialise(weights.backbone[key])

    encoded = {key: json.dumps(value) for key, value in metadata.items()}
    total = sum(_nbytes(dtype, shape) for _, dtype, shape in entries)
    if not progress:
        write_streaming(out, entries, produce, encoded)
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TimeRemainingColumn()
    ) as bar:
        task = bar.add_task(f"writing {out.name}", total=total)
        write_streaming(out, entries, produce, encoded, progress=lambda n: bar.advance(task, n))


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    count = torch.empty((), dtype=dtype).element_size()
    for side in shape:
        count *= int(side)
    return count


def read_foundation_metadata(path: str | Path) -> dict[str, Any] | None:
    """The ``domainfm_foundation`` entry of a converted checkpoint, or ``None`` for other files."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    from domainfm.shared.tasks.checkpoint import checkpoint_metadata

    entry = checkpoint_metadata(path).get(FOUNDATION_KEY)
    if entry is not None and not isinstance(entry, dict):
        from domainfm.shared.backbones.checkpoint import CheckpointError

        raise CheckpointError(f"{path}: its {FOUNDATION_KEY} metadata is not a JSON object (damaged or edited?)")
    return entry


def foundation_transform(path: str | Path) -> InputTransform | None:
    """The input transform a converted checkpoint carries (``None`` for other files)."""
    meta = read_foundation_metadata(path)
    return None if meta is None else InputTransform.from_dict(meta["transform"])


def read_extras(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors a converted checkpoint keeps beside its backbone (``extra.`` prefix removed)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {
            key[len(EXTRA_PREFIX) :]: handle.get_tensor(key)
            for key in handle.keys()  # noqa: SIM118 (safe_open is not iterable)
            if key.startswith(EXTRA_PREFIX)
        }
