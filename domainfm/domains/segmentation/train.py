"""Training the small VAE, GMS and the UNet baseline on a segmentation tile store (Lightning).

GMS recipe (Huo et al., AAAI 2025, arXiv 2403.18198; ``shared/methods/gms.md`` sections 5-6): AdamW at
2e-3, linear warm-up then cosine to zero stepped per epoch, batch 8; the loss is, summed over the
deep-supervision outputs ``level2, level1, out``, the latent MSE to the encoded mask plus MONAI's
``DiceLoss`` on the *decoded* prediction (gradients pass through the frozen decoder); with probability
0.5 per step the image latent is a posterior sample instead of the mean. The UNet baseline trains on the
same tiles, split, augmentation, epochs, batch size and schedule with Dice + cross-entropy.

Unlike the reference code, which picks checkpoints on the test split, the kept weights are those of the
best epoch on the **val** split. Augmentation runs on the device: per-image horizontal/vertical flips and
90-degree rotations of image and mask together, and brightness/contrast jitter (+-0.1, p 0.2) of the
image; the paper's shift-scale-rotate is not applied.

Several processes (Lightning DDP; ``workflow.fit`` with ``devices``/``num_nodes``) each read their part
of the store. Every loss term is a per-image mean, so DDP's gradient average is the global batch's; a
tile's flips, jitter and posterior noise come from its own generator, seeded by (seed, epoch, tile id), and
the per-step choice of mean or sample from one seeded by the step, so a step over N processes equals one
process on the global batch (tested). The VAE trains in one process.

The offline VAE (no Stable-Diffusion weights) trains on the store's images, unlabelled, plus random
lobulated binary shapes (never the store's masks), so that its decoder can draw two-level images; its
``scaling_factor`` is then set to one over the standard deviation of the train images' latents (SD's
0.18215 was chosen the same way).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from domainfm.domains.segmentation.evaluate import evaluate
from domainfm.domains.segmentation.mapper import SUPERVISED_LEVELS
from domainfm.domains.segmentation.models import GMSSegmenter, UNetSegmenter, to_model_range, trainable_parameters
from domainfm.domains.segmentation.shapes import lesion_mask
from domainfm.domains.segmentation.vae import VAEConfig, create_vae, encode_mean, freeze
from domainfm.shared.engine import resolve_device
from domainfm.shared.engine.distributed import (
    all_reduce_sum,
    is_distributed,
    step_generator,
    tile_generators,
    tile_uniforms,
)
from domainfm.shared.engine.training import (
    data_parallel_only,
    epoch_checkpoint,
    fit,
    make_trainer,
    step_task,
    trainer_device,
)
from domainfm.shared.tasks.schedule import adamw_warmup_cosine
from domainfm.shared.tiles.store import TileStore
from domainfm.shared.tiles.stream import TileStream

WEIGHT_DECAY = 0.01  # torch's AdamW default, on every parameter: what the GMS training has always used


def augment_pair(
    images: torch.Tensor, masks: torch.Tensor, generators: Sequence[torch.Generator] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image flips and 90-degree rotations of images and masks alike; intensity jitter of images.

    Args:
        images: Images in [-1, 1] ``[B, C, H, W]``.
        masks: Their masks ``[B, 1, H, W]``.
        generators: One per image (its draws then depend on it only); torch's global generator when ``None``.
    """
    n, device = len(images), images.device
    if generators is None:
        draws = [torch.rand(n, device=device) for _ in range(3)]
        draws += [torch.rand(n, 1, 1, 1, device=device) for _ in range(3)]
    else:
        draws = list(tile_uniforms(generators, 6).T.to(device))
    flips = (lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.rot90(1, (-2, -1)))
    for flip, u in zip(flips, draws[:3], strict=True):
        chosen = (u < 0.5).view(n, 1, 1, 1)
        images, masks = torch.where(chosen, flip(images), images), torch.where(chosen, flip(masks), masks)
    jitter = (draws[3].view(n, 1, 1, 1) < 0.2).float()
    brightness = (draws[4].view(n, 1, 1, 1) - 0.5) * 0.2 * jitter
    contrast = 1 + (draws[5].view(n, 1, 1, 1) - 0.5) * 0.2 * jitter
    return ((images * contrast) + brightness).clamp(-1, 1), masks


