"""Losses (method.md §3, trap 9), EOS-first pooling (§1.3, trap 2) and the frozen student (§1.2)."""

import contextlib
import math

import numpy as np
import pytest
import torch

from cll_ray.losses import CLLLoss, cross_lingual_mse, soft_contrastive, soft_targets
from cll_ray.model import TextStudent, build_clip, eos_first_pool, trim_after_eos


def test_soft_targets_spread_over_captions_of_the_same_image():
    q = soft_targets(torch.tensor([7, 7, 3]))
    assert q.tolist() == [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]


def test_soft_contrastive_by_hand():
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]])
    image = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # captions 0 and 1 share image 5
    ids = torch.tensor([5, 5, 9])
    tau = torch.tensor(0.5)
    s = (text / text.norm(dim=1, keepdim=True)).numpy()
    v = (image / image.norm(dim=1, keepdim=True)).numpy()
    S = s @ v.T / 0.5
    q = np.array([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]])

    def ce(logits):
        out = 0.0
        for b in range(3):
            logp = logits[b] - math.log(np.exp(logits[b]).sum())
            out -= (q[b] * logp).sum()
        return out / 3

    expected = 0.5 * (ce(S) + ce(S.T))
    assert soft_contrastive(text, image, ids, tau).item() == pytest.approx(expected, rel=1e-5)


def test_mse_is_mean_over_batch_and_dims_on_raw_vectors():
    s, t = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[0.0, 0.0], [3.0, 2.0]])
    assert cross_lingual_mse(s, t).item() == pytest.approx((1 + 4 + 0 + 4) / 4)


def test_loss_terms_weights_and_temperature_clamp():
    loss = CLLLoss(1.0, 0.01, temperature=0.07)
    assert loss.temperature.item() == pytest.approx(0.07)
    with torch.no_grad():
        loss.temperature.fill_(3.0)
    s, t, v = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    terms = loss(s, t, v, torch.arange(4))
    assert set(terms) == {"cross_lingual", "cross_modal", "loss"}
    assert loss.temperature.item() == 0.5  # clamped in place to [0.001, 0.5]
    assert terms["loss"].item() == pytest.approx(terms["cross_lingual"].item() + 0.01 * terms["cross_modal"].item(), rel=1e-6)


def test_eos_first_pooling_survives_ids_above_eos():
    hidden = torch.arange(2 * 5 * 1, dtype=torch.float32).view(2, 5, 1)
    eos = 1
    ids = torch.tensor([[0, 400, 1, 1, 0], [0, 7, 9, 1, 0]])  # row 0: EOS twice, a new id 400 > EOS
    pooled = eos_first_pool(hidden, ids, eos)
    assert pooled[:, 0].tolist() == [2.0, 8.0]
    argmax_pool = hidden[torch.arange(2), ids.argmax(dim=1)]  # open_clip's default would pick the new token
    assert argmax_pool[0, 0].item() == 1.0


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return build_clip("cll-tinyclip", vocab_size=50, eos_id=1)


def test_student_matches_open_clip_text_tower_and_freezes_backbone(tiny_clip):
    student = TextStudent(tiny_clip, eos_id=1)
    ids = torch.tensor([[0, 5, 6, 1] + [0] * 20, [0, 7, 1, 0] + [0] * 20])
    torch.testing.assert_close(student(ids), tiny_clip.encode_text(ids), rtol=1e-5, atol=1e-6)
    # the student cuts the batch after its last first-EOS (exact under the causal mask): open_clip's full
    # 24-column pass above agrees, and so do tokens after EOS
    assert trim_after_eos(ids, 1).shape == (2, 4)
    after_eos = ids.clone()
    after_eos[:, 4:9] = 9
    torch.testing.assert_close(student(after_eos), student(ids), rtol=1e-5, atol=1e-6)
    no_eos = torch.tensor([[0, 5, 6, 7]])
    assert trim_after_eos(no_eos, 1) is no_eos  # a row without EOS keeps the whole context
    assert [n for n, p in student.named_parameters() if p.requires_grad] == ["token_embedding.weight"]
    student(ids).sum().backward()
    grad = student.token_embedding.weight.grad
    assert grad[[5, 6, 7]].abs().sum() > 0 and grad[20:].abs().sum() == 0
    assert all(p.grad is None for n, p in student.named_parameters() if not n.startswith("token_embedding"))


def test_auto_precision_follows_the_hardware(monkeypatch):
    from cll_ray import engine

    assert engine.resolve_precision("fp32", "cpu") == "fp32" and engine.resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: False)
    assert engine.resolve_precision("auto", "cpu") == "fp32"
    assert isinstance(engine.autocast("cpu", "auto"), contextlib.nullcontext)
    monkeypatch.setattr(engine, "cpu_has_native_bf16", lambda: True)
    assert engine.resolve_precision("auto", "cpu") == "bf16"
    with engine.autocast("cpu", "auto"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
