"""The modified AdamW with and without TEIR (method.md §2.2d, trap 5) and the schedule (§4)."""

import math

import pytest
import torch

from cll_ray.config import MethodConfig, TrainConfig
from cll_ray.methods import build_method
from cll_ray.optim import RowScaledAdamW, clip_grad_norm, warmup_constant


def _run(opt_factory, grads, w0):
    p = torch.nn.Parameter(w0.clone())
    opt = opt_factory([p])
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt


def test_all_rows_unit_scale_equals_torch_adamw():
    torch.manual_seed(0)
    w0, grads = torch.randn(6, 4), [torch.randn(6, 4) * 1e-3 for _ in range(5)]
    ours, _ = _run(lambda ps: RowScaledAdamW([{"params": ps, "rows": torch.arange(6)}], lr=1e-2, eps=1e-6, betas=(0.9, 0.999),
                                             weight_decay=0.05), grads, w0)
    ref, _ = _run(lambda ps: torch.optim.AdamW(ps, lr=1e-2, eps=1e-6, weight_decay=0.05), grads, w0)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)


def test_teir_step_by_hand():
    lr, wd, eps = 0.1, 0.05, 1e-6
    w0 = torch.tensor([[1.0, -1.0], [2.0, 0.5], [3.0, 3.0], [-1.0, 4.0]])
    g = torch.tensor([[1e-6, -2e-6], [4e-6, 0.0], [1.0, 1.0], [-3e-6, 1e-6]])
    rows, scale = torch.tensor([1, 3]), torch.tensor([1.0, 0.5])  # row 0 and 2: r = 0 (not touched)
    new, opt = _run(lambda ps: RowScaledAdamW([{"params": ps, "rows": rows, "row_scale": scale}], lr=lr, eps=eps, betas=(0.9, 0.999),
                                              weight_decay=wd), [g], w0)
    # first step: m̂ = g̃, v̂ = g̃², so the update is g̃ / (|g̃| + ε), after decay θ(1 − lr·wd·r)
    for row, r in ((1, 1.0), (3, 0.5)):
        gt = r * g[row]
        expected = w0[row] * (1 - lr * wd * r) - lr * gt / (gt.abs() + eps)
        torch.testing.assert_close(new[row], expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(new[0], w0[0]) and torch.equal(new[2], w0[2])  # neither moved nor decayed
    state = next(iter(opt.state.values()))
    assert state["exp_avg"].shape == (2, 2)  # Adam state only for the task's rows
    # the gradient scale acts through ε: r = 0.5 on a tiny gradient gives a smaller step than r = 1 would
    unscaled = w0[3] * (1 - lr * wd * 0.5) - lr * g[3] / (g[3].abs() + eps)
    assert (new[3] - w0[3] * (1 - lr * wd * 0.5)).abs().sum() < (unscaled - w0[3] * (1 - lr * wd * 0.5)).abs().sum()


def test_decay_without_gradient_scaling_reaches_every_row():
    lr, wd = 0.1, 0.05
    w0, g = torch.ones(3, 2), torch.zeros(3, 2)
    new, _ = _run(lambda ps: RowScaledAdamW([{"params": ps, "rows": torch.arange(3), "row_scale": torch.tensor([0.0, 1.0, 0.5]),
                                              "scale_grad": True, "scale_decay": False}], lr=lr, betas=(0.9, 0.999), eps=1e-6,
                                             weight_decay=wd), [g], w0)
    torch.testing.assert_close(new, torch.full((3, 2), 1 - lr * wd))


def test_method_optimizers():
    emb = torch.nn.Parameter(torch.zeros(5, 2))
    tau = torch.nn.Parameter(torch.tensor(0.07))
    r = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.5])
    base = build_method(MethodConfig(name="cll_clip")).build_optimizer(emb, [tau], r, TrainConfig())
    assert isinstance(base, torch.optim.AdamW)  # dense reference AdamW for the baseline
    assert [g["weight_decay"] for g in base.param_groups] == [0.05, 0.0] and base.defaults["eps"] == 1e-6
    teir = build_method(MethodConfig(name="cll_clip_teir", grad_scale=True, decay_scale=True)).build_optimizer(
        emb, [tau], r, TrainConfig())
    assert isinstance(teir, RowScaledAdamW)
    assert teir.param_groups[0]["rows"].tolist() == [2, 4]
    assert teir.param_groups[0]["row_scale"].tolist() == [1.0, 0.5]


def test_warmup_then_constant():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_constant(opt, 4)
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert not math.isnan(lrs[-1])


def _embedding_steps(sparse: bool, steps: int = 3, clip: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A few TEIR steps on a 50-row embedding through ``nn.functional.embedding``, with a dense or sparse gradient."""
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(50, 8))
    rows = torch.arange(20, 40)  # the task's rows; a batch also uses rows outside them
    opt = RowScaledAdamW([{"params": [weight], "rows": rows, "row_scale": torch.linspace(0.2, 1.0, 20)}],
                         lr=0.1, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
    norms = []
    for s in range(steps):
        ids = torch.randint(0, 50, (6, 7), generator=torch.Generator().manual_seed(s))  # repeated ids in a batch
        loss = torch.nn.functional.embedding(ids, weight, sparse=sparse).pow(3).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        assert weight.grad.is_sparse == sparse
        norms.append(clip_grad_norm([weight], clip))
        opt.step()
    return weight.detach(), torch.stack(norms)


@pytest.mark.parametrize("clip", [1e6, 1.0])  # clipping off (coefficient 1) and on
def test_sparse_embedding_gradient_gives_the_dense_step(clip):
    dense, dense_norms = _embedding_steps(sparse=False, clip=clip)
    sparse, sparse_norms = _embedding_steps(sparse=True, clip=clip)
    torch.testing.assert_close(sparse_norms, dense_norms, rtol=1e-6, atol=0)
    torch.testing.assert_close(sparse, dense, rtol=1e-6, atol=1e-7)
    if clip > 1e5:  # no clipping: the same sums in the same order, bit for bit
        assert torch.equal(sparse, dense)
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[20:40] = False
    torch.manual_seed(0)
    assert torch.equal(sparse[untouched], torch.randn(50, 8)[untouched])  # rows outside the task never move


def test_sparse_gradient_only_through_a_row_group():
    weight = torch.nn.Parameter(torch.randn(10, 4))
    other = torch.nn.Parameter(torch.randn(3))
    rowed = RowScaledAdamW([{"params": [weight], "rows": torch.arange(3)}, {"params": [other]}],
                           lr=0.1, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    assert rowed.takes_sparse_grad(weight) and not rowed.takes_sparse_grad(other)
