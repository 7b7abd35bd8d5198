"""The expandable token embedding and its token-frequency bookkeeping (method.md §1.5, §2.1, §2.2a-c)."""

from __future__ import annotations

import torch
from torch import nn


class ExpandableTokenEmbedding(nn.Module):
    """A token-embedding matrix that grows one language at a time.

    ``token_frequencies`` (float, length V) follows the reference's ``EmbeddingWrapper``: 1 for every row of the
    base model; +1 for every existing row whenever a task starts while the vocabulary still has the base model's
    size (``plus_one_before_the_frist_task``: once when the first task adds tokens, once more for every earlier
    task that added none); 1 for every new row; +1 (per language) for each row used by a task when that task is
    committed. During task t this gives
    ``f_i(t) = 1 + 1[i in base vocab]·k_t + #{s < t : token i occurs in task s's training captions}``, with
    ``k_t`` the number of tasks s <= t that started from a base-sized vocabulary (1 when the first task adds
    tokens). ``base_size`` is stored, so a loaded checkpoint keeps the rule.
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())
        self.register_buffer("token_frequencies", torch.ones(weight.shape[0]))
        self.register_buffer("base_size", torch.tensor(weight.shape[0], dtype=torch.long))
        # True while an optimizer that reads only the batch's rows trains it: the gradient is then a sparse
        # tensor of the rows the batch used, not a (V, D) matrix of zeros, so memory and clipping stay flat in V
        self.sparse_grad = False

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.weight.shape[1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(ids, self.weight, sparse=self.sparse_grad)  # (B, L) -> (B, L, D)

    @torch.no_grad()
    def grow(self, new_size: int, mean: float, std: float, generator: torch.Generator | None = None) -> None:
        """Append ``new_size - V`` rows drawn i.i.d. from N(mean, std²); old rows are copied exactly.

        As in the reference, the whole new matrix is filled at random first and the old rows are then
        overwritten. A call on a base-sized vocabulary first adds 1 to every row (the reference's test is
        ``old_vocab_size == clip_vocab_size``, so it repeats while tasks add no token).
        """
        old = self.weight.detach()
        if new_size < old.shape[0]:
            raise ValueError(f"the vocabulary can only grow: {old.shape[0]} -> {new_size}")
        new = torch.empty(new_size, old.shape[1], dtype=old.dtype, device=old.device)
        new.normal_(mean, std, generator=generator)
        new[: old.shape[0]] = old
        self.weight = nn.Parameter(new, requires_grad=self.weight.requires_grad)

        freqs = torch.ones(new_size, dtype=self.token_frequencies.dtype, device=old.device)
        freqs[: old.shape[0]] = self.token_frequencies
        if old.shape[0] == int(self.base_size):
            freqs[: old.shape[0]] += 1
        self.token_frequencies = freqs

    @torch.no_grad()
    def matrix_statistics(self) -> tuple[float, float]:
        """Scalar mean and unbiased std over every element of the current matrix (TEIR init, §2.1)."""
        w = self.weight.detach().float()
        return w.mean().item(), w.std().item()

    @torch.no_grad()
    def commit_task_tokens(self, token_ids: torch.Tensor, counts: torch.Tensor | None = None) -> None:
        """Add each token's language count (1 for a one-language task) to its frequency, once per task."""
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.token_frequencies.device)
        add = torch.ones(len(ids)) if counts is None else torch.as_tensor(counts, dtype=torch.float32)
        self.token_frequencies.index_add_(0, ids, add.to(self.token_frequencies))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D102
        # Checkpoints carry a grown matrix: resize before loading so shapes match.
        state_dict = _upgrade(dict(state_dict), self.base_size)
        weight = state_dict["weight"]
        if weight.shape != self.weight.shape:
            self.weight = nn.Parameter(torch.empty_like(weight), requires_grad=self.weight.requires_grad)
            self.token_frequencies = torch.empty_like(state_dict["token_frequencies"])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # a parent module's load_state_dict
        upgraded = _upgrade({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}, self.base_size)
        for key in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[key]
        state_dict.update({prefix + k: v for k, v in upgraded.items()})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _upgrade(state: dict, base_size: torch.Tensor) -> dict:
    """A checkpoint written before ``base_size`` was stored held a ``base_counted`` flag instead: the base size
    of the model this embedding was built from is the right one (a run never changes its base)."""
    if "weight" in state and "base_size" not in state:
        state.pop("base_counted", None)
        state["base_size"] = base_size.detach().clone()
    return state


def teir_row_scale(
    num_rows: int,
    task_token_ids: torch.Tensor,
    frequencies: torch.Tensor,
    special_ids: list[int],
    power: float = 1.0,
) -> torch.Tensor:
    """Per-row TEIR scale ``r_i = c_i / f_i^p`` with ``c_i = 1[i in T_t]`` and ``r_i = 0`` for special tokens.

    ``p = 1`` is the paper's ``current_reciprocal`` (method.md §2.2c); other powers are a tuning knob.
    """
    r = torch.zeros(num_rows, dtype=torch.float32)
    ids = torch.as_tensor(task_token_ids, dtype=torch.long)
    r[ids] = 1.0 / frequencies.detach().float().cpu()[ids].pow(power)
    r[torch.as_tensor(special_ids, dtype=torch.long)] = 0.0
    return r