def _train_stream(store: TileStore, batch_size: int, seed: int, device: torch.device) -> TileStream:
    return TileStream(store, batch_size, split="train", seed=seed, device=device, normalize=False, companions=("mask",))


def random_shapes(n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` lobulated binary shapes as RGB images in [-1, 1] (``[n, 3, size, size]``)."""
    shapes = np.stack([lesion_mask(rng, size) for _ in range(n)]).astype(np.float32)
    return torch.from_numpy(shapes)[:, None].expand(-1, 3, -1, -1) * 2 - 1


def train_vae(
    store: TileStore,
    config: VAEConfig,
    epochs: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    kl_weight: float = 1e-4,
    shape_fraction: float = 0.5,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> tuple[nn.Module, VAEConfig, dict[str, Any]]:
    """Trains an SD-layout VAE on the store's train images (and random shapes); returns it frozen."""
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = create_vae(config)
    size = store.spec.tile_shape[-1]

    def step(batch: dict) -> torch.Tensor:
        images, _ = augment_pair(to_model_range(batch["tiles"]), batch["mask"])
        shapes = round(shape_fraction * len(images))
        if shapes:
            images = torch.cat([images[shapes:], random_shapes(shapes, size, rng).to(images.device)])
        reconstruction, mean, sigma = vae(images)
        kl = 0.5 * (mean.pow(2) + sigma.pow(2) - 2 * torch.log(sigma) - 1).mean()
        return nn.functional.l1_loss(reconstruction, images) + kl_weight * kl

    task = step_task(step, vae, adamw_warmup_cosine(lr, WEIGHT_DECAY, epochs, 0, decay_vectors=True))
    start = time.perf_counter()
    fit(make_trainer(epochs, torch_device, progress), task, _train_stream(store, batch_size, seed, torch_device))
    vae = freeze(vae.to(torch_device))
    with torch.no_grad():
        stream = TileStream(store, 32, split="train", shuffle=False, device=torch_device, normalize=False)
        latents = torch.cat([encode_mean(vae, to_model_range(b["tiles"]), 1.0).cpu() for b in stream])
    config = VAEConfig.from_dict({**config.to_dict(), "scaling_factor": float(1 / latents.std())})
    history = {"losses": task.losses, "seconds": time.perf_counter() - start, "epochs": epochs}
    return vae.cpu(), config, history


Clock = Callable[[], tuple[int, int]]  # (epoch, optimiser step) of the running trainer


def _posterior_sample(model: GMSSegmenter, images: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """A scaled posterior sample of each image's latent, its noise drawn from the image's own generator."""
    mean, sigma = model.vae.encode(images)
    noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in generators]).to(mean)
    return (mean + sigma * noise) * model.vae_config.scaling_factor


def _gms_step(model: GMSSegmenter, seed: int, clock: Clock) -> Any:
    from monai.losses import DiceLoss

    dice = DiceLoss()

    def step(batch: dict) -> torch.Tensor:
        epoch, done = clock()
        generators = tile_generators(batch["tile_id"], seed, epoch)
        images, masks = augment_pair(to_model_range(batch["tiles"]), batch["mask"].float(), generators)
        sample = bool(torch.rand((), generator=step_generator(seed, epoch, done)) < 0.5)  # the step's choice
        with torch.no_grad():
            target = model.mask_latent(masks)
            latent = _posterior_sample(model, images, generators) if sample else model.image_latent(images)
        outputs = model.mapper(latent)
        return sum(
            nn.functional.mse_loss(outputs[level], target) + dice(model.decode_mask(outputs[level]), masks)
            for level in SUPERVISED_LEVELS
        )

    return step


def _unet_step(model: UNetSegmenter, seed: int, clock: Clock) -> Any:
    from monai.losses import DiceCELoss

    loss = DiceCELoss(sigmoid=True)

    def step(batch: dict) -> torch.Tensor:
        generators = tile_generators(batch["tile_id"], seed, clock()[0])
        images, masks = augment_pair(to_model_range(batch["tiles"]), batch["mask"].float(), generators)
        return loss(model.logits(images), masks)

    return step


def _keep_best(model: nn.Module, store: TileStore, device: torch.device) -> Any:
    """A Lightning callback that scores the val split after each epoch and keeps the best trainable weights.

    Its state (best score, epoch, weights, history) is saved in resume checkpoints. Under several processes
    each scores its part of the val split (the stream divides it) and the image-weighted means are
    all-reduced, so every process sees the score of the whole split (up to ``world - 1`` images that the
    equal division counts twice).
    """
    import lightning

    class KeepBest(lightning.Callback):
        def __init__(self) -> None:
            self.best_dice, self.best_epoch, self.best_state = -1.0, -1, None
            self.history: list[dict[str, float]] = []

        def on_train_epoch_end(self, trainer: Any, _: Any) -> None:
            metrics = evaluate(model, store, "val", device=device)
            model.train()
            if is_distributed():
                n = metrics["images"]
                part = torch.tensor([metrics["dice_mean"] * n, metrics["iou_mean"] * n, n], dtype=torch.float64)
                sums = all_reduce_sum(part.to(device)).cpu()
                metrics = {"dice_mean": float(sums[0] / sums[2]), "iou_mean": float(sums[1] / sums[2])}
            epoch = trainer.current_epoch
            self.history.append({"epoch": epoch, "val_dice": metrics["dice_mean"], "val_iou": metrics["iou_mean"]})
            if metrics["dice_mean"] > self.best_dice:
                self.best_dice, self.best_epoch = metrics["dice_mean"], epoch
                trainable = {n for n, p in model.named_parameters() if p.requires_grad}
                self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in trainable}

        def state_dict(self) -> dict[str, Any]:
            return {k: getattr(self, k) for k in ("best_dice", "best_epoch", "best_state", "history")}

        def load_state_dict(self, state: dict[str, Any]) -> None:
            for key, value in state.items():
                setattr(self, key, value)

    return KeepBest()


def train_segmenter(
    model: nn.Module,
    store: TileStore,
    epochs: int,
    batch_size: int = 8,
    lr: float = 2e-3,
    warmup_epochs: int = 5,
    seed: int = 2333,
    device: str = "auto",
    progress: bool = True,
    resume_dir: Path | None = None,
    *,
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Trains a :class:`GMSSegmenter` or :class:`UNetSegmenter` in place; restores its best val epoch.

    With ``resume_dir``, ``last.ckpt`` there is written after every epoch (weights, optimiser, schedule,
    best-so-far) and a rerun continues from it: a killed run loses at most the epoch it was in. The data
    order after a resume follows the stream's own epoch counter, so it need not repeat the uninterrupted
    run's order batch for batch. With several processes (``devices``, ``num_nodes``; strategy ``ddp``),
    ``batch_size`` is per process and every process scores the val split after each epoch. ``callbacks``
    are added to the Lightning trainer.
    """
    data_parallel_only(strategy, "segmentation train")
    if isinstance(model, GMSSegmenter) and strategy in ("auto", "ddp") and (devices != 1 or num_nodes != 1):
        strategy = "ddp_find_unused_parameters_true"  # the mapper's level-3 head is not supervised
    callbacks = [*(callbacks or [])]
    last = None
    if resume_dir is not None:
        callbacks.append(epoch_checkpoint(Path(resume_dir)))
        last = Path(resume_dir) / "last.ckpt"
    trainer = make_trainer(
        epochs, resolve_device(device), progress, callbacks, devices=devices, strategy=strategy, num_nodes=num_nodes
    )
    torch_device = trainer_device(trainer)
    torch.manual_seed(seed)
    model.to(torch_device)

    def clock() -> tuple[int, int]:
        return trainer.current_epoch, trainer.global_step

    step = _gms_step(model, seed, clock) if isinstance(model, GMSSegmenter) else _unet_step(model, seed, clock)
    task = step_task(step, model, adamw_warmup_cosine(lr, WEIGHT_DECAY, epochs, warmup_epochs, decay_vectors=True))
    keep_best = _keep_best(model, store, torch_device)
    trainer.callbacks.insert(0, keep_best)
    start = time.perf_counter()
    fit(trainer, task, _train_stream(store, batch_size, seed, torch_device), last)
    if keep_best.best_state is not None:
        model.load_state_dict(keep_best.best_state, strict=False)
    return {
        "epochs": epochs,
        "seconds": time.perf_counter() - start,
        "trainable_parameters": trainable_parameters(model),
        "best_epoch": keep_best.best_epoch,
        "best_val_dice": keep_best.best_dice,
        "val_history": keep_best.history,
        "losses": task.losses,
    }


def write_history(history: dict[str, Any], path: Path) -> None:
    """The training history as JSON (losses per step, val Dice per epoch)."""
    path.write_text(json.dumps(history, indent=2))
