"""A converted CLIP checkpoint (BiomedCLIP) as a dual encoder for zero-shot retrieval of radiographs.

BiomedCLIP (Zhang et al., arXiv 2303.00915) pairs a ViT-B/16 image tower with PubMedBERT, both projected
to 512 values and compared by cosine similarity. ``domainfm models convert biomedclip`` keeps the image
trunk as the backbone and everything else beside it (``extra.proj``, ``extra.text.*``, ``extra.logit_scale``);
this module rebuilds the two towers exactly as open_clip runs them:

* image: ``normalize(Backbone(x) @ proj.T)`` (open_clip ``TimmModel`` with ``timm_pool ""`` and a linear,
  bias-free ``head.proj``), on inputs prepared by the file's :class:`InputTransform`;
* text: the BERT encoder's class-token state (``cls_last_hidden_state_pooler``), then ``text.proj``
  (``mlp``: Linear -> GELU -> Linear, bias-free; or ``linear``), normalised.

The BERT configuration is read off the tensors (vocabulary, width, depth, MLP width, positions); the head
count, which no tensor holds, is the width / 64 unless the tokenizer folder holds the text model's
``config.json``. Tokens come from the model's own tokenizer (a local ``tokenizer.json`` or Hugging Face
folder), never downloaded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from domainfm.domains.radiology.text import SentenceTokenizer
from domainfm.shared.errors import DomainfmError
from domainfm.shared.optional import require

TEXT = "text.transformer."


class ClipCheckpointError(DomainfmError, ValueError):
    """A converted file cannot serve as a CLIP dual encoder."""


class ClipDualEncoder(nn.Module):
    """Image and text towers of a converted CLIP checkpoint, with ConVIRT's ``embed_images``/``embed_text``."""

    def __init__(self, image_tower: nn.Module, image_proj: nn.Linear, text_encoder: nn.Module, text_proj: nn.Module):
        super().__init__()
        self.image_tower, self.image_proj = image_tower, image_proj
        self.text_encoder, self.text_proj = text_encoder, text_proj

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised projected image embeddings (``images`` already through the model's transform)."""
        return nn.functional.normalize(self.image_proj(self.image_tower(images)), dim=-1)

    def embed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised projected sentence embeddings (class-token pooling, as open_clip's BiomedCLIP)."""
        hidden = self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return nn.functional.normalize(self.text_proj(hidden[:, 0]), dim=-1)


def has_text_tower(path: Path) -> bool:
    """Whether a converted checkpoint keeps a CLIP text tower beside its image backbone."""
    from domainfm.shared.foundation.convert import read_foundation_metadata

    meta = read_foundation_metadata(path) or {}
    return any(key.startswith(TEXT) for key in meta.get("extras", []))


def load_clip(path: Path, tokenizer: Path, max_length: int = 256) -> tuple[ClipDualEncoder, SentenceTokenizer, dict]:
    """The dual encoder, its tokenizer and retrieval metadata of a converted CLIP checkpoint (eval mode)."""
    from domainfm.domains.radiology.pretrain import foundation_image_encoder
    from domainfm.shared.foundation.convert import read_extras

    path, tokenizer = Path(path), Path(tokenizer)
    if not has_text_tower(path):
        raise ClipCheckpointError(
            f"{path} keeps no text tower: zero-shot retrieval needs a converted CLIP model (`domainfm models "
            "convert biomedclip ...`) or a ConVIRT checkpoint"
        )
    if not tokenizer.exists():
        raise ClipCheckpointError(f"--tokenizer {tokenizer} does not exist (the model's tokenizer.json or its folder)")
    image_tower, meta = foundation_image_encoder(path)
    extras = read_extras(path)
    if "proj" not in extras:
        raise ClipCheckpointError(f"{path} has no image projection (extra.proj): convert it again with this version")
    proj = extras["proj"].float()
    image_proj = nn.Linear(proj.shape[1], proj.shape[0], bias="proj_bias" in extras)
    with torch.no_grad():
        image_proj.weight.copy_(proj)
        if "proj_bias" in extras:
            image_proj.bias.copy_(extras["proj_bias"].float())
    text_state = {k[len(TEXT) :]: v.float() for k, v in extras.items() if k.startswith(TEXT)}
    text_encoder = _bert(path, text_state, tokenizer)
    text_proj = _text_projection(path, extras)
    model = ClipDualEncoder(image_tower, image_proj, text_encoder, text_proj).eval()
    return model, SentenceTokenizer(tokenizer, max_length), {**meta, "text_max_length": max_length}


def _bert(path: Path, state: dict[str, torch.Tensor], tokenizer: Path) -> nn.Module:
    require("transformers", "radiology")
    from transformers import BertConfig, BertModel

    state = {k: v for k, v in state.items() if not k.startswith("pooler.")}  # class-token pooling uses no pooler
    try:
        vocab, width = state["embeddings.word_embeddings.weight"].shape
        positions = state["embeddings.position_embeddings.weight"].shape[0]
        types = state["embeddings.token_type_embeddings.weight"].shape[0]
        intermediate = state["encoder.layer.0.intermediate.dense.weight"].shape[0]
    except KeyError as missing:
        raise ClipCheckpointError(f"{path}: the text tower is not a BERT encoder (no {missing})") from None
    layers = 1 + max(int(m[1]) for k in state if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
    given = tokenizer / "config.json" if tokenizer.is_dir() else tokenizer.with_name("config.json")
    options: dict[str, Any] = {}
    if given.is_file():
        options = {k: v for k, v in json.loads(given.read_text()).items() if k in ("num_attention_heads", "hidden_act")}
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=options.get("num_attention_heads", max(1, width // 64)),
        intermediate_size=intermediate,
        max_position_embeddings=positions,
        type_vocab_size=types,
        hidden_act=options.get("hidden_act", "gelu"),
    )
    encoder = BertModel(config, add_pooling_layer=False)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ClipCheckpointError(
            f"{path}: the text tower does not fit a BERT of width {width}, depth {layers}: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return encoder.eval()


def _text_projection(path: Path, extras: dict[str, torch.Tensor]) -> nn.Module:
    if "text.proj.weight" in extras:  # open_clip hf_proj_type "linear"
        weight = extras["text.proj.weight"].float()
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            layer.weight.copy_(weight)
        return layer
    if "text.proj.0.weight" in extras and "text.proj.2.weight" in extras:  # "mlp" (BiomedCLIP)
        first, second = extras["text.proj.0.weight"].float(), extras["text.proj.2.weight"].float()
        mlp = nn.Sequential(
            nn.Linear(first.shape[1], first.shape[0], bias=False),
            nn.GELU(),
            nn.Linear(second.shape[1], second.shape[0], bias=False),
        )
        with torch.no_grad():
            mlp[0].weight.copy_(first)
            mlp[2].weight.copy_(second)
        return mlp
    raise ClipCheckpointError(f"{path}: no text projection (text.proj.*) beside the text tower")
