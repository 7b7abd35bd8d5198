"""The CLL-CLIP student (method.md §1): CLIP's frozen text tower over an expandable token embedding.

Every open_clip attribute access lives here, so the rest of the project depends only on ``TextStudent`` and
``build_clip``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from contextlib import contextmanager
from importlib import resources

import open_clip
import torch
from torch import nn

from cll_ray.embedding import ExpandableTokenEmbedding

_REGISTERED = False


def register_model_configs() -> None:
    """Register the project's architectures (``cll_ray/model_configs/*.json``) with open_clip."""
    global _REGISTERED
    if not _REGISTERED:
        open_clip.add_model_config(resources.files("cll_ray") / "model_configs")
        _REGISTERED = True


def model_config(arch: str, vocab_size: int, eos_id: int) -> dict:
    """open_clip's config of ``arch`` with a text vocabulary of ``vocab_size`` tokens pooled at the first EOS.

    open_clip's default ``argmax`` pooling assumes EOS is the largest id, false once the vocabulary grows (§1.3).
    """
    register_model_configs()
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"unknown open_clip architecture '{arch}'")
    return dict(cfg, text_cfg=dict(cfg["text_cfg"], vocab_size=vocab_size, eos_id=eos_id, pool_type="eos"))


def build_clip(arch: str, vocab_size: int, eos_id: int, pretrained: str | None = None) -> open_clip.CLIP:
    """An open_clip CLIP of architecture ``arch`` with a text vocabulary of ``vocab_size`` tokens.

    ``pretrained`` is a local weights file; nothing is ever downloaded.
    """
    text_cfg = model_config(arch, vocab_size, eos_id)["text_cfg"]
    if pretrained:
        model = open_clip.create_model(arch, pretrained=pretrained, text_cfg=text_cfg, require_pretrained=True)
    else:
        with _without_random_init_warning():
            model = open_clip.create_model(arch, pretrained=None, text_cfg=text_cfg)
    return model


class _RandomInitFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextmanager
def _without_random_init_warning():
    """open_clip warns "No pretrained weights loaded ... initialized randomly" (on the root logger) for every
    model built without ``pretrained``; here that is never true news: every caller loads weights right after,
    except pretraining, which starts from random weights on purpose."""
    root = logging.getLogger()
    quiet = _RandomInitFilter()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


@contextmanager
def attention_backend(device: torch.device | str = "cpu"):
    """On CPU, the plain (math) attention kernel: 1.2-2x faster than the CPU flash kernel at CLIP-text lengths."""
    if torch.device(device).type != "cpu":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield



def eos_first_pool(hidden: torch.Tensor, ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Hidden state at the FIRST occurrence of ``eos_id`` in each row (method.md §1.3, trap 2).

    open_clip's ``argmax(ids)`` pooling assumes EOS is the largest id, which stops being true once new tokens are
    appended after it. A row without EOS (cannot happen with our tokenizer) pools at its last position.
    """
    is_eos = ids == eos_id  # (B, L)
    last = torch.full((ids.shape[0],), ids.shape[1] - 1, device=ids.device)
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), last)
    return hidden[torch.arange(ids.shape[0], device=ids.device), first]  # (B, D)


def trim_after_eos(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """The batch cut after its last first-EOS column: what EOS-first pooling reads is unchanged.

    Attention is causal, so a position never sees later ones; the pooled position (each row's first EOS) only
    sees the columns kept. Captions are far shorter than the 77-token context, so this is most of the compute.
    """
    is_eos = ids == eos_id
    if ids.ndim != 2 or not bool(is_eos.any(dim=1).all()):
        return ids  # a row without EOS pools at its last position: keep the whole context
    return ids[:, : int(is_eos.int().argmax(dim=1).max()) + 1]


class TextStudent(nn.Module):
    """CLIP's text tower with an expandable token embedding; only the embedding is trainable by default."""

    def __init__(self, clip: open_clip.CLIP, eos_id: int) -> None:
        super().__init__()
        self.token_embedding = ExpandableTokenEmbedding(clip.token_embedding.weight)
        # own copies: methods that train or wrap the tower (finetune_all, LoRA) must not touch the base model
        self.positional_embedding = copy.deepcopy(clip.positional_embedding)
        self.transformer = copy.deepcopy(clip.transformer)
        self.ln_final = copy.deepcopy(clip.ln_final)
        self.text_projection = copy.deepcopy(clip.text_projection)
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.eos_id = eos_id
        # a method's per-layer module, applied to every block's output: ``layer_adapter(i, x) -> x``
        self.layer_adapter: nn.Module | None = None
        self.freeze_backbone()

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    def freeze_backbone(self) -> None:
        """Freeze everything but the token embedding (position table, blocks, final LN, projection: §1.2)."""
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith("token_embedding."))

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("token_embedding.")}

    def encode_layers(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """open_clip's ``Transformer.forward``, with ``layer_adapter`` after every block (MLA's slot, §7)."""
        batch_first = self.transformer.batch_first
        x = x if batch_first else x.transpose(0, 1)
        for i, block in enumerate(self.transformer.resblocks):
            x = block(x, attn_mask=mask)
            if self.layer_adapter is not None:
                x = self.layer_adapter(i, x)
        return x if batch_first else x.transpose(0, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Unnormalized sentence embeddings ``s = W_proj · LN(h_L)[first EOS]``: (B, L) -> (B, E)."""
        return self.encode_tokens(ids, self.token_embedding, self.eos_id)

    def encode_tokens(self, ids: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor], pool_id: int) -> torch.Tensor:
        """``embed(ids)`` + CLIP's positions through the tower, final LN, pooled at the first ``pool_id``, projected."""
        ids = trim_after_eos(ids, pool_id)
        x = embed(ids) + self.positional_embedding[: ids.shape[1]]  # (B, L, D)
        mask = self.attn_mask[: ids.shape[1], : ids.shape[1]]
        with attention_backend(ids.device):
            x = self.encode_layers(x, mask)
        x = self.ln_final(x)
        pooled = eos_first_pool(x, ids, pool_id)  # (B, D)
        proj = self.text_projection
        return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj  # (B, E)


class MLAStudent(TextStudent):
    """MLA's language acquisition encoder (mla.md §1.2) beside CLIP's untouched text path.

    ``multilingual`` False: CLIP's own token embedding (a frozen copy), positions, tower and projection, pooled
    at EOS; with no acquirer active this is the base model exactly (MLA's English). True: the separate
    multilingual table (``token_embedding``, width d_emb: what grows and what TEIR scales), a linear
    ``input_map`` d_emb → text width, CLIP's positions, the frozen tower with the active language's acquirers
    (``layer_adapter``), the final LN and projection, pooled at ``[SEP]``.
    """

    def __init__(self, clip: open_clip.CLIP, eos_id: int, table: torch.Tensor, sep_id: int, seed: int = 0) -> None:
        super().__init__(clip, eos_id)
        self.clip_embedding = nn.Embedding.from_pretrained(clip.token_embedding.weight.detach().clone(), freeze=True)
        self.token_embedding = ExpandableTokenEmbedding(table)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # every data-parallel rank (and a resumed run) starts from the same map
            self.input_map = nn.Linear(table.shape[1], self.transformer.width)  # PyTorch's default init
        self.sep_id = sep_id
        self.multilingual = False
        self.freeze_backbone()

    def multilingual_embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.input_map(self.token_embedding(ids))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.multilingual:
            return self.encode_tokens(ids, self.multilingual_embed, self.sep_id)
        return self.encode_tokens(ids, self.clip_embedding, self.eos_id)
