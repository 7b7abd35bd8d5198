"""The reference-equivalent training step: what the reference trains (transformers'
``CLIPTextModelWithProjection``), as it trains it (captions padded to the 77-token context, a dense AdamW over
the whole token embedding), on the same weights and the same two losses as cll-ray's step.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from cll_ray.losses import TAU_MAX, TAU_MIN, cross_lingual_mse, soft_contrastive
from cll_ray.model import TextStudent


def reference_text_model(student: TextStudent) -> CLIPTextModelWithProjection:
    """A transformers CLIP text model holding ``student``'s weights (token embedding, positions, blocks, final
    LN, projection), pooled at the first EOS as the reference's model is (its ``eos_token_id`` is set)."""
    blocks = student.transformer.resblocks
    first = blocks[0]
    gelu = first.mlp.gelu
    act = "quick_gelu" if type(gelu).__name__ == "QuickGELU" else "gelu"
    proj = student.text_projection
    proj_weight = proj.weight if isinstance(proj, nn.Linear) else proj.T  # open_clip: x @ P; Linear: x @ Wᵀ
    config = CLIPTextConfig(
        vocab_size=student.token_embedding.num_embeddings, hidden_size=student.transformer.width,
        intermediate_size=first.mlp.c_fc.out_features, projection_dim=proj_weight.shape[0],
        num_hidden_layers=len(blocks), num_attention_heads=first.attn.num_heads,
        max_position_embeddings=student.context_length, hidden_act=act, layer_norm_eps=student.ln_final.eps,
        eos_token_id=student.eos_id, pad_token_id=0, bos_token_id=student.eos_id - 1,
    )
    model = CLIPTextModelWithProjection(config)
    state = {
        "text_model.embeddings.token_embedding.weight": student.token_embedding.weight,
        "text_model.embeddings.position_embedding.weight": student.positional_embedding,
        "text_model.final_layer_norm.weight": student.ln_final.weight,
        "text_model.final_layer_norm.bias": student.ln_final.bias,
        "text_projection.weight": proj_weight,
    }
    for i, block in enumerate(blocks):
        at = f"text_model.encoder.layers.{i}."
        for name, w, b in zip(("q_proj", "k_proj", "v_proj"), block.attn.in_proj_weight.chunk(3),
                              block.attn.in_proj_bias.chunk(3), strict=True):
            state[at + f"self_attn.{name}.weight"], state[at + f"self_attn.{name}.bias"] = w, b
        pairs = {"self_attn.out_proj": block.attn.out_proj, "layer_norm1": block.ln_1, "layer_norm2": block.ln_2,
                 "mlp.fc1": block.mlp.c_fc, "mlp.fc2": block.mlp.c_proj}
        for name, module in pairs.items():
            state[at + f"{name}.weight"], state[at + f"{name}.bias"] = module.weight, module.bias
    missing, unexpected = model.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ValueError(f"the text tower does not map onto CLIPTextModelWithProjection: missing {missing}, "
                         f"unexpected {unexpected}")
    model.requires_grad_(False)
    model.text_model.embeddings.token_embedding.weight.requires_grad_(True)
    return model


def pad_to_context(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids zero-padded to the full context, and the attention mask the tokenizer gives with them."""
    padded = nn.functional.pad(ids, (0, context - ids.shape[1]))
    mask = torch.zeros_like(padded)
    mask[:, : ids.shape[1]] = ids != 0
    return padded, mask


class ReferenceStep:
    """One step of the reference's recipe: padding to the context, both losses, clipping, dense AdamW."""

    def __init__(self, model: CLIPTextModelWithProjection, lr: float, betas, eps: float, weight_decay: float,
                 grad_clip: float, cross_lingual_weight: float, cross_modal_weight: float, temperature: float,
                 autocast):
        self.model, self.grad_clip, self.autocast = model, grad_clip, autocast
        self.weights = (cross_lingual_weight, cross_modal_weight)
        device = model.text_projection.weight.device
        self.temperature = nn.Parameter(torch.tensor(float(temperature), device=device))
        self.embedding = model.text_model.embeddings.token_embedding.weight
        self.optimizer = torch.optim.AdamW(
            [{"params": [self.embedding], "weight_decay": weight_decay},
             {"params": [self.temperature], "weight_decay": 0.0}], lr=lr, betas=tuple(betas), eps=eps)
        self.context = model.config.max_position_embeddings

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = pad_to_context(batch["ids"], self.context)
        with self.autocast():
            text = self.model(input_ids=ids, attention_mask=mask).text_embeds
            with torch.no_grad():
                self.temperature.clamp_(TAU_MIN, TAU_MAX)
            mse = cross_lingual_mse(text, batch["teacher"])
            contrastive = soft_contrastive(text, batch["image"], batch["image_index"], self.temperature)
        return self.weights[0] * mse + self.weights[1] * contrastive

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([self.embedding, self.temperature], self.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def parameters(self) -> list[torch.Tensor]:
        return [self.embedding, self.temperature]
