"""Optimizers and schedule of the per-task recipe (method.md §2.2d, §4).

``RowScaledAdamW`` is the reference's modified AdamW (``clfm/optimizers/AdamW.py``) for the token-embedding
matrix θ with rows θ_i and a per-row scale r_i, at scheduled learning rate η:

1. decoupled decay    θ_i ← θ_i · (1 − η·λ·r_i)           (r_i := 1 when decay scaling is off)
2. gradient scaling   g̃_i = r_i · g_i                      (g already clipped; r_i := 1 when off)
3. Adam on g̃          m ← β1·m + (1−β1)·g̃,  v ← β2·v + (1−β2)·g̃²,
                      θ_i ← θ_i − η · m̂_i / (sqrt(v̂_i) + ε),  with bias correction and ε = 1e-6.

Only the rows listed in ``rows`` are touched and only they carry Adam state, so under TEIR (where r_i = 0 outside
the task's tokens, i.e. those rows neither move nor decay) a step costs O(|T_t|·D), not O(V·D). Parameters
without ``rows`` in their group are updated as plain AdamW. A row group also takes a sparse gradient (the rows
a batch used, ``nn.Embedding(sparse=True)``): the step and the gradient's memory then do not grow with V.
"""

from __future__ import annotations

import math

import torch


class RowScaledAdamW(torch.optim.Optimizer):
    def __init__(self, params, *, lr: float, betas: tuple[float, float], eps: float, weight_decay: float):
        # no defaults here: the recipe's values live in TrainConfig alone
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, rows=None, row_scale=None,
                        scale_grad=True, scale_decay=True)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["rows"] is not None:
                if len(group["params"]) != 1 or group["params"][0].dim() != 2:
                    raise ValueError("a row-scaled group holds exactly one 2-D parameter")
                group["rows"] = torch.as_tensor(group["rows"], dtype=torch.long)
                scale = group["row_scale"]
                group["row_scale"] = (
                    torch.ones(len(group["rows"])) if scale is None else torch.as_tensor(scale, dtype=torch.float32)
                )
                if group["row_scale"].shape != group["rows"].shape:
                    raise ValueError("row_scale must have one entry per row")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                rows = group["rows"]
                if rows is None:
                    theta, grad, scale = p.data, p.grad, None
                else:
                    rows = rows.to(p.device)
                    theta, grad = p.data[rows], self._grad_at_rows(group, p.grad, rows)  # (R, D) copies
                    scale = group["row_scale"].to(p.device, p.dtype).unsqueeze(1)  # (R, 1)
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(theta)
                    state["exp_avg_sq"] = torch.zeros_like(theta)
                state["step"] += 1
                t = state["step"]

                # 1. decoupled weight decay, scaled per row under TEIR
                if wd != 0:
                    decay = lr * wd * (scale if scale is not None and group["scale_decay"] else 1.0)
                    theta.mul_(1 - decay)
                # 2. scale the raw gradient before the moments (it acts only through ε: method.md §2.2d)
                if scale is not None and group["scale_grad"]:
                    grad = grad * scale
                # 3. Adam with bias correction
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                theta.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
                if rows is not None:
                    p.data.index_copy_(0, rows, theta)
        return loss

    @staticmethod
    def _grad_at_rows(group: dict, grad: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The gradient's entries at ``rows``, from a dense gradient or from a sparse one (rows outside ``rows``
        dropped, duplicates summed); zero where the batch did not use a row, exactly as the dense gradient."""
        if not grad.is_sparse:
            return grad[rows]
        if "row_position" not in group:  # where each row id sits in ``rows`` (-1: not a trained row)
            position = torch.full((grad.shape[0],), -1, dtype=torch.long, device=rows.device)
            position[rows] = torch.arange(len(rows), device=rows.device)
            group["row_position"] = position
        grad = grad.coalesce()
        position = group["row_position"][grad.indices()[0]]
        kept = position >= 0
        out = torch.zeros(len(rows), grad.shape[1], dtype=grad.dtype, device=grad.device)
        return out.index_copy_(0, position[kept], grad.values()[kept])

    def takes_sparse_grad(self, param: torch.Tensor) -> bool:
        """Whether ``param`` is updated through a row group, which reads a sparse gradient."""
        return any(g["rows"] is not None and any(q is param for q in g["params"]) for g in self.param_groups)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (exactly it when every gradient is dense), for sparse gradients too:
    a sparse gradient is coalesced and only its values count and are scaled, which is the dense norm and scale."""
    grads = [p.grad for p in params if p.grad is not None]
    if not any(g.is_sparse for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    for p in params:
        if p.grad is not None and p.grad.is_sparse:
            p.grad = p.grad.coalesce()
    values = [p.grad._values() if p.grad.is_sparse else p.grad for p in params if p.grad is not None]
    total = torch.nn.utils.get_total_norm(values, 2.0)
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for v in values:
        v.mul_(coefficient.to(v.device))  # a coalesced tensor's values are a view: this scales the gradient
    return total


def warmup_constant(optimizer: torch.optim.Optimizer, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup_steps`` steps, then constant (the reference's ``warmupconstant``)."""

    def factor(step: int) -> float:
        return float(step) / float(max(1, warmup_steps)) if step < warmup_steps else 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
