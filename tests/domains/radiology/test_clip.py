"""Zero-shot retrieval with a converted CLIP checkpoint: BiomedCLIP's layout against open_clip itself.

open_clip builds the original architecture offline (a timm ViT trunk, a Hugging Face BERT text tower from a
local config, the ``mlp`` text projection and class-token pooling BiomedCLIP's open_clip_config.json names);
``domainfm models convert biomedclip`` converts its saved weights, and ``radiology eval retrieval`` must
rank exactly as open_clip's own ``encode_image``/``encode_text`` do on the same tiles.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from domainfm.cli import main

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

SENTENCES = [
    "no acute cardiopulmonary process",
    "right lower lobe consolidation consistent with pneumonia",
    "moderate cardiomegaly with small bilateral effusions",
    "left apical pneumothorax",
    "atelectasis at the lung bases",
    "pulmonary edema and cardiomegaly",
]


def _release(folder: Path) -> tuple[torch.nn.Module, Path]:
    """A tiny BiomedCLIP-layout release: open_clip weights, open_clip_config.json, tokenizer and BERT config."""
    from domainfm.domains.radiology.text import train_tokenizer

    folder.mkdir(parents=True)
    tokenizer = train_tokenizer(SENTENCES * 3, folder / "tokenizer.json", vocab_size=200)
    vocab = json.loads(tokenizer.read_text())["model"]["vocab"]
    bert = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    bert.save_pretrained(folder)  # config.json: open_clip reads it offline, domainfm its head count
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "timm_model_name": "vit_tiny_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {
            "hf_model_name": str(folder),
            "hf_tokenizer_name": str(folder),
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "hf_model_pretrained": False,
            "context_length": 64,
        },
    }
    torch.manual_seed(0)
    model = open_clip.CustomTextCLIP(**model_cfg).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name.lower():  # LayerNorms away from their identity init, so a skipped one shows
                parameter.add_(torch.randn_like(parameter) * 0.1)
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    return model, tokenizer


def _standardise(tiles: np.ndarray, record) -> torch.Tensor:
    grey = torch.from_numpy(tiles).float().repeat(1, 3, 1, 1) * record.scale
    return (grey - torch.tensor(record.mean).view(1, 3, 1, 1)) / torch.tensor(record.std).view(1, 3, 1, 1)


def _converted(tmp_path: Path):
    """The tiny BiomedCLIP release, its tokenizer, and its ``domainfm models convert`` output."""
    original, tokenizer = _release(tmp_path / "BiomedCLIP")
    out = tmp_path / "biomedclip.safetensors"
    source = tmp_path / "BiomedCLIP" / "open_clip_pytorch_model.bin"
    assert main(["models", "convert", "biomedclip", "--input", str(source), "--out", str(out)]) == 0
    return original, tokenizer, out


def test_converted_biomedclip_embeds_like_open_clip(tmp_path: Path):
    from domainfm.domains.radiology.clip import load_clip
    from domainfm.shared.foundation.convert import foundation_transform

    original, tokenizer, out = _converted(tmp_path)
    model, text_tokenizer, meta = load_clip(out, tokenizer, max_length=64)
    record = foundation_transform(out)
    assert record.size == [224, 224] and meta["image_size"] == 224
    tiles = np.random.default_rng(0).integers(0, 256, (3, 1, 224, 224), dtype=np.uint8)
    images = _standardise(tiles, record)
    tokens = text_tokenizer(SENTENCES)
    with torch.no_grad():
        ours_image = model.embed_images(images)
        ours_text = model.embed_text(**tokens)
        theirs_image = torch.nn.functional.normalize(original.encode_image(images), dim=-1)
        theirs_text = torch.nn.functional.normalize(original.encode_text(tokens["input_ids"]), dim=-1)
    assert (ours_image - theirs_image).abs().max().item() < 1e-4
    assert (ours_text - theirs_text).abs().max().item() < 1e-4
    # the text tower is really used: another sentence gives another embedding
    assert (ours_text[0] - ours_text[1]).abs().max().item() > 1e-3


def test_zero_shot_retrieval_ranks_as_open_clip(tmp_path: Path, monkeypatch, capsys):
    from domainfm.domains.radiology import evaluate
    from domainfm.domains.radiology.images import ingest_tile
    from domainfm.shared.foundation.convert import foundation_transform

    original, tokenizer, out = _converted(tmp_path)
    phantom = tmp_path / "phantom"
    assert main(["radiology", "phantom", "--out", str(phantom), "--n", "24", "--retrieval_per_category", "2"]) == 0
    seen = []
    real = evaluate.precision_at_k

    def spy(similarity, relevant, k):
        seen.append((similarity.clone(), k))
        return real(similarity, relevant, k)

    monkeypatch.setattr(evaluate, "precision_at_k", spy)
    capsys.readouterr()
    folder = phantom / "retrieval"
    args = [
        "radiology",
        "eval",
        "retrieval",
        "--checkpoint",
        str(out),
        "--candidates",
        str(folder / "candidate.csv"),
        "--text_queries",
        str(folder / "text_query.csv"),
        "--tokenizer",
        str(tokenizer),
        "--k",
        "[2]",
        "--json",
    ]
    assert main(args) == 0
    found = json.loads(capsys.readouterr().out)
    assert set(found) >= {"text_to_image", "chance", "candidates"}
    similarity, k = seen[0]
    # the same ranking by open_clip on the same tiles and sentences
    with open(folder / "candidate.csv", newline="") as handle:
        paths = [folder / row["Path"] for row in csv.DictReader(handle)]
    with open(folder / "text_query.csv", newline="") as handle:
        texts = [row["Text"] for row in csv.DictReader(handle)]
    record = foundation_transform(out)
    tiles = np.stack([ingest_tile(path, 224) for path in paths])
    from domainfm.domains.radiology.text import SentenceTokenizer

    ids = SentenceTokenizer(tokenizer, 64)(texts)["input_ids"]
    with torch.no_grad():
        images = torch.nn.functional.normalize(original.encode_image(_standardise(tiles, record)), dim=-1)
        text = torch.nn.functional.normalize(original.encode_text(ids), dim=-1)
    assert k == 2 and similarity.shape == (len(texts), len(paths))
    assert torch.allclose(similarity, text @ images.T, atol=1e-4)


def test_zero_shot_retrieval_without_the_tokenizer_is_refused(tmp_path: Path, capsys):
    _, _, out = _converted(tmp_path)
    csvs = tmp_path / "c.csv"
    csvs.write_text("Path,x\n")
    capsys.readouterr()
    args = [
        "radiology",
        "eval",
        "retrieval",
        "--checkpoint",
        str(out),
        "--candidates",
        str(csvs),
        "--text_queries",
        str(csvs),
    ]
    assert main(args) == 2
    assert "needs --tokenizer" in capsys.readouterr().err
