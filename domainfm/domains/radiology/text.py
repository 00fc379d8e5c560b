"""The text side of ConVIRT: an offline tokenizer and a BERT-style encoder with frozen lower layers.

ConVIRT (Zhang et al., MLHC 2022, arXiv 2010.00747) encodes report sentences with ClinicalBERT, keeps its
embeddings and first 6 layers frozen, and max-pools the output tokens. Nothing downloads here:

* default: a WordPiece tokenizer trained on the store's report sentences with HF ``tokenizers`` and a
  small randomly initialised ``transformers`` BERT (sizes in the config);
* ``local_model``: a local Hugging Face folder (e.g. a ClinicalBERT copy) read with
  ``local_files_only=True`` and ``trust_remote_code=False``: its own tokenizer and weights, never code
  shipped in the folder.

Pooling is an explicit option (``max`` as in the paper, ``mean`` or ``cls``) and ignores padding.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from domainfm.shared.errors import DomainfmError
from domainfm.shared.optional import require

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


class TextModelError(DomainfmError, ValueError):
    """A local Hugging Face folder that cannot be read as a tokenizer or model (code in it is never run)."""


def train_tokenizer(sentences: Iterable[str], path: Path, vocab_size: int = 2000) -> Path:
    """Trains a lower-casing WordPiece tokenizer on ``sentences``; writes ``path`` (``tokenizer.json``)."""
    require("tokenizers", "radiology")
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=1)
    tokenizer.train_from_iterator(list(sentences), trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


class SentenceTokenizer:
    """Sentences -> padded ``input_ids`` and ``attention_mask`` tensors.

    Args:
        source: A ``tokenizer.json`` file, a local Hugging Face model folder, or the JSON text itself.
        max_length: Longest token sequence (longer sentences are truncated).
    """

    def __init__(self, source: Path | str, max_length: int = 64) -> None:
        self.max_length, self._hf, self._fast = max_length, None, None
        if isinstance(source, Path) or not str(source).lstrip().startswith("{"):
            source = Path(source)
            if source.is_dir():
                from transformers import AutoTokenizer

                try:
                    self._hf = AutoTokenizer.from_pretrained(
                        str(source), local_files_only=True, trust_remote_code=False
                    )
                except (OSError, ValueError) as error:
                    raise TextModelError(f"{source}: not a readable Hugging Face tokenizer folder: {error}") from error
                self.vocab_size = len(self._hf)
                return
            source = source.read_text()
        from tokenizers import Tokenizer

        try:
            self._fast = Tokenizer.from_str(source)
        except Exception as error:  # tokenizers raises plain Exception for malformed JSON
            raise TextModelError(f"not a valid tokenizer.json ({' '.join(str(error).split())[:200]})") from error
        self._fast.enable_truncation(max_length)
        self._fast.enable_padding(pad_id=self._fast.token_to_id("[PAD]"), pad_token="[PAD]")
        self.vocab_size = self._fast.get_vocab_size()

    def to_json(self) -> str | None:
        """The trained tokenizer as JSON (``None`` for a Hugging Face folder, which stays where it is)."""
        return self._fast.to_str() if self._fast is not None else None

    def __call__(self, sentences: list[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention masks, padded to the longest sentence (at most ``max_length``)."""
        if self._hf is not None:
            encoded = self._hf(
                sentences, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        batch = self._fast.encode_batch(sentences)
        return {
            "input_ids": torch.tensor([e.ids for e in batch], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in batch], dtype=torch.long),
        }


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: Literal["max", "mean", "cls"]) -> torch.Tensor:
    """Pools token states ``[B, T, D]`` over the non-padding tokens of ``mask`` ``[B, T]``."""
    if how == "cls":
        return hidden[:, 0]
    keep = mask.unsqueeze(-1).bool()
    if how == "max":
        return hidden.masked_fill(~keep, torch.finfo(hidden.dtype).min).amax(dim=1)
    if how == "mean":
        return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1)
    raise ValueError(f"unknown pooling {how!r}; choose max, mean or cls")


class TextTower(nn.Module):
    """A BERT-style encoder with the embeddings and the first ``frozen_layers`` layers frozen, then pooling.

    Args:
        encoder: A ``transformers`` BERT-like model (``embeddings`` and ``encoder.layer`` attributes).
        pooling: ``max`` (ConVIRT), ``mean`` or ``cls``.
        frozen_layers: Lower transformer layers frozen with the embeddings (ConVIRT: 6 of ClinicalBERT's 12).
    """

    def __init__(self, encoder: nn.Module, pooling: Literal["max", "mean", "cls"] = "max", frozen_layers: int = 6):
        super().__init__()
        self.encoder, self.pooling = encoder, pooling
        layers = encoder.encoder.layer
        if frozen_layers > len(layers):
            raise ValueError(f"cannot freeze {frozen_layers} layers of a {len(layers)}-layer text encoder")
        encoder.embeddings.requires_grad_(False)
        for layer in layers[:frozen_layers]:
            layer.requires_grad_(False)
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler.requires_grad_(False)  # unused: ConVIRT pools the token states itself
        self.frozen_layers = frozen_layers
        self.embed_dim = int(encoder.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled sentence features ``[B, hidden]``."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)


def create_text_tower(
    vocab_size: int,
    local_model: Path | None = None,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    intermediate: int = 256,
    max_length: int = 64,
    pooling: Literal["max", "mean", "cls"] = "max",
    frozen_layers: int = 2,
) -> TextTower:
    """A local HF model (``local_model``) or a small random BERT of the given sizes, as a :class:`TextTower`."""
    require("transformers", "radiology")
    from transformers import AutoModel, BertConfig, BertModel

    if local_model is not None:
        try:
            encoder = AutoModel.from_pretrained(str(local_model), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as error:
            raise TextModelError(f"{local_model}: not a readable Hugging Face model folder: {error}") from error
    else:
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=intermediate,
            max_position_embeddings=max(max_length, 16),
        )
        encoder = BertModel(config, add_pooling_layer=False)
    return TextTower(encoder, pooling, frozen_layers)


def text_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The text-tower options with defaults filled in (for checkpoint metadata)."""
    defaults = {
        "local_model": None,
        "hidden": 128,
        "layers": 4,
        "heads": 4,
        "intermediate": 256,
        "max_length": 64,
        "pooling": "max",
        "frozen_layers": 2,
        "vocab_size": 2000,
    }
    unknown = set(options or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown text options {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **(options or {})}
