"""CLL-CLIP (method.md §1-§4) and its TEIR variants (§2), selected by MethodConfig flags."""

from __future__ import annotations

import torch

from cll_ray.config import MethodConfig, TrainConfig
from cll_ray.embedding import ExpandableTokenEmbedding
from cll_ray.methods.base import Method
from cll_ray.optim import RowScaledAdamW


class CLLCLIP(Method):
    """CLL-CLIP; with ``init=teir`` and ``grad_scale``/``decay_scale`` it is CLL-CLIP + TEIR or an ablation."""

    def __init__(self, cfg: MethodConfig) -> None:
        super().__init__(cfg)
        if cfg.init not in ("normal", "teir"):
            raise ValueError(f"method.init must be 'normal' or 'teir', got '{cfg.init}'")

    @property
    def regularized(self) -> bool:
        return self.cfg.grad_scale or self.cfg.decay_scale

    def new_row_distribution(self, embedding: ExpandableTokenEmbedding) -> tuple[float, float]:
        if self.cfg.init == "normal":
            return self.cfg.init_mean, self.cfg.init_std  # baseline: N(0, 0.02²)
        mu, sigma = embedding.matrix_statistics()  # TEIR: scalar stats of the whole current matrix (§2.1)
        return mu + self.cfg.teir_mu_shift, sigma * self.cfg.teir_sigma_scale

    def build_optimizer(self, embedding, other_params, row_scale, train: TrainConfig) -> torch.optim.Optimizer:
        common = dict(lr=train.lr, betas=tuple(train.betas), eps=train.adam_eps, weight_decay=train.weight_decay)
        # other trainable parameters (τ, adapters, LoRA, the tower under finetune_all): decay only ndim ≥ 2 (§4)
        others = [{"params": [p for p in other_params if p.dim() >= 2], "weight_decay": train.weight_decay},
                  {"params": [p for p in other_params if p.dim() < 2], "weight_decay": 0.0}]
        others = [g for g in others if g["params"]]
        if not self.regularized:
            # The reference's dense AdamW: every row decays and BOS/EOS train (trap 4: part of what it measures).
            return torch.optim.AdamW(
                [{"params": [embedding], "weight_decay": train.weight_decay}, *others], **common,
            )
        if self.cfg.grad_scale and self.cfg.decay_scale:
            rows = torch.nonzero(row_scale > 0).squeeze(1)  # r_i = 0 rows neither move nor decay: skip them
        else:
            rows = torch.arange(len(row_scale))  # an ablation: unscaled decay or gradient reaches every row
        return RowScaledAdamW(
            [{"params": [embedding], "weight_decay": train.weight_decay, "rows": rows, "row_scale": row_scale[rows],
              "scale_grad": self.cfg.grad_scale, "scale_decay": self.cfg.decay_scale},
             *others],
            **common,
        )
