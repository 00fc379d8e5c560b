"""Quickstart section for the shared backbones: every family at 1, 3 and 14 channels, checked and timed.

For each tiny registered family it checks the pooled embedding shape for X-ray (1), H&E (3) and MODIS (14)
inputs, that a saved checkpoint reloads to identical outputs, and that an RGB checkpoint loads into a
14-channel backbone; it times inference against a ResNet baseline and draws the intermediate feature maps
of a synthetic sample image (first three principal components as RGB).
"""

from __future__ import annotations

from pathlib import Path

import torch

from domainfm.shared.backbones.checkpoint import save_backbone
from domainfm.shared.backbones.wrapper import Backbone, create_backbone, load_backbone
from domainfm.shared.report import SectionResult
from domainfm.studies.shared.backbones.bench import TINY_BACKBONES, measure_backbones

CHANNELS = (1, 3, 14)


def sample_image(size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A synthetic image ``[1, C, size, size]``: discs and stripes of distinct texture on a gradient."""
    generator = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    base = 0.3 * (xx + 1) + 0.1 * torch.sin(12 * yy)
    disc = ((xx - 0.35) ** 2 + (yy + 0.3) ** 2 < 0.12).float()
    stripes = (torch.sin(30 * (xx + yy)) > 0).float() * ((xx + 0.4) ** 2 + (yy - 0.35) ** 2 < 0.15).float()
    image = base + 0.8 * disc + 0.6 * stripes
    weights = torch.rand(channels, 1, 1, generator=generator) + 0.5
    return (image[None] * weights + 0.05 * torch.randn(channels, size, size, generator=generator))[None]


def principal_components_rgb(feature_map: torch.Tensor) -> torch.Tensor:
    """``[C, h, w]`` features -> ``[h, w, 3]`` in [0, 1] from their first three principal components."""
    c, h, w = feature_map.shape
    flat = feature_map.reshape(c, -1).T.float()
    flat = flat - flat.mean(0)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    rgb = flat @ v[: min(3, v.shape[0])].T
    if rgb.shape[1] < 3:
        rgb = torch.cat([rgb, rgb[:, :1].expand(-1, 3 - rgb.shape[1])], 1)
    rgb = (rgb - rgb.min(0).values) / (rgb.max(0).values - rgb.min(0).values + 1e-8)
    return rgb.reshape(h, w, 3)


def _check_family(name: str, out_dir: Path, seed: int) -> dict:
    torch.manual_seed(seed)
    row: dict = {"backbone": name}
    for chans in CHANNELS:
        model = create_backbone(name, in_chans=chans).eval()
        size = model.img_size or 64
        with torch.no_grad():
            embedding = model(torch.randn(2, chans, size, size))
        row[f"{chans}-ch out"] = "x".join(map(str, embedding.shape))
    model = create_backbone(name, in_chans=3).eval()
    path = save_backbone(model, out_dir / f"{name}.safetensors")
    reloaded = load_backbone(path).eval()
    multispectral = create_backbone(name, in_chans=14, checkpoint=path).eval()
    x = torch.randn(2, 3, model.img_size or 64, model.img_size or 64)
    with torch.no_grad():
        row["reload max abs diff"] = float((model(x) - reloaded(x)).abs().max())
        grey = x.mean(1, keepdim=True)
        # The stem rule keeps the response to a grey input: RGB model on grey RGB vs 14-band model on grey bands.
        row["RGB->14 grey abs diff"] = float(
            (model(grey.expand(-1, 3, -1, -1)) - multispectral(grey.expand(-1, 14, -1, -1))).abs().max()
        )
    row["params M"] = sum(p.numel() for p in model.parameters()) / 1e6
    row["embed_dim"] = model.embed_dim
    row["features"] = model.feature_format
    path.unlink()
    return row


def _feature_figure(names: list[str], out_dir: Path, seed: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = sample_image(64, 3, seed)
    models: list[Backbone] = [create_backbone(n, in_chans=3).eval() for n in names]
    maps = []
    with torch.no_grad():
        for model in models:
            maps.append(model.forward_intermediates(image))
    columns = 1 + max(len(m) for m in maps)
    fig, axes = plt.subplots(len(names), columns, figsize=(1.8 * columns, 1.8 * len(names)), squeeze=False)
    for row, (name, layer_maps) in enumerate(zip(names, maps, strict=True)):
        shown = image[0].permute(1, 2, 0)
        axes[row, 0].imshow(((shown - shown.min()) / (shown.max() - shown.min())).numpy())
        axes[row, 0].set_ylabel(name, fontsize=8)
        for col in range(1, columns):
            ax = axes[row, col]
            if col - 1 < len(layer_maps):
                feature = layer_maps[col - 1][0]
                ax.imshow(principal_components_rgb(feature).numpy(), interpolation="nearest")
                ax.set_title(f"layer {col - 1}: {feature.shape[0]}x{feature.shape[1]}x{feature.shape[2]}", fontsize=6)
            else:
                ax.axis("off")
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("forward_intermediates on a synthetic image (random init; PCA of features as RGB)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "feature_maps.png", dpi=110)
    plt.close(fig)
    return "feature_maps.png"


def _throughput_figure(rows: list[dict], out_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.barh([r["backbone"] for r in rows], [r["ratio_to_baseline"] for r in rows], color="#4c72b0")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel(f"inference throughput / {rows[0]['backbone']} (same process)")
    fig.tight_layout()
    fig.savefig(out_dir / "throughput.png", dpi=110)
    plt.close(fig)
    return "throughput.png"


def run(out_dir: Path, device: torch.device, seed: int) -> SectionResult:
    """Checks and times the tiny backbone of every family; writes two figures into ``out_dir``."""
    rows = [_check_family(name, out_dir, seed) for name in TINY_BACKBONES]
    timings = measure_backbones(TINY_BACKBONES, "test_resnet", steps=5, warmup=1, device=str(device))
    speed = {t.name: t for t in timings}
    for row in rows:
        row["img/s"] = speed[row["backbone"]].images_per_s
        row["ratio vs test_resnet"] = speed[row["backbone"]].ratio_to_baseline
    figures = [
        _feature_figure(TINY_BACKBONES, out_dir, seed),
        _throughput_figure([{"backbone": t.name, "ratio_to_baseline": t.ratio_to_baseline} for t in timings], out_dir),
    ]
    worst_reload = max(r["reload max abs diff"] for r in rows)
    summary = (
        f"{len(rows)} backbone families built at {', '.join(map(str, CHANNELS))} input channels; "
        f"save/reload max abs diff {worst_reload:.2g}. Timings: batch 8 on `{device}`, median of 5, "
        "ratio = baseline time / time (`domainfm bench backbones` reruns them)."
    )
    return SectionResult(
        "Shared backbones",
        summary,
        table=rows,
        figures=figures,
        metrics={"reload_max_abs_diff": worst_reload},
        ok=worst_reload == 0.0,
    )
