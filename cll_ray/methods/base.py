"""The hooks a method implements. The engine calls them; a method never reaches into trainer state."""

from __future__ import annotations

import torch

from cll_ray.config import MethodConfig, TrainConfig
from cll_ray.embedding import ExpandableTokenEmbedding


class Method:
    """Base class: hooks around one language task.

    Order per task: ``new_row_distribution`` (when the vocabulary grows) -> ``build_optimizer`` ->
    ``extra_loss_terms`` every step -> ``end_task``. ``state_dict``/``load_state_dict`` carry what the method
    keeps across tasks (memories, Fisher, …) in checkpoints: tensors and plain values only.
    """

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg

    @property
    def name(self) -> str:
        return self.cfg.name

    def new_row_distribution(self, embedding: ExpandableTokenEmbedding) -> tuple[float, float]:
        """(mean, std) of the normal distribution new embedding rows are drawn from."""
        raise NotImplementedError

    def build_optimizer(
        self,
        embedding: torch.nn.Parameter,
        other_params: list[torch.nn.Parameter],
        row_scale: torch.Tensor,
        train: TrainConfig,
    ) -> torch.optim.Optimizer:
        """The task's optimizer (fresh each task). ``row_scale`` is TEIR's r_i for every row."""
        raise NotImplementedError

    def extra_loss_terms(self, batch: dict, terms: dict) -> dict[str, torch.Tensor]:
        """Method-specific named loss terms added to the total (weighted already)."""
        return {}

    def end_task(self, lang: str) -> None:
        """Called once after the task's best epoch is restored."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None
