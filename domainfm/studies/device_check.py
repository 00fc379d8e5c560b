"""GPU checks in one run: the stream benchmark on the device and short bf16 trainings fed by TileStream.

What a machine with an NVIDIA GPU should show before anyone pretrains on it (issue 9, item 4):

* ``stream``: ``bench stream`` on the device (TileStream samples/s to GPU memory vs a PNG DataLoader and
  the codec's decode limit);
* ``convirt``: ConVIRT (Zhang et al., arXiv 2010.00747) with a ViT-B/16 image tower and the small BERT
  text tower on 224 px phantom radiographs;
* ``simmim``: SimMIM (Xie et al., arXiv 2111.09886) on SwinV2-T with 14-band 128 px phantom MODIS chips,
  as SatVision-TOA pretrains (our SimMIM implementation is SwinV2-only).

Each training runs a few warm-up steps, then ``steps`` timed steps of forward, backward and AdamW under
``torch.autocast(bfloat16)``, and reports samples/s, the fraction of step time spent waiting for the next
batch (time blocked in the stream's ``next`` over the step's wall time; each step ends with the loss read
back, as a logging loop would), and model FLOP utilisation: FLOPs of one training step counted by
``torch.utils.flop_counter`` (model FLOPs, no recomputation) times steps/s over the device's dense bf16
peak (a table of known devices, or ``--peak_tflops``).

Without a CUDA device the command reports that no GPU was found and exits 0; ``--device cpu`` runs the
same code path on the CPU with tiny models (the tests do).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from domainfm.shared.config import PositiveFloat, PositiveInt

# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, SXM parts)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}
WARMUP_STEPS = 3


def device_peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of ``device`` from :data:`PEAK_BF16_TFLOPS`, or ``None`` when unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def step_flops(step: Any, batch: dict) -> int:
    """FLOPs of one training step (forward + backward) on ``batch``, counted by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(batch).backward()
    return int(counter.get_total_flops())


