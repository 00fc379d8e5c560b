"""DDP equivalence: one step of every domain's pretraining over 2 CPU processes equals one process.

Each test builds a small store of the domain's phantom through the domain's ingest, keeps exactly one
global batch of tiles in the train split, and runs the domain's real training entry point twice for one
epoch (so one optimiser step): under ``torchrun --nproc_per_node 2`` with Lightning's DDP strategy on
the CPU (gloo; each process reads half of the train split from the tile store, batch ``B / 2``), and in
this process alone (batch ``B``). ``ddp_worker.py`` records each process's gradients after DDP's
all-reduce, its loss and the tile ids it read.

Identical inputs: the real code draws every tile's crops, masks, flips, sentence choice and posterior noise
from a generator seeded by (seed, epoch, tile id), so the inputs do not depend on the process; dropout and
stochastic depth (torch's global generator, reseeded per process on purpose) are set to zero in both runs
by the recorder. BatchNorm: the models here have none (ConVIRT's image tower is ``test_vit``, not the
ResNet, because ``SyncBatchNorm``, which the GPU trainer turns on, does not run on the CPU).

The checks: the two processes read disjoint halves whose union is the single process's batch; the
gradients match the single process's within ``atol 1e-5, rtol 1e-4``; the mean of the two processes'
losses equals the single loss; and two controls with a helper replaced by its per-process form (ConVIRT
without gathering the negatives, PLUTO centres from the local batch) give clearly different gradients.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import zarr

from domainfm.shared.tiles.schema import SPLITS

WORKER = Path(__file__).with_name("ddp_worker.py")
GLOBAL_BATCH = 8
ATOL, RTOL = 1e-5, 1e-4


def load_worker() -> ModuleType:
    """``ddp_worker.py`` imported by path (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def keep_one_batch_in_train(store: Path, n: int = GLOBAL_BATCH, rest: str = "test") -> np.ndarray:
    """Puts the first ``n`` tiles in the train split and the others in ``rest``; returns the train ids.

    Pretraining reads every tile outside test, so the others go to test; a supervised segmenter reads the
    train split and checks val, so there they go to val.
    """
    split = zarr.open_group(store, mode="r+")["index/split"]
    values = np.full(split.shape, SPLITS[rest], dtype=split.dtype)
    assert len(values) > n, f"{store} has {len(values)} tiles; the test needs more than {n}"
    values[:n] = SPLITS["train"]
    split[:] = values
    return np.arange(n)


def run_both(domain: str, store: Path, root: Path, variants: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """The single-process record, the DDP records, and the DDP records of each variant (by name).

    Radiology: the DDP run trains its tokenizer (rank zero's is shared with rank one when training starts,
    as WordPiece training differs between processes); the other runs reuse the one rank zero wrote, so a
    process that kept its own vocabulary would fail the comparison.
    """
    runs = [{"domain": domain, "store": str(store), "out": str(root / "ddp"), "record": str(root / "ddp_rec"),
             "batch_size": GLOBAL_BATCH // 2, "variant": None}]  # fmt: skip
    later = {"tokenizer": str(root / "ddp" / "tokenizer.json")} if domain == "radiology" else {}
    runs += [
        {**runs[0], **later, "out": str(root / v), "record": str(root / f"{v}_rec"), "variant": v} for v in variants
    ]
    spec = root / "spec.json"
    spec.write_text(json.dumps({"runs": runs}))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([*command, str(WORKER), str(spec)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    load_worker().run({**runs[0], **later, "out": str(root / "single"), "record": str(root / "single_rec"),
                       "batch_size": GLOBAL_BATCH})  # fmt: skip
    records = {"single": [read(root / "single_rec" / "rank0.pt")]}
    for name in ("ddp", *variants):
        records[name] = [read(root / f"{name}_rec" / f"rank{r}.pt") for r in range(2)]
    return records


def read(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def max_relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest ``max|a - b| / max|b|`` over the parameters (0 when every gradient is equal)."""
    return max(float((a[n] - b[n]).abs().max() / b[n].abs().max().clamp_min(1e-12)) for n in b)


def check_equivalence(records: dict[str, list[dict]], train_ids: np.ndarray, unsupervised: str = "") -> None:
    """The tiles, losses and gradients of the DDP step equal those of the single-process step.

    Every trainable parameter must have a gradient (DDP's default reducer needs it for the next step),
    except those starting with ``unsupervised`` (a head the loss does not use).
    """
    (single,), (rank0, rank1) = records["single"], records["ddp"]
    assert rank0["world"] == rank1["world"] == 2 and single["world"] == 1
    assert len(rank0["tile_ids"]) == len(rank1["tile_ids"]) == GLOBAL_BATCH // 2
    assert not set(rank0["tile_ids"]) & set(rank1["tile_ids"])
    assert set(rank0["tile_ids"]) | set(rank1["tile_ids"]) == set(single["tile_ids"]) == set(train_ids.tolist())
    assert (rank0["loss"] + rank1["loss"]) / 2 == pytest.approx(single["loss"], rel=RTOL, abs=ATOL)
    grads = single["grads"]
    missing = set(single["trainable"]) - set(grads)
    assert grads and set(grads) <= set(single["trainable"])
    assert all(unsupervised and name.startswith(unsupervised) for name in missing), sorted(missing)
    assert set(rank0["grads"]) == set(rank1["grads"]) == set(grads)
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    for name, expected in grads.items():
        torch.testing.assert_close(
            rank0["grads"][name], expected, atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"{n}: {m}"
        )
        torch.testing.assert_close(rank1["grads"][name], rank0["grads"][name], atol=0, rtol=0)  # DDP averaged


def test_convirt_step_over_two_processes_equals_one_process_and_needs_the_gathered_negatives(tmp_path: Path):
    from domainfm.domains.radiology.data import ingest_studies
    from domainfm.studies.radiology.phantom import write_phantom

    write_phantom(tmp_path / "phantom", n=16, size=32, seed=0, dicom_fraction=0.0)
    store = tmp_path / "studies.zarr"
    summary, _ = ingest_studies(tmp_path / "phantom" / "images", tmp_path / "phantom" / "reports.csv", store, 32,
                                workers=1, progress=False)  # fmt: skip
    assert summary.ok, summary.report()
    train = keep_one_batch_in_train(store)
    records = run_both("radiology", store, tmp_path, variants=("local_negatives",))
    check_equivalence(records, train)
    (single,), (local, _) = records["single"], records["local_negatives"]
    assert local["loss"] < single["loss"] - 0.1  # 3 negatives per pair instead of 7: an easier task
    assert max_relative_difference(local["grads"], single["grads"]) > 0.05


def test_pluto_step_over_two_processes_equals_one_process_and_needs_the_global_centre(tmp_path: Path):
    from domainfm.domains.pathology.tiling import TilingParams, tile_slides
    from domainfm.studies.pathology.phantom import write_phantom_slide

    slide = write_phantom_slide(tmp_path / "s0.svs", size=512, seed=0, mpp=0.5).path
    store = tmp_path / "tiles.zarr"
    summary = tile_slides([slide], store, TilingParams((0.5,), 32), workers=1, progress=False)
    assert summary.ok, summary.report()
    train = keep_one_batch_in_train(store)
    records = run_both("pathology", store, tmp_path, variants=("local_centre",))
    check_equivalence(records, train)
    (single,), (local, _) = records["single"], records["local_centre"]
    assert max_relative_difference(local["grads"], single["grads"]) > 0.05


def test_simmim_step_over_two_processes_equals_one_process(tmp_path: Path):
    from domainfm.domains.remote_sensing.data import ingest_chips
    from domainfm.studies.remote_sensing.phantom import write_granule

    granule = write_granule(tmp_path / "MOD021KM.A0.hdf", (128, 128), seed=0)
    store = tmp_path / "chips.zarr"
    summary = ingest_chips([granule], store, chip=32, workers=1, progress=False)
    assert summary.ok, summary.report()
    train = keep_one_batch_in_train(store)
    check_equivalence(run_both("remote_sensing", store, tmp_path), train)


def test_gms_step_over_two_processes_equals_one_process(tmp_path: Path):
    from domainfm.domains.segmentation.data import ingest_pairs
    from domainfm.studies.segmentation.phantom import write_phantom

    write_phantom(tmp_path / "phantom", n=12, size=32, seed=0, sites=("site_a",))
    site = tmp_path / "phantom" / "site_a"
    store = tmp_path / "pairs.zarr"
    summary, _ = ingest_pairs(site / "images", site / "masks", store, 32, workers=1, progress=False)
    assert summary.ok, summary.report()
    train = keep_one_batch_in_train(store, rest="val")
    check_equivalence(run_both("segmentation", store, tmp_path), train, unsupervised="mapper.heads.level3.")
