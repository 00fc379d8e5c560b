"""ConVIRT: the loss by hand, gradients to both towers, frozen text layers, pooling, Precision@k."""

import math

import numpy as np
import pytest
import torch

from domainfm.domains.radiology.convirt import ConVIRT, augment_images, convirt_loss
from domainfm.domains.radiology.evaluate import precision_at_k
from domainfm.domains.radiology.text import create_text_tower, pool
from domainfm.shared.backbones import create_backbone


def test_loss_equals_a_hand_computed_value_on_three_pairs():
    v = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    u = torch.nn.functional.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    tau, lam = 0.1, 0.75
    s = (v @ u.T).numpy() / tau
    image_to_text = np.mean([-s[i, i] + math.log(np.exp(s[i]).sum()) for i in range(3)])
    text_to_image = np.mean([-s[i, i] + math.log(np.exp(s[:, i]).sum()) for i in range(3)])
    expected = lam * image_to_text + (1 - lam) * text_to_image
    assert float(convirt_loss(v, u, tau, lam)) == pytest.approx(expected, rel=1e-5)
    assert float(convirt_loss(v, u, tau, 1.0)) == pytest.approx(image_to_text, rel=1e-5)  # lambda = image->text


def small_model(frozen_layers: int = 2) -> ConVIRT:
    text = create_text_tower(50, hidden=32, layers=3, heads=2, intermediate=64, frozen_layers=frozen_layers)
    return ConVIRT(create_backbone("test_resnet", in_chans=1), text, projection_dim=16)


def test_one_step_reaches_both_towers_and_heads_and_leaves_frozen_text_layers_unchanged():
    torch.manual_seed(0)
    model = small_model(frozen_layers=2)
    encoder = model.text_tower.encoder
    frozen = {
        n: p.clone()
        for n, p in encoder.named_parameters()
        if n.startswith(("embeddings.", "encoder.layer.0.", "encoder.layer.1."))
    }
    assert frozen and all(not p.requires_grad for n, p in encoder.named_parameters() if n in frozen)
    assert all(p.requires_grad for n, p in encoder.named_parameters() if n.startswith("encoder.layer.2."))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    images = torch.randn(4, 1, 64, 64)
    ids = torch.randint(5, 50, (4, 7))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    convirt_loss(*model(images, ids, mask)).backward()
    for part in (model.image_tower, model.image_head, model.text_head, encoder.encoder.layer[2]):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), type(part).__name__
    optimizer.step()
    assert all(torch.equal(p, frozen[n]) for n, p in encoder.named_parameters() if n in frozen)


def test_max_pooling_ignores_padding_tokens():
    hidden = torch.tensor([[[1.0], [5.0], [100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert float(pool(hidden, mask, "max")) == 5.0
    assert float(pool(hidden, mask, "mean")) == 3.0
    assert float(pool(hidden, mask, "cls")) == 1.0


def test_precision_at_k_on_a_hand_built_case():
    similarity = torch.tensor([[0.9, 0.8, 0.1, 0.7], [0.1, 0.2, 0.3, 0.4]])
    relevant = torch.tensor([[True, False, False, True], [False, False, True, True]])
    # query 0: top-2 = candidates 0 (hit), 1 (miss); top-3 adds 3 (hit). query 1: top-2 = 3, 2: both hits
    torch.testing.assert_close(precision_at_k(similarity, relevant, 2), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(precision_at_k(similarity, relevant, 3), torch.tensor([2 / 3, 2 / 3]))


def test_augmentation_keeps_shape_and_range_and_varies_per_image():
    images = torch.rand(6, 1, 32, 32)
    out = augment_images(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    again = augment_images(images, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and not torch.equal(out[0], out[1])


def test_zero_strength_augmentation_is_the_identity_without_flip():
    images = torch.rand(3, 1, 32, 32)
    out = augment_images(images, hflip=0.0, strength=0.0)
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def test_a_local_hugging_face_folder_is_used_offline_with_its_own_tokenizer(tmp_path):
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from domainfm.domains.radiology.text import SentenceTokenizer, train_tokenizer

    vocabulary = train_tokenizer(["The heart is normal.", "No pleural effusion."] * 5, tmp_path / "t.json", 80)
    special = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]"}
    fast = PreTrainedTokenizerFast(tokenizer_file=str(vocabulary), **special)
    fast.save_pretrained(tmp_path / "bert")
    config = BertConfig(
        vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(tmp_path / "bert")
    tokenizer = SentenceTokenizer(tmp_path / "bert")
    tower = create_text_tower(tokenizer.vocab_size, local_model=tmp_path / "bert", frozen_layers=1)
    assert all(not p.requires_grad for p in tower.encoder.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in tower.encoder.encoder.layer[1].parameters())
    features = tower(**tokenizer(["The heart is normal.", "No effusion."]))
    assert tuple(features.shape) == (2, 32)
