"""``domainfm radiology ...``: phantom, ingest, pretrain, eval and study.

ConVIRT (Zhang et al., "Contrastive Learning of Medical Visual Representations from Paired Images and
Text", MLHC 2022, arXiv 2010.00747). Every command saves its resolved config beside its outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal


def phantom(
    out: Path,
    n: int = 400,
    size: int = 128,
    seed: int = 0,
    dicom_fraction: float = 0.5,
    retrieval_per_category: int = 20,
) -> int:
    """Write phantom chest radiographs (DICOM and PNG) with reports and labels, plus a retrieval benchmark.

    Args:
        out: Output folder (``images/``, ``reports.csv``, ``labels.csv``, ``retrieval/``).
        n: Studies.
        size: Image side in pixels.
        seed: Random seed.
        dicom_fraction: Fraction of images written as DICOM (a third of those MONOCHROME1).
        retrieval_per_category: Candidate images per category in ``retrieval/`` (5 image and 5 text queries each).
    """
    from domainfm.domains.radiology.phantom import write_phantom, write_retrieval_set

    written = write_phantom(Path(out), n, size, seed, dicom_fraction)
    files = write_retrieval_set(Path(out) / "retrieval", retrieval_per_category, 5, size, seed + 1)
    print(f"{n} studies in {written['images']}; prevalence {written['prevalence']}; retrieval set {files['candidate']}")
    return 0


def ingest(
    images: Path,
    reports: Path,
    out: Path,
    size: int = 224,
    labels: Path | None = None,
    study_from: Literal["stem", "parent"] = "stem",
    allow_unpaired: bool = False,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    workers: int = 2,
    scheduler: str | None = None,
    processes: bool = False,
    overwrite: bool = False,
) -> int:
    """Ingest DICOM/PNG/JPEG radiographs with their reports (CSV, JSONL or Open-i XML) into a tile store.

    Args:
        images: Folder of radiographs (searched recursively).
        reports: Reports: a CSV/JSONL (study_id, findings, impression), an Open-i XML file or a folder of them.
        out: Store folder.
        size: Side of the stored square (aspect kept, padded black).
        labels: Optional CSV of study_id and 0/1 label columns (for probes).
        study_from: Study id of an image: its file ``stem``, or its ``parent`` folder name (MIMIC-CXR).
        allow_unpaired: Ingest the pairs even if some images or reports have no partner (listed and recorded).
        val_fraction: Fraction of studies in the val split (stable hash of the study id).
        test_fraction: Fraction of studies in the test split.
        workers: Local parallel tasks.
        scheduler: A dask.distributed scheduler address; local when unset.
        processes: Local processes instead of threads.
        overwrite: Replace an existing store of other sources.
    """
    from domainfm.domains.radiology.data import ingest_studies

    summary, pairing = ingest_studies(
        Path(images), Path(reports), Path(out), size, Path(labels) if labels else None, study_from, allow_unpaired,
        val_fraction, test_fraction, workers, scheduler, processes, overwrite,
    )  # fmt: skip
    if not pairing.complete:
        print(pairing.report())
    print(summary.report())
    return 0 if summary.ok else 1


def pretrain(
    store: Path,
    out: Path,
    backbone: str = "test_resnet",
    image_checkpoint: Path | None = None,
    text: dict[str, Any] | None = None,
    projection_dim: int = 512,
    tau: float = 0.1,
    lam: float = 0.75,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-4,
    weight_decay: float = 1e-6,
    hflip: float = 0.5,
    augment_strength: float = 1.0,
    seed: int = 0,
    device: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
) -> int:
    """ConVIRT pretraining (bidirectional InfoNCE of radiographs and report sentences); writes OUT/convirt.safetensors.

    A killed run resumes from OUT/resume/last.ckpt when rerun with the same command. With several processes
    the negatives are the pairs of every process (docs/distributed.md).

    Args:
        store: A radiology tile store (train split).
        out: Output folder.
        backbone: Image tower from the shared registry (the paper: resnet50).
        image_checkpoint: Local weights for the image tower (e.g. ImageNet ResNet-50); random when unset.
        text: Text tower: local_model (a local HF folder, e.g. ClinicalBERT), or hidden, layers, heads,
            intermediate, vocab_size for the default small BERT; max_length, pooling, frozen_layers.
        projection_dim: Output size of both projection heads (the paper: 512).
        tau: Temperature (the paper: 0.1).
        lam: Weight of the image->text direction (the paper: 0.75).
        epochs: Training epochs.
        batch_size: Pairs per step and process (the paper: 32 on one GPU).
        lr: Adam learning rate (the paper: 1e-4).
        weight_decay: Adam weight decay (the paper: 1e-6).
        hflip: Horizontal-flip probability (the paper: 0.5; flipping swaps the sides a report names).
        augment_strength: Scales the ranges of crop, affine, jitter and blur (1: the paper's).
        seed: Random seed.
        device: ``auto``, ``cpu`` or ``cuda[:N]`` (the kind of device when ``devices`` > 1).
        devices: Processes (devices) per machine: a count, or ``auto`` for every GPU.
        strategy: ``auto`` (one device, else DDP) or ``ddp``.
        num_nodes: Machines (launch with torchrun or SLURM; docs/distributed.md).
    """
    from domainfm.domains.radiology.pretrain import pretrain as run
    from domainfm.shared.config import save_resolved_config
    from domainfm.shared.engine.distributed import is_launch_zero

    Path(out).mkdir(parents=True, exist_ok=True)
    if is_launch_zero():
        save_resolved_config(Path(out))
    result = run(
        Path(store), Path(out), backbone, Path(image_checkpoint) if image_checkpoint else None, text,
        projection_dim, tau, lam, epochs, batch_size, lr, weight_decay, hflip, seed, device,
        augment_strength=augment_strength, devices=devices, strategy=strategy, num_nodes=num_nodes,
    )  # fmt: skip
    losses = result["losses"]
    if is_launch_zero():
        print(f"wrote {result['checkpoint']}: loss {losses[0]:.3f} -> {losses[-1]:.3f} in {result['seconds']:.0f} s")
    return 0


def train(
    store: Path,
    out: Path,
    checkpoint: Path | None = None,
    backbone: str = "test_resnet",
    peft: str = "full",
    peft_options: dict[str, Any] | None = None,
    label_fraction: float = 1.0,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-4,
    seed: int = 0,
    device: str = "auto",
    json: bool = False,
) -> int:
    """Train a multi-label radiograph classifier (ConVIRT image tower + linear head, any PEFT method).

    Writes OUT/classifier.safetensors: what `domainfm export bundle` and `domainfm explain` take.

    Args:
        store: A radiology store ingested with --labels.
        out: Output folder.
        checkpoint: A ConVIRT checkpoint (`radiology pretrain`); a random image tower when unset.
        backbone: Image tower when no checkpoint is given.
        peft: A shared PEFT method: full, linear (frozen tower), bitfit, lora, dvpt, ...
        peft_options: The method's options.
        label_fraction: Fraction of the labelled train images used.
        epochs: Training epochs.
        batch_size: Images per step.
        lr: AdamW learning rate.
        seed: Random seed (also picks the labelled images).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        json: Print JSON.
    """
    import json as json_module

    from domainfm.domains.radiology.classifier import train_classifier

    result = train_classifier(
        Path(store), Path(out), Path(checkpoint) if checkpoint else None, backbone, peft, peft_options, label_fraction,
        epochs, batch_size, lr, seed, device, progress=not json,
    )  # fmt: skip
    print(json_module.dumps(result, indent=2) if json else ", ".join(f"{k} {v}" for k, v in result.items()))
    return 0


def evaluate(
    task: Literal["retrieval", "probe", "knn", "finetune"],
    /,
    checkpoint: Path,
    store: Path | None = None,
    candidates: Path | None = None,
    image_queries: Path | None = None,
    text_queries: Path | None = None,
    image_root: Path | None = None,
    k: list[int] = [5, 10, 50],  # noqa: B006
    fractions: list[float] = [0.01, 0.1, 1.0],  # noqa: B006
    neighbours: int = 10,
    finetune_epochs: int = 10,
    seed: int = 0,
    device: str = "auto",
    json: bool = False,
) -> int:
    """Evaluate a ConVIRT checkpoint: retrieval Precision@k, or a linear/kNN probe at label fractions.

    Args:
        task: ``retrieval`` (CheXpert 8x200 layout CSVs), ``probe`` (linear), ``knn`` or ``finetune`` (full).
        checkpoint: A checkpoint from ``radiology pretrain``.
        store: For probe/knn: a store ingested with --labels (train split trains, test split scores).
        candidates: For retrieval: candidate CSV (Path + one 0/1 column per category).
        image_queries: For retrieval: image query CSV (Variable, Path).
        text_queries: For retrieval: text query CSV (Variable, Text).
        image_root: For retrieval: folder that relative image paths start from (default: each CSV's folder).
        k: Precision@k cut-offs.
        fractions: Label fractions of the train split for probes.
        neighbours: k of the kNN probe.
        finetune_epochs: Epochs of each full fine-tune.
        seed: Seed of the label subsets and of the random-init baseline.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        json: Print JSON.
    """
    import json as json_module

    from domainfm.domains.radiology.evaluate import probe, retrieval
    from domainfm.domains.radiology.pretrain import load_convirt
    from domainfm.shared.errors import DomainfmError
    from domainfm.shared.report import markdown_table
    from domainfm.shared.tiles.store import TileStore

    model, tokenizer, meta = load_convirt(Path(checkpoint))
    if task == "retrieval":
        if candidates is None or (image_queries is None and text_queries is None):
            raise DomainfmError("retrieval needs --candidates and --image_queries and/or --text_queries CSVs")
        result: Any = retrieval(
            model, tokenizer, meta, candidates, image_queries, text_queries, tuple(k), device, image_root
        )
        text = (
            "\n".join(
                f"{direction}: " + ", ".join(f"P@{c} {result[direction][f'precision_at_{c}']:.3f}" for c in k)
                for direction in ("image_to_image", "text_to_image")
                if direction in result
            )
            + f"\nchance {result['chance']:.3f} over {result['candidates']} candidates"
        )
    else:
        if store is None:
            raise DomainfmError(f"{task} needs --store (a store ingested with --labels)")
        method = "linear" if task == "probe" else task
        result = probe(
            model, meta, TileStore(store), tuple(fractions), method, neighbours, seed, device, finetune_epochs
        )
        text = markdown_table(result)
    print(json_module.dumps(result, indent=2) if json else text)
    return 0


def study(
    out: Path,
    n: int = 400,
    size: int = 64,
    backbone: str = "test_resnet",
    text: dict[str, Any] | None = None,
    epochs: int = 60,
    batch_size: int = 32,
    lr: float = 3e-4,
    hflip: float = 0.0,
    augment_strength: float = 0.5,
    seed: int = 0,
    device: str = "auto",
) -> int:
    """The phantom study: pretrain ConVIRT, then retrieval and probes at 1/10/100 % labels against random init.

    Args:
        out: Output folder (phantom, store, checkpoint, results.json, results.md).
        n: Phantom studies.
        size: Stored image side.
        backbone: Image tower.
        text: Text-tower options.
        epochs: Pretraining epochs.
        batch_size: Pretraining batch.
        lr: Adam learning rate.
        hflip: Horizontal-flip probability (0: the phantom reports name sides).
        augment_strength: Scale of the paper's augmentation ranges.
        seed: Random seed.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
    """
    from domainfm.domains.radiology.workflow import run_study
    from domainfm.shared.config import save_resolved_config

    Path(out).mkdir(parents=True, exist_ok=True)
    save_resolved_config(Path(out))
    run_study(
        Path(out),
        n,
        size,
        backbone,
        text,
        epochs,
        batch_size,
        lr,
        hflip,
        seed,
        device,
        augment_strength=augment_strength,
    )
    print((Path(out) / "results.md").read_text())
    return 0
