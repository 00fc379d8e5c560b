"""``domainfm models ...``: the foundation models a user may hold, and their conversion.

``list`` and ``show`` read the catalogue (nothing is downloaded: each entry says where the weights are
obtained and whether access is gated); ``convert`` turns the publisher's file into a domainfm checkpoint
that every ``--encoder``/``--checkpoint`` option takes (:mod:`domainfm.shared.foundation.convert`).
"""

from __future__ import annotations

from pathlib import Path


def list_models(json: bool = False) -> int:
    """List the known foundation models: architecture, input size, mpp or bands, normalisation, licence.

    Args:
        json: Print a JSON list (one object per model) instead of a table.
    """
    import json as json_module

    from domainfm.shared.foundation.catalogue import foundation_models

    catalogue = foundation_models()
    rows = [catalogue.get(name).summary() for name in catalogue.names()]
    if json:
        print(json_module.dumps(rows, indent=2))
        return 0
    print(f"{'name':22s} {'domain':15s} {'input':9s} {'mpp/bands':11s} {'layout':19s} {'access':7s} licence")
    for row in rows:
        where = f"{row['mpp']} mpp" if row["mpp"] else (f"{len(row['bands'])} bands" if row["bands"] else "-")
        size = "x".join(map(str, row["input_size"]))
        access = "gated" if row["gated"] else "open"
        print(
            f"{row['name']:22s} {row['domain']:15s} {size:9s} {where:11s} {row['layout']:19s} {access:7s} "
            f"{row['licence']}"
        )
    print("\n`domainfm models show NAME` says where to obtain the weights and how to convert them.")
    return 0


def show(name: str, /) -> int:
    """Everything about one foundation model: where to get it, how to convert it, which verbs use it.

    Args:
        name: A catalogue name (``domainfm models list``).
    """
    from domainfm.shared.foundation.catalogue import foundation_model

    entry = foundation_model(name)
    row = entry.summary()
    record = entry.transform
    print(f"{entry.name}: {entry.title}")
    print(f"  architecture   {row['architecture']}")
    print(f"  input          {record.describe()}")
    if row["mpp"]:
        print(f"  mpp            {row['mpp']}")
    if row["bands"]:
        print(f"  bands          {', '.join(map(str, row['bands']))}")
    print(f"  normalisation  scale {record.scale:g}, mean {_short(record.mean)}, std {_short(record.std)}")
    print(f"  pooling        {entry.pooling}")
    print(
        f"  licence        {entry.licence}{' (gated: request access from the publisher first)' if entry.gated else ''}"
    )
    print(f"  weights        {entry.source}")
    print(f"  paper          {entry.paper}")
    if entry.notes:
        print(f"  notes          {entry.notes}")
    print(f"  convert        domainfm models convert {entry.name} --input PATH --out {entry.name}.safetensors")
    if entry.verbs:
        print(f"  used by        {', '.join(f'domainfm {verb}' for verb in entry.verbs)}")
    return 0


def convert(
    name: str,
    /,
    input: Path,
    out: Path,
    config: Path | None = None,
    layout: str | None = None,
    overwrite: bool = False,
) -> int:
    """Convert a publisher's checkpoint into a domainfm checkpoint carrying architecture and preprocessing.

    Args:
        name: A catalogue name (``domainfm models list``).
        input: The publisher's weight file (.pt/.bin/.pth/.safetensors) or Hugging Face folder.
        out: The converted ``.safetensors`` file to write (written atomically).
        config: The architecture config the publisher ships (Hugging Face ``config.json``, timm
            ``config.json``, pytorch-caney YAML) when it is not beside ``input``.
        layout: Read ``input`` in another layout than the catalogue's (``timm``, ``hf_vit``, ``hf_dinov2``,
            ``dinov2_github``, ``open_clip``), e.g. a model's original DINOv2-code checkpoint.
        overwrite: Replace a domainfm checkpoint at ``out`` (any other file, the input included, is refused).
    """
    from domainfm.shared.foundation.convert import convert_checkpoint
    from domainfm.shared.outputs import check_output, lock_output
    from domainfm.shared.tasks.checkpoint import is_domainfm_checkpoint

    with lock_output(out, "converted checkpoint"):
        check_output(out, "converted checkpoint", overwrite, is_domainfm_checkpoint)  # never a user's file
        report = convert_checkpoint(name, input, out, config, progress=True, layout=layout)
    print(f"wrote {report.out}: {report.model}, {report.tensors} backbone tensors")
    print(f"  rebuild      {', '.join(f'{k}={v}' for k, v in report.build_args.items())}")
    print(f"  input        {report.transform.describe()}")
    if report.extras:
        print(f"  kept beside  {', '.join(report.extras[:8])}{' ...' if len(report.extras) > 8 else ''}")
    for reason, keys in _group(report.dropped).items():
        print(
            f"  dropped      {len(keys)} tensor(s): {reason} ({', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''})"
        )
    for note in report.notes:
        print(f"  note         {note}")
    return 0


def _short(values: list[float]) -> str:
    shown = ", ".join(f"{v:.4g}" for v in values[:4])
    return f"[{shown}{', ...' if len(values) > 4 else ''}]"


def _group(dropped: dict[str, str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for key, reason in dropped.items():
        groups.setdefault(reason, []).append(key)
    return groups
