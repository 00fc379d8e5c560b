"""Phantom chest radiographs with findings at known sites, and reports written from varied templates.

For ConVIRT (Zhang et al., "Contrastive Learning of Medical Visual Representations from Paired Images and
Text", MLHC 2022, arXiv 2010.00747) the image and its report must agree, so each phantom study draws its
findings first, then renders them into the image and writes them into the report:

* anatomy: a bright body, two dark lung fields, a heart shadow, diaphragm domes, rib shadows; patient
  size, position and tilt, exposure (gamma) and noise vary per study;
* findings (0-2 per study): ``cardiomegaly`` (wide heart), ``effusion`` (bright meniscus at a lung base),
  ``nodule`` (small bright round spot), ``pneumothorax`` (very dark rim without lung markings and a pleural
  line), ``consolidation`` (bright patchy area in one lung zone); no finding = ``normal``;
* reports: findings and impression sections from several phrasings per finding and side, plus negatives.

Images are written as DICOM (16-bit, with rescale slope/intercept and a VOI window; a third of them
MONOCHROME1, i.e. stored inverted, as some CR systems do) or PNG, with ``reports.csv`` and ``labels.csv``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

FINDINGS = ("cardiomegaly", "effusion", "nodule", "pneumothorax", "consolidation")
LABELS = (*FINDINGS, "normal")
SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")

POSITIVE = {
    "cardiomegaly": [
        "The cardiac silhouette is enlarged.",
        "There is cardiomegaly.",
        "Heart size is enlarged.",
        "Moderate enlargement of the cardiac silhouette.",
    ],
    "effusion": [
        "There is a {side} pleural effusion.",
        "Blunting of the {side} costophrenic angle consistent with a small effusion.",
        "A {side} sided pleural effusion is present.",
        "Small {side} effusion layering at the base.",
    ],
    "nodule": [
        "A nodule is seen in the {side} {zone} zone.",
        "There is a small rounded opacity in the {side} {zone} lung, likely a nodule.",
        "A {side} {zone} pulmonary nodule is noted.",
    ],
    "pneumothorax": [
        "There is a {side} pneumothorax.",
        "A {side} apical pneumothorax is identified with a visible pleural line.",
        "Small {side} pneumothorax without tension.",
    ],
    "consolidation": [
        "Consolidation in the {side} {zone} zone.",
        "There is airspace opacity in the {side} {zone} lung concerning for pneumonia.",
        "Patchy {side} {zone} consolidation is present.",
    ],
}
NEGATIVE = {
    "cardiomegaly": ["Heart size is normal.", "The cardiomediastinal silhouette is within normal limits."],
    "effusion": ["No pleural effusion.", "The costophrenic angles are sharp."],
    "nodule": ["No focal nodule.", "No suspicious pulmonary nodules."],
    "pneumothorax": ["No pneumothorax.", "There is no pneumothorax."],
    "consolidation": ["The lungs are clear.", "No focal consolidation."],
}
IMPRESSION = {
    "cardiomegaly": ["Cardiomegaly.", "Enlarged heart."],
    "effusion": ["{Side} pleural effusion.", "Small {side} effusion."],
    "nodule": ["{Side} lung nodule.", "Pulmonary nodule, {side} {zone} zone."],
    "pneumothorax": ["{Side} pneumothorax.", "Small {side} pneumothorax."],
    "consolidation": ["{Side} {zone} consolidation, possibly pneumonia.", "Pneumonia in the {side} {zone} zone."],
    "normal": ["No acute cardiopulmonary process.", "Normal chest radiograph.", "No acute findings."],
}


def draw_study(rng: np.random.Generator) -> list[dict[str, str]]:
    """0-2 findings, each with a side (patient's) and a zone."""
    count = rng.choice([0, 1, 1, 2], p=[0.25, 0.3, 0.25, 0.2])
    names = rng.choice(FINDINGS, size=count, replace=False)
    return [{"name": str(n), "side": str(rng.choice(SIDES)), "zone": str(rng.choice(ZONES))} for n in names]


def render(findings: list[dict[str, str]], size: int, rng: np.random.Generator) -> np.ndarray:
    """A float image in [0, 1] (bright = dense) of a frontal chest radiograph with ``findings``."""
    from scipy.ndimage import gaussian_filter

    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    # patient and acquisition vary: body size, position and tilt (a random similarity transform of the
    # drawing coordinates), then exposure (gamma) and noise, so that finding != global appearance
    zoom, tilt = rng.uniform(0.85, 1.12), rng.uniform(-0.1, 0.1)
    dx, dy = rng.uniform(-0.06, 0.06, 2)
    cx0, cy0 = xx - 0.5 - dx, yy - 0.5 - dy
    xx = 0.5 + (np.cos(tilt) * cx0 + np.sin(tilt) * cy0) / zoom
    yy = 0.5 + (-np.sin(tilt) * cx0 + np.cos(tilt) * cy0) / zoom
    image = np.full((size, size), 0.15)
    body = ((xx - 0.5) / 0.46) ** 2 + ((yy - 0.55) / 0.55) ** 2 < 1
    image[body] = 0.65
    names = {f["name"]: f for f in findings}
    lungs = {}
    for side, cx in (("right", 0.32), ("left", 0.68)):  # the patient's right is on the image's left
        lung = ((xx - cx) / 0.15) ** 2 + ((yy - 0.45) / 0.28) ** 2 < 1
        lungs[side] = lung
        image[lung] = 0.25
    ribs = 0.05 * (np.sin(2 * np.pi * 9 * yy + 3 * (xx - 0.5) ** 2) > 0.6)
    image += ribs * (lungs["right"] | lungs["left"])
    heart_width = 0.17 if "cardiomegaly" in names else 0.11
    heart = ((xx - 0.54) / heart_width) ** 2 + ((yy - 0.6) / 0.13) ** 2 < 1
    image[heart] = 0.7
    diaphragm = yy > 0.7 + 0.04 * np.cos((xx - 0.5) * 9)
    image[diaphragm & body] = 0.72
    zone_y = {"upper": 0.3, "middle": 0.45, "lower": 0.6}
    for finding in findings:
        side, zone = finding["side"], finding["zone"]
        cx = 0.32 if side == "right" else 0.68
        lung = lungs[side]
        if finding["name"] == "effusion":
            image[lung & (yy > 0.58 - 0.03 * rng.random() + 0.4 * np.abs(xx - cx))] = 0.68
        elif finding["name"] == "nodule":
            ny, nx = zone_y[zone] + rng.normal(0, 0.02), cx + rng.normal(0, 0.03)
            image[((xx - nx) ** 2 + (yy - ny) ** 2 < (0.02 + 0.012 * rng.random()) ** 2) & lung] = rng.uniform(
                0.55, 0.8
            )
        elif finding["name"] == "pneumothorax":
            rim = lung & (((xx - cx) / 0.15) ** 2 + ((yy - 0.45) / 0.28) ** 2 > 0.55) & (yy < 0.5)
            image[rim] = 0.05
            line = lung & np.isclose(((xx - cx) / 0.15) ** 2 + ((yy - 0.45) / 0.28) ** 2, 0.55, atol=0.04) & (yy < 0.5)
            image[line] = 0.5
        elif finding["name"] == "consolidation":
            patch = gaussian_filter(rng.random((size, size)), size / 40) > 0.5
            region = lung & (np.abs(yy - zone_y[zone]) < 0.09)
            image[region & patch] = 0.55
    image = gaussian_filter(image, size / 160) + rng.normal(0, rng.uniform(0.01, 0.05), (size, size))
    return np.clip(image, 0, 1) ** rng.uniform(0.7, 1.4)


def write_report(findings: list[dict[str, str]], rng: np.random.Generator) -> dict[str, str]:
    """Findings and impression sections for ``findings`` (negatives for the others)."""
    present = {f["name"]: f for f in findings}
    sentences = []
    for name in FINDINGS:
        if name in present:
            template = str(rng.choice(POSITIVE[name]))
            sentences.append(template.format(side=present[name]["side"], zone=present[name]["zone"]))
        elif rng.random() < 0.6:
            sentences.append(str(rng.choice(NEGATIVE[name])))
    rng.shuffle(sentences)
    impression = [
        str(rng.choice(IMPRESSION[f["name"]])).format(side=f["side"], Side=f["side"].capitalize(), zone=f["zone"])
        for f in findings
    ] or [str(rng.choice(IMPRESSION["normal"]))]
    return {"findings": " ".join(sentences), "impression": " ".join(impression)}


def write_dicom(path: Path, image: np.ndarray, monochrome1: bool, study_id: str) -> None:
    """A 16-bit CR DICOM of ``image`` (dense = 1): rescale slope/intercept, a VOI window over the full range.

    MONOCHROME1 files store the inverted rendering (minimum displays white), as CR systems that write it do.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    slope, intercept = 2.0, -1024.0
    shown = 1.0 - image if monochrome1 else image  # MONOCHROME1: the rendered values are displayed inverted
    physical = shown * 8000.0 - 1024.0
    stored = np.round((physical - intercept) / slope).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.AccessionNumber, ds.PatientID, ds.Modality = study_id, f"phantom-{study_id}", "CR"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 16, 16, 15, 0
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.WindowCenter, ds.WindowWidth = 2976.0, 8000.0  # physical units: the full rendered range
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_phantom(out: Path, n: int = 200, size: int = 128, seed: int = 0, dicom_fraction: float = 0.5) -> dict:
    """Writes ``out/images/<study>.dcm|.png``, ``out/reports.csv`` and ``out/labels.csv``; returns a summary."""
    from PIL import Image

    out = Path(out)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    reports, labels = [], []
    for i in range(n):
        study_id = f"s{i:05d}"
        findings = draw_study(rng)
        image = render(findings, size, rng)
        if rng.random() < dicom_fraction:
            write_dicom(images / f"{study_id}.dcm", image, monochrome1=rng.random() < 1 / 3, study_id=study_id)
        else:
            Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(images / f"{study_id}.png")
        reports.append({"study_id": study_id, **write_report(findings, rng)})
        names = {f["name"] for f in findings}
        labels.append({"study_id": study_id, **{k: int(k in names) for k in FINDINGS}, "normal": int(not names)})
    for name, rows in (("reports.csv", reports), ("labels.csv", labels)):
        with open(out / name, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    prevalence = {k: float(np.mean([row[k] for row in labels])) for k in LABELS}
    return {"n": n, "size": size, "seed": seed, "images": str(images), "prevalence": prevalence}


def write_retrieval_set(out: Path, per_category: int = 20, queries: int = 5, size: int = 128, seed: int = 1) -> dict:
    """A held-out retrieval benchmark in the ConVIRT repository's CheXpert 8x200 format, one category per label.

    ``candidate.csv`` (``Path`` + one 0/1 column per label), ``image_query.csv`` (``Variable``, ``Path``)
    and ``text_query.csv`` (``Variable``, ``Text``). Each image holds exactly its category's finding (none
    for ``normal``); text queries are template sentences.
    """
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[dict]] = {"candidate": [], "image_query": []}
    for category in LABELS:
        for kind, count in (("candidate", per_category), ("image_query", queries)):
            for i in range(count):
                findings = [] if category == "normal" else [
                    {"name": category, "side": str(rng.choice(SIDES)), "zone": str(rng.choice(ZONES))}
                ]  # fmt: skip
                path = out / f"{kind}_{category}_{i:03d}.png"
                Image.fromarray((render(findings, size, rng) * 255 + 0.5).astype(np.uint8)).save(path)
                labels = {label: float(label == category) for label in LABELS}
                rows[kind].append(
                    {"Path": path.name, **labels} if kind == "candidate" else {"Variable": category, "Path": path.name}
                )
    text_rows = []
    for category in LABELS:
        pool = IMPRESSION["normal"] + NEGATIVE["consolidation"] if category == "normal" else POSITIVE[category]
        for template in rng.choice(pool, size=queries, replace=len(pool) < queries):
            side, zone = str(rng.choice(SIDES)), str(rng.choice(ZONES))
            text_rows.append({"Variable": category, "Text": str(template).format(side=side, zone=zone)})
    for name, data in (*rows.items(), ("text_query", text_rows)):
        with open(out / f"{name}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
    return {name: str(out / f"{name}.csv") for name in ("candidate", "image_query", "text_query")}
