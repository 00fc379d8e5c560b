"""``domainfm radiology ...``: ingest, pretrain, train and eval.

ConVIRT (Zhang et al., "Contrastive Learning of Medical Visual Representations from Paired Images and
Text", MLHC 2022, arXiv 2010.00747). Every command saves its resolved config beside its outputs.

The group's study verbs (phantom, study) are in :mod:`domainfm.studies.radiology.commands`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from domainfm.shared.config import (
    Fraction,
    HoldOutFraction,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Probability,
    Seed,
)


def ingest(
    images: Path,
    out: Path,
    reports: Path | None = None,
    size: PositiveInt = 224,
    labels: Path | None = None,
    splits: Path | None = None,
    study_from: Literal["stem", "parent"] = "stem",
    allow_unpaired: bool = False,
    val_fraction: HoldOutFraction = 0.15,
    test_fraction: HoldOutFraction = 0.15,
    workers: PositiveInt = 2,
    scheduler: str | None = None,
    processes: bool = False,
    overwrite: bool = False,
) -> int:
    """Ingest DICOM/PNG/JPEG radiographs with their reports and/or labels into a tile store.

    With --reports the store serves ConVIRT pretraining; with --labels alone it serves `radiology train` and
    `radiology eval probe|knn|finetune`.

    Args:
        images: Folder of radiographs (searched recursively).
        out: Store folder.
        reports: Reports: a CSV/JSONL (a study id column and findings/impression or report/text; any case),
            an Open-i XML file, a .txt report, or a folder of them in any mix.
        size: Side of the stored square (aspect kept, padded black).
        labels: Image labels: a CSV (NIH ``Image Index`` + ``Finding Labels``, or an image/study column and
            one 0/1 column per label), a COCO JSON, or a folder of class subfolders (may be --images itself).
        splits: CSV assigning groups to splits (a patient, study or image column and ``split``); else a
            stable hash of the patient (DICOM PatientID or the labels' patient column), or of the study.
        study_from: Study id of an image: its file ``stem``, or its ``parent`` folder name (MIMIC-CXR).
        allow_unpaired: Ingest the pairs even if some images, reports or label rows have no partner
            (listed and recorded).
        val_fraction: Fraction of groups in the val split (stable hash of the group key).
        test_fraction: Fraction of groups in the test split.
        workers: Local parallel tasks.
        scheduler: A dask.distributed scheduler address; local when unset.
        processes: Local processes instead of threads.
        overwrite: Replace an existing store of other sources.
    """
    from domainfm.domains.radiology.data import ingest_studies

    summary, pairing = ingest_studies(
        Path(images), Path(reports) if reports else None, Path(out), size, Path(labels) if labels else None,
        study_from, allow_unpaired, val_fraction, test_fraction, workers, scheduler, processes, overwrite,
        splits=Path(splits) if splits else None,
    )  # fmt: skip
    if not pairing.complete or pairing.skipped_files:
        print(pairing.report())
    print(summary.report())
    return 0 if summary.ok else 1


def pretrain(
    store: Path,
    out: Path,
    backbone: str = "test_resnet",
    image_checkpoint: Path | None = None,
    text: dict[str, Any] | None = None,
    projection_dim: PositiveInt = 512,
    tau: PositiveFloat = 0.1,
    lam: Probability = 0.75,
    epochs: PositiveInt = 10,
    batch_size: PositiveInt = 32,
    lr: PositiveFloat = 1e-4,
    weight_decay: NonNegativeFloat = 1e-6,
    hflip: Probability = 0.5,
    augment_strength: NonNegativeFloat = 1.0,
    seed: Seed = 0,
    device: str = "auto",
    devices: int | str = 1,
    strategy: str = "auto",
    num_nodes: PositiveInt = 1,
) -> int:
    """ConVIRT pretraining (bidirectional InfoNCE of radiographs and report sentences); writes OUT/convirt.safetensors.

    A killed run resumes from OUT/resume/last.ckpt when rerun with the same command. With several processes
    the negatives are the pairs of every process (docs/distributed.md).

    Args:
        store: A radiology tile store (train split).
        out: Output folder.
        backbone: Image tower from the shared registry (the paper: resnet50).
        image_checkpoint: Local weights for the image tower (e.g. ImageNet ResNet-50); random when unset. A
            converted foundation checkpoint (``domainfm models convert``) replaces ``backbone`` by its own
            architecture, and its transform record (grey replicated to its channels, its mean/std) is used.
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
    from domainfm.shared.outputs import run_folder

    with run_folder(Path(out), lead=is_launch_zero()):  # one run per folder; never a folder of other files
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
    label_fraction: Fraction = 1.0,
    epochs: PositiveInt = 10,
    batch_size: PositiveInt = 32,
    lr: PositiveFloat = 1e-4,
    seed: Seed = 0,
    device: str = "auto",
    json: bool = False,
    text_model: Path | None = None,
) -> int:
    """Train a multi-label radiograph classifier (ConVIRT image tower + linear head, any PEFT method).

    Writes OUT/classifier.safetensors: what `domainfm export bundle` and `domainfm explain` take.

    Args:
        store: A radiology store ingested with --labels.
        out: Output folder.
        checkpoint: A ConVIRT checkpoint (`radiology pretrain`) or a converted foundation checkpoint
            (`domainfm models convert`); a random image tower when unset.
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
        text_model: The local Hugging Face folder of the checkpoint's text tower, when it was pretrained
            from one kept outside the checkpoint's folder (a checkpoint never chooses folders to read).
    """
    import json as json_module

    from domainfm.domains.radiology.classifier import train_classifier
    from domainfm.shared.outputs import run_folder

    with run_folder(Path(out)):  # one run per folder; never a folder of other files
        result = train_classifier(
            Path(store), Path(out), Path(checkpoint) if checkpoint else None, backbone, peft, peft_options,
            label_fraction, epochs, batch_size, lr, seed, device, progress=not json, text_model=text_model,
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
    k: list[PositiveInt] = [5, 10, 50],  # noqa: B006
    fractions: list[Fraction] = [0.01, 0.1, 1.0],  # noqa: B006
    neighbours: PositiveInt = 10,
    finetune_epochs: PositiveInt = 10,
    seed: Seed = 0,
    device: str = "auto",
    tokenizer: Path | None = None,
    json: bool = False,
    text_model: Path | None = None,
) -> int:
    """Evaluate a ConVIRT checkpoint: retrieval Precision@k, or a linear/kNN probe at label fractions.

    Args:
        task: ``retrieval`` (CheXpert 8x200 layout CSVs), ``probe`` (linear), ``knn`` or ``finetune`` (full).
        checkpoint: A checkpoint from ``radiology pretrain``; for probe/knn/finetune also a converted
            foundation checkpoint (``domainfm models convert``), evaluated directly against its random init.
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
        tokenizer: For zero-shot retrieval with a converted CLIP checkpoint (BiomedCLIP): its tokenizer
            (``tokenizer.json`` or the folder holding the model's tokenizer files).
        json: Print JSON.
        text_model: The local Hugging Face folder of a ConVIRT checkpoint's text tower, when it was
            pretrained from one kept outside the checkpoint's folder (a checkpoint never chooses folders to read).
    """
    import json as json_module

    from domainfm.domains.radiology.clip import has_text_tower, load_clip
    from domainfm.domains.radiology.evaluate import probe, retrieval
    from domainfm.domains.radiology.pretrain import foundation_image_encoder, load_convirt
    from domainfm.shared.errors import DomainfmError
    from domainfm.shared.model.encoders import is_foundation_checkpoint
    from domainfm.shared.report import markdown_table
    from domainfm.shared.tiles.store import TileStore

    if is_foundation_checkpoint(checkpoint) and task == "retrieval":
        if not has_text_tower(Path(checkpoint)):
            raise DomainfmError(
                f"{checkpoint} is a converted image encoder without a text tower: retrieval needs a ConVIRT "
                "checkpoint (start one from it with `radiology pretrain --image_checkpoint`) or a CLIP model"
            )
        if tokenizer is None:
            raise DomainfmError(f"zero-shot retrieval with {checkpoint} needs --tokenizer (the model's own tokenizer)")
        model, text_tokenizer, meta = load_clip(Path(checkpoint), Path(tokenizer))
    elif is_foundation_checkpoint(checkpoint):
        model, meta = foundation_image_encoder(Path(checkpoint))
        text_tokenizer = None
    else:
        model, text_tokenizer, meta = load_convirt(Path(checkpoint), text_model)
    if task == "retrieval":
        if candidates is None or (image_queries is None and text_queries is None):
            raise DomainfmError("retrieval needs --candidates and --image_queries and/or --text_queries CSVs")
        result: Any = retrieval(
            model, text_tokenizer, meta, candidates, image_queries, text_queries, tuple(k), device, image_root
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
