"""Joint training (method.md §4 ``JointTrain_CLL_CLIP``): every language at once, the upper reference.

One task over the union of the order's languages: one BPE vocabulary trained on all of their training
captions (the reference's oracle vocabulary; ``method.joint_vocab_size``), the concatenated training rows
shuffled uniformly, validation = the mean over the languages' val sets, CLL-CLIP losses and init. Its results
are a single row over all languages (``metrics.joint_metrics``: AA over languages; no forgetting is defined).
"""

from __future__ import annotations

from cll_ray.methods.base import TaskSpec
from cll_ray.methods.cll_clip import CLLCLIP


class AllLanguagesAtOnce:
    """One task over every language of the order (method.joint_vocab_size >= 0 is checked with the config)."""

    def tasks(self, order: list[str]) -> list[TaskSpec]:
        return [TaskSpec("joint", tuple(order))]


class Joint(AllLanguagesAtOnce, CLLCLIP):
    pass