def time_training(
    step: Any, parameters: list, stream: Any, steps: int, device: torch.device, peak_tflops: float | None
) -> dict[str, Any]:
    """Samples/s, data-wait fraction and MFU of ``steps`` AdamW steps of ``step(batch) -> loss`` on ``stream``."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    batches = iter(_forever(stream))
    dtype = torch.bfloat16

    def train_step(batch: dict) -> float:
        with torch.autocast(device.type, dtype=dtype):
            loss = step(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())  # reads the loss back: the step's GPU work is done when this returns

    first = next(batches)
    with torch.autocast(device.type, dtype=dtype):
        flops = step_flops(step, first)
    optimizer.zero_grad(set_to_none=True)
    for _ in range(WARMUP_STEPS):
        train_step(next(batches))
    waited, samples, losses = 0.0, 0, []
    start = time.perf_counter()
    for _ in range(steps):
        before = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - before
        samples += len(batch["tiles"])
        losses.append(train_step(batch))
    seconds = time.perf_counter() - start
    achieved = flops * steps / seconds / 1e12
    return {
        "batch_size": len(first["tiles"]),
        "steps": steps,
        "samples_per_s": round(samples / seconds, 1),
        "data_wait_fraction": round(waited / seconds, 4),
        "step_tflops": round(flops / 1e12, 4),
        "achieved_tflops": round(achieved, 3),
        "mfu": round(achieved / peak_tflops, 4) if peak_tflops else None,
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
    }


def _forever(stream: Any) -> Any:
    while True:
        yield from stream


def convirt_check(
    folder: Path,
    backbone: str,
    size: int,
    images: int,
    batch: int,
    steps: int,
    device: torch.device,
    peak: float | None,
) -> dict[str, Any]:
    """ConVIRT training on phantom radiographs and reports (see the module docstring)."""
    from domainfm.domains.radiology.convirt import convirt_loss
    from domainfm.domains.radiology.data import ingest_studies
    from domainfm.domains.radiology.pretrain import build_model, store_sentences
    from domainfm.domains.radiology.text import SentenceTokenizer, text_options, train_tokenizer
    from domainfm.shared.tiles.store import TileStore
    from domainfm.shared.tiles.stream import TileStream
    from domainfm.studies.radiology.phantom import write_phantom

    write_phantom(folder / "phantom", n=images, size=size, seed=0)
    store_path = folder / "radiology.zarr"
    phantom = folder / "phantom"
    summary, _ = ingest_studies(phantom / "images", phantom / "reports.csv", store_path, size, progress=False)
    if not summary.ok:
        raise RuntimeError(summary.report())
    store = TileStore(store_path)
    options = text_options(None)
    tokenizer = SentenceTokenizer(
        train_tokenizer(store_sentences(store), folder / "tokenizer.json", options["vocab_size"]),
        options["max_length"],
    )
    meta = {"backbone": backbone, "image_size": size, "text": options, "projection_dim": 512}
    model = build_model(meta, tokenizer).to(device).train()

    def step(batch: dict) -> torch.Tensor:
        sentences = [s.split("\n")[0] for s in batch["sentences"]]
        tokens = {k: v.to(device) for k, v in tokenizer(sentences).items()}
        v, u = model(batch["tiles"], **tokens)
        return convirt_loss(v, u)

    stream = TileStream(store, batch, device=device, seed=0, companions=("sentences",), drop_last=True)
    return {"backbone": backbone, "image_size": size, **time_training(step, list(model.parameters()), stream, steps,
                                                                         device, peak)}  # fmt: skip


def simmim_check(
    folder: Path,
    backbone: str,
    chip: int,
    granules: int,
    batch: int,
    steps: int,
    device: torch.device,
    peak: float | None,
) -> dict[str, Any]:
    """SimMIM training on phantom MODIS chips (see the module docstring)."""
    from domainfm.domains.remote_sensing.data import ingest_chips
    from domainfm.domains.remote_sensing.simmim import MaskGenerator, SimMIM
    from domainfm.shared.backbones import create_backbone
    from domainfm.shared.tiles.store import TileStore
    from domainfm.shared.tiles.stream import TileStream
    from domainfm.studies.remote_sensing.phantom import write_granule, write_phantom_splits

    paths = [write_granule(folder / f"granule_{i}.hdf", (chip * 4, chip * 4), seed=i) for i in range(granules)]
    store_path = folder / "chips.zarr"
    splits = write_phantom_splits(paths, folder / "splits.csv")
    summary = ingest_chips(paths, store_path, chip=chip, min_valid=0.5, progress=False, splits=splits)
    if not summary.ok:
        raise RuntimeError(summary.report())
    store = TileStore(store_path)
    channels = store.spec.tile_shape[0]
    model = SimMIM(create_backbone(backbone, in_chans=channels, img_size=chip), chip).to(device).train()
    masks = MaskGenerator(chip, 8 if chip >= 64 else 4, model.patch_size, 0.6)
    generator = torch.Generator().manual_seed(0)

    def step(batch: dict) -> torch.Tensor:
        return model(batch["tiles"].float(), masks(len(batch["tiles"]), generator).to(device), batch["valid"])

    stream = TileStream(store, batch, device=device, seed=0, normalize=False, companions=("valid",), drop_last=True)
    return {"backbone": backbone, "chip": chip, "chips": len(store.index["split"]),
            **time_training(step, list(model.parameters()), stream, steps, device, peak)}  # fmt: skip


def run_device_check(
    folder: Path,
    device: torch.device,
    tiny: bool,
    steps: int,
    stream_tiles: int,
    peak_tflops: float | None,
) -> dict[str, Any]:
    """Every check on ``device``; ``tiny`` swaps in test backbones and small data (CPU runs)."""
    from domainfm.studies.shared.tiles.bench import run_stream_benchmark

    peak = peak_tflops or device_peak_tflops(device)
    results: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "device": str(device),
        "torch": torch.__version__,
        "peak_bf16_tflops": peak,
    }
    stream_folder = folder / "stream"
    stream_folder.mkdir()
    results["stream"] = run_stream_benchmark(stream_tiles, 256, str(device), min(stream_tiles, 2000), stream_folder, 1)
    image, swin = ("test_vit", "test_swinv2") if tiny else ("vit_base_patch16_224", "swinv2_tiny_window8_256")
    (folder / "convirt").mkdir()
    results["convirt"] = convirt_check(
        folder / "convirt", image, 32 if tiny else 224, 16 if tiny else 256, 4 if tiny else 64, steps, device, peak
    )
    (folder / "simmim").mkdir()
    results["simmim"] = simmim_check(
        folder / "simmim", swin, 32 if tiny else 128, 2 if tiny else 8, 4 if tiny else 64, steps, device, peak
    )
    return results


def bench_gpu(
    device: str = "auto",
    steps: PositiveInt = 20,
    stream_tiles: PositiveInt = 20000,
    peak_tflops: PositiveFloat | None = None,
    workdir: Path | None = None,
    json: bool = False,
) -> int:
    """GPU checks: stream benchmark on the device, bf16 ConVIRT (ViT-B) and SimMIM (SwinV2) training speed and MFU.

    Args:
        device: ``auto`` (the first CUDA device; reports and exits 0 when there is none), ``cuda[:N]``, or
            ``cpu`` (the same checks with tiny models and data, to test the code path).
        steps: Timed training steps per model (after warm-up).
        stream_tiles: Tiles in the stream benchmark's store.
        peak_tflops: The device's dense bf16 peak, when it is not in the built-in table.
        workdir: Where to build the data (a temporary folder when unset).
        json: Print JSON.
    """
    import json as json_module

    from domainfm.shared.engine import resolve_device
    from domainfm.shared.report import run_benchmark

    if device == "auto" and not torch.cuda.is_available():
        message = (
            "no CUDA GPU found: the device checks need an NVIDIA GPU (run with --device cpu to test the code path)"
        )
        print(json_module.dumps({"gpu": None, "message": message}) if json else message)
        return 0
    torch_device = resolve_device(device)
    tiny = torch_device.type != "cuda"

    def measure(folder: Path) -> dict[str, Any]:
        return run_device_check(folder, torch_device, tiny, steps, min(stream_tiles, 512) if tiny else stream_tiles,
                                peak_tflops)  # fmt: skip

    return run_benchmark(measure, workdir, "domainfm-gpu-check-", json)
