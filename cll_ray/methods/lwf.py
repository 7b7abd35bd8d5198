"""Learning without Forgetting (not in the reference, method.md §7): distil the previous task's model.

The standard LwF for an embedding regressor: ``w · MSE(s(x), s_prev(x))`` on the current task's captions, where
``s_prev`` is a frozen copy of the student taken when the task starts (after the vocabulary grew, so the new
rows hold their initial values and the previous model can read the new task's token ids). Task 1 has no
previous model and no term. Nothing is carried across tasks: the copy is taken again at every task start.
"""

from __future__ import annotations

import copy

import torch

from cll_ray.losses import cross_lingual_mse
from cll_ray.methods.base import TaskSpec
from cll_ray.methods.cll_clip import CLLCLIP


class LwF(CLLCLIP):
    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.lwf_weight < 0:
            raise ValueError("method.lwf_weight must be >= 0")
        self.previous = None

    def begin_task(self, task: TaskSpec, index: int) -> None:
        super().begin_task(task, index)
        self.previous = None
        if index > 0:
            self.previous = copy.deepcopy(self.student).eval()
            self.previous.requires_grad_(False)

    @torch.no_grad()
    def target(self, ids: torch.Tensor) -> torch.Tensor:
        """The previous model's embedding of ``ids`` (B, E)."""
        return self.previous(ids)

    def extra_loss_terms(self, batch: dict, terms: dict) -> dict[str, torch.Tensor]:
        if self.previous is None:
            return {}
        return {"lwf": self.cfg.lwf_weight * cross_lingual_mse(terms["embedding"], self.target(batch["ids"]))}

    def end_task(self, lang: str) -> None:
        self.previous = None  # free it: the next task copies the student again
