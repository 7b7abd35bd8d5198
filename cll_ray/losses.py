"""CLL-CLIP losses (method.md §3): cross-lingual MSE + cross-modal contrastive with soft targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cll_ray.parallel import gather_rows, gather_with_grad

TAU_MIN, TAU_MAX = 0.001, 0.5


def cross_lingual_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``(1/(B·E)) Σ_b ||s_b − t_b||²`` on raw (unnormalized) vectors: MSELoss with mean reduction."""
    return F.mse_loss(student, teacher)


def soft_targets(image_ids: torch.Tensor) -> torch.Tensor:
    """``q_bc = 1[img_b = img_c] / Σ_c' 1[img_b = img_c']``: each caption's mass spread over copies of its image."""
    same = (image_ids[:, None] == image_ids[None, :]).float()  # (B, B)
    return same / same.sum(dim=1, keepdim=True)


def soft_contrastive(text: torch.Tensor, image: torch.Tensor, image_ids: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft targets, both directions averaged; L2 normalization only here.

    ``S_bc = ŝ_b·v̂_c / τ``; ``L = ½[CE(S, q) + CE(Sᵀ, q)]`` where the rows of Sᵀ are the batch's images,
    duplicates included (a batch holds one image row per caption).
    """
    logits = F.normalize(text, dim=-1) @ F.normalize(image, dim=-1).T / tau  # (B, B)
    q = soft_targets(image_ids)  # symmetric, so it serves both directions
    t2i = -(q * logits.log_softmax(dim=1)).sum(dim=1).mean()
    i2t = -(q * logits.T.log_softmax(dim=1)).sum(dim=1).mean()
    return 0.5 * (t2i + i2t)


class CLLLoss(nn.Module):
    """``L = γ_cl·L_cl + γ_cm·L_cm`` with a learnable temperature τ (init 0.07, clamped to [0.001, 0.5]).

    A new instance per task re-creates τ at its initial value, as the reference does.
    """

    def __init__(self, cross_lingual_weight: float = 1.0, cross_modal_weight: float = 0.01, temperature: float = 0.07):
        super().__init__()
        self.cross_lingual_weight = cross_lingual_weight
        self.cross_modal_weight = cross_modal_weight
        self.temperature = nn.Parameter(torch.tensor(float(temperature)))

    def clamp_temperature(self) -> torch.Tensor:
        with torch.no_grad():
            self.temperature.clamp_(TAU_MIN, TAU_MAX)  # in place, before every use
        return self.temperature

    def forward(
        self, student: torch.Tensor, teacher_text: torch.Tensor, image: torch.Tensor | None, image_ids: torch.Tensor,
        current: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Named terms: ``cross_lingual``, ``cross_modal`` (unweighted) and ``loss`` (the weighted total).

        ``current`` (B,) bool restricts the cross-lingual MSE to the task's own rows (ER: memory rows get the
        replay term instead, §7); the contrastive term runs over every row. A term with weight 0 is not
        computed (reported as 0), so e.g. a text-only stage never reads ``image``.

        Data parallel: the contrastive term runs over the global batch (every rank's rows gathered), as on one
        process; otherwise each rank's batch share would shrink the negatives as workers are added.
        """
        zero = student.new_zeros(())
        terms = {"cross_lingual": zero, "cross_modal": zero}
        if self.cross_lingual_weight:
            rows = slice(None) if current is None else current
            terms["cross_lingual"] = cross_lingual_mse(student[rows], teacher_text[rows])
        if self.cross_modal_weight:
            if image is None:
                raise ValueError("the cross-modal loss needs image features, but the batch has none")
            rows = gather_rows({"image": image, "image_ids": image_ids})
            terms["cross_modal"] = soft_contrastive(gather_with_grad(student), rows["image"], rows["image_ids"],
                                                    self.clamp_temperature())
        terms["loss"] = self.cross_lingual_weight * terms["cross_lingual"] + self.cross_modal_weight * terms["cross_modal"]
        return terms
