"""Per-language modules routed by language identity (method.md §7 ``LoRA``, ``MLA``; mla.md §1.2).

Each *site* (a place in the text tower) holds one bank of parameters per language in an ``nn.ModuleDict`` and
applies the bank of its ``active`` language (none: the site is the identity). At task t the method adds the
language's banks, trains only them (plus the token embedding), and freezes them afterwards; evaluation of
language j activates j's banks (``--wisely_activate_adapter``), so only the shared embedding can forget.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cll_ray.methods.base import TaskSpec
from cll_ray.methods.cll_clip import CLLCLIP


class Site(nn.Module):
    """A place with one parameter bank per language and a routing switch."""

    def __init__(self) -> None:
        super().__init__()
        self.banks = nn.ModuleDict()
        self.active: str | None = None

    def new_bank(self) -> nn.Module:
        raise NotImplementedError

    def bank(self) -> nn.Module | None:
        return self.banks[self.active] if self.active in self.banks else None


class Bottleneck(nn.Module):
    """``W_up ReLU(W_down y + b_down) + b_up``; weights N(0, 0.02), zero biases (adapters' ``bert`` init), or
    PyTorch's default ``nn.Linear`` init (``bert_init=False``: MLA's acquirers, mla.md §1.2)."""

    def __init__(self, width: int, hidden: int, bert_init: bool = True) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(width, hidden), nn.Linear(hidden, width)
        for linear in (self.down, self.up) if bert_init else ():
            nn.init.normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.down(y)))


class AdapterSite(Site):
    """After a block's output y (= x + FFN(LN2(x))): ``y' = y + Bottleneck(y)``, no extra LayerNorm."""

    def __init__(self, width: int, hidden: int, bert_init: bool = True) -> None:
        super().__init__()
        self.width, self.hidden, self.bert_init = width, hidden, bert_init

    def new_bank(self) -> nn.Module:
        return Bottleneck(self.width, self.hidden, self.bert_init)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        bank = self.bank()
        return y if bank is None else y + bank(y)


class LayerAdapters(nn.Module):
    """The student's ``layer_adapter``: site i after block i."""

    def __init__(self, sites: list[AdapterSite]) -> None:
        super().__init__()
        self.sites = nn.ModuleList(sites)

    def forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.sites[i](x)


class LoRAPair(nn.Module):
    """ΔW = (α/r)·B·A for q and v; A Kaiming-uniform, B = 0, so a new bank starts as the identity change."""

    def __init__(self, width: int, rank: int) -> None:
        super().__init__()
        self.a_q, self.a_v = (nn.Parameter(torch.empty(rank, width)) for _ in range(2))
        self.b_q, self.b_v = (nn.Parameter(torch.zeros(width, rank)) for _ in range(2))
        for a in (self.a_q, self.a_v):
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))


class LoRAAttention(Site):
    """Wraps a block's ``nn.MultiheadAttention``: the packed q/k/v projection gets the active bank's ΔW_q, ΔW_v."""

    def __init__(self, attn: nn.MultiheadAttention, rank: int, alpha: float) -> None:
        super().__init__()
        if not attn._qkv_same_embed_dim:
            raise ValueError("LoRA expects open_clip's packed q/k/v attention projection")
        self.attn, self.rank, self.scale = attn, rank, alpha / rank

    def new_bank(self) -> nn.Module:
        return LoRAPair(self.attn.embed_dim, self.rank)

    def forward(self, query, key, value, need_weights: bool = False, attn_mask=None, **kwargs):
        bank = self.bank()
        if bank is None:
            return self.attn(query, key, value, need_weights=need_weights, attn_mask=attn_mask, **kwargs)
        a = self.attn
        zeros = torch.zeros_like(a.out_proj.weight)  # k is not adapted
        delta = torch.cat([bank.b_q @ bank.a_q, zeros, bank.b_v @ bank.a_v]) * self.scale  # (3D, D)
        q, k, v = ((t.transpose(0, 1) for t in (query, key, value)) if a.batch_first else (query, key, value))
        out, weights = F.multi_head_attention_forward(
            q, k, v, a.embed_dim, a.num_heads, a.in_proj_weight + delta, a.in_proj_bias, a.bias_k, a.bias_v,
            a.add_zero_attn, a.dropout, a.out_proj.weight, a.out_proj.bias, training=self.training,
            need_weights=need_weights, attn_mask=attn_mask,
        )
        return (out.transpose(0, 1) if a.batch_first else out), weights


class LanguageRouted(CLLCLIP):
    """CLL-CLIP plus per-language banks at ``sites``; subclasses build and install the sites in ``attach``."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.sites: list[Site] = []

    def bottleneck_width(self, student) -> int:
        width = student.transformer.width
        hidden = self.cfg.adapter_width or width // 2  # reduction factor 2: 512 -> 256 (§7)
        if hidden <= 0:
            raise ValueError(f"method.adapter_width must be > 0 (or 0 for width/2), got {self.cfg.adapter_width}")
        return hidden

    @property
    def languages(self) -> list[str]:
        return list(self.sites[0].banks) if self.sites else []

    def add_language(self, lang: str) -> None:
        device = self.student.token_embedding.weight.device
        for site in self.sites:
            if lang not in site.banks:
                site.banks[lang] = site.new_bank().to(device)

    def language_parameters(self, lang: str) -> list[nn.Parameter]:
        return [p for site in self.sites for p in site.banks[lang].parameters()]

    def begin_task(self, task: TaskSpec, index: int) -> None:
        super().begin_task(task, index)  # everything frozen but the token embedding, earlier banks included
        self.add_language(task.name)
        for p in self.language_parameters(task.name):
            p.requires_grad_(True)
        self.activate(task.name)

    def end_task(self, lang: str) -> None:
        for p in self.language_parameters(lang):
            p.requires_grad_(False)  # frozen after its task

    def activate(self, lang: str | None) -> None:
        for site in self.sites:
            site.active = lang

    def state_dict(self) -> dict:
        return {"languages": self.languages,
                "sites": [{k: v.detach().cpu() for k, v in site.banks.state_dict().items()} for site in self.sites]}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        for lang in state["languages"]:
            self.add_language(lang)
        for site, weights in zip(self.sites, state["sites"], strict=True):
            site.banks.load_state_dict(weights)
        for p in (p for lang in self.languages for p in self.language_parameters(lang)):
            p.requires_grad_(False)


class LoRA(LanguageRouted):
    """r = 8, α = 8 on attention q and v of every text layer, one set per language (§7, adapters' ``lora``)."""

    def attach(self, student) -> None:
        super().attach(student)
        if self.cfg.lora_rank <= 0:
            raise ValueError(f"method.lora_rank must be > 0, got {self.cfg.lora_rank}")
        for block in student.transformer.resblocks:
            block.attn = LoRAAttention(block.attn, self.cfg.lora_rank, self.cfg.lora_alpha)
            self.sites.append(block.attn)
        student.freeze_backbone()


class MLAAdapter(LanguageRouted):
    """The CLL-CLIP paper's MLA baseline: a bottleneck adapter after every layer's output, one per language."""

    bert_init = True  # adapters' init (§7); MLA's acquirers keep PyTorch's

    def attach(self, student) -> None:
        super().attach(student)
        hidden = self.bottleneck_width(student)
        self.sites = [AdapterSite(student.transformer.width, hidden, self.bert_init)
                      for _ in student.transformer.resblocks]
        student.layer_adapter = LayerAdapters(self.sites)
        student.freeze_backbone()
