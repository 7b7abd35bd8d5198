"""Joint training (method.md §4 ``JointTrain_CLL_CLIP``): every language at once, the upper reference.

One task over the union of the order's languages: one BPE vocabulary trained on all of their training
captions (the reference's oracle vocabulary; ``method.joint_vocab_size``), the concatenated training rows
shuffled uniformly, validation = the mean over the languages' val sets, CLL-CLIP losses and init. Its results
are a single row over all languages (``metrics.joint_metrics``: AA over languages; no forgetting is defined).
"""

from __future__ import annotations

from cll_ray.methods.base import TaskSpec
from cll_ray.methods.cll_clip import CLLCLIP


class Joint(CLLCLIP):
    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.joint_vocab_size < 0:
            raise ValueError(f"method.joint_vocab_size must be >= 0 (0 = per-language size × languages), "
                             f"got {cfg.joint_vocab_size}")

    def tasks(self, order: list[str]) -> list[TaskSpec]:
        return [TaskSpec("joint", tuple(order))]
