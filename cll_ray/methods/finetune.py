"""Full fine-tuning (method.md §1.2 ``Ablation_trainAll``): the whole text tower trains, not only the embedding."""

from __future__ import annotations

from cll_ray.methods.base import TaskSpec
from cll_ray.methods.cll_clip import CLLCLIP


class FinetuneAll(CLLCLIP):
    """CLL-CLIP with every text-tower parameter trainable; with TEIR the embedding rows are still row-scaled."""

    def begin_task(self, task: TaskSpec, index: int) -> None:
        for p in self.student.parameters():
            p.requires_grad_(True)

    def state_dict(self) -> dict:
        # the tower drifts from the base model, so it travels with the checkpoint
        return {"backbone": {k: v.detach().cpu().clone() for k, v in self.student.backbone_state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        if state:
            missing = set(self.student.backbone_state_dict()) - set(state["backbone"])
            if missing:
                raise ValueError(f"finetune_all state lacks backbone entries: {sorted(missing)[:3]}")
            self.student.load_state_dict(state["backbone"], strict=False)
