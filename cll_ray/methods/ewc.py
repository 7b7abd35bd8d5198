"""Online EWC (method.md §7, ``oEWC``): a quadratic penalty anchored at the previous tasks' weights.

``L + λ Σ_i F_i (θ_i − θ*_i)²`` over all trainable student parameters. After each task, one pass over the task's
training batches with the task loss (no penalty) gives ``F_new = Σ_batches g² / #batches`` from the last-epoch
weights (trap 10); ``F ← γ·F + F_new``; θ* = the task's best weights. Rows added by later tasks get F = 0.
"""

from __future__ import annotations

import torch

from cll_ray.methods.base import TaskSpec
from cll_ray.methods.cll_clip import CLLCLIP


def pad_rows(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``t`` zero-padded along dim 0 to ``shape`` (the embedding grew; new rows carry no Fisher)."""
    if t.shape == shape:
        return t
    if t.shape[1:] != shape[1:] or t.shape[0] > shape[0]:
        raise ValueError(f"cannot pad a {tuple(t.shape)} Fisher/anchor to {tuple(shape)}")
    return torch.cat([t, t.new_zeros((shape[0] - t.shape[0], *shape[1:]))])


class OnlineEWC(CLLCLIP):
    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.ewc_lambda < 0 or cfg.ewc_gamma < 0:
            raise ValueError("method.ewc_lambda and method.ewc_gamma must be >= 0")
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}  # θ*
        self._new_fisher: dict[str, torch.Tensor] = {}

    def _trainable(self, student=None) -> dict[str, torch.nn.Parameter]:
        student = student if student is not None else self.student
        return {n: p for n, p in student.named_parameters() if p.requires_grad}

    def begin_task(self, task: TaskSpec, index: int) -> None:
        super().begin_task(task, index)
        params = dict(self.student.named_parameters())
        for store in (self.fisher, self.anchor):
            for name in list(store):
                store[name] = pad_rows(store[name], params[name].shape).to(params[name].device)

    def penalty(self) -> torch.Tensor | None:
        """``Σ F (θ − θ*)²`` over the parameters that have a Fisher, or None before the first task ends."""
        params = self._trainable()
        terms = [(self.fisher[n] * (p - self.anchor[n]).pow(2)).sum() for n, p in params.items() if n in self.fisher]
        return torch.stack(terms).sum() if terms else None

    def extra_loss_terms(self, batch: dict, terms: dict) -> dict[str, torch.Tensor]:
        penalty = self.penalty()
        return {} if penalty is None else {"ewc": self.cfg.ewc_lambda * penalty}

    def after_training(self, module, batches, train) -> None:
        from cll_ray.engine import autocast  # lazily: the engine imports the methods

        core = getattr(module, "module", module)
        params = self._trainable(core.student)
        fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        count = 0
        for batch in batches():
            module.zero_grad(set_to_none=True)
            with autocast(batch["ids"].device, train.precision):
                loss = module(batch)["loss"]  # the task loss only: no penalty in the Fisher pass
            loss.backward()  # through the (data-parallel) module: every rank gets the global batch gradient
            for n, p in params.items():
                if p.grad is not None:
                    fisher[n] += torch.nan_to_num(p.grad.detach().float()).pow(2)  # NaNs -> 0, as the reference
            count += 1
        module.zero_grad(set_to_none=True)
        self._new_fisher = {n: f / max(count, 1) for n, f in fisher.items()}

    def end_task(self, lang: str) -> None:
        gamma = self.cfg.ewc_gamma
        for n, f in self._new_fisher.items():
            self.fisher[n] = f if n not in self.fisher else gamma * self.fisher[n] + f
        self._new_fisher = {}
        self.anchor = {n: p.detach().clone() for n, p in self._trainable().items() if n in self.fisher}

    def state_dict(self) -> dict:
        return {"fisher": {n: t.cpu() for n, t in self.fisher.items()},
                "anchor": {n: t.cpu() for n, t in self.anchor.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.fisher = dict(state.get("fisher", {}))
        self.anchor = dict(state.get("anchor", {}))
