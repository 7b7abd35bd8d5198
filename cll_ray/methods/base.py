"""The hooks a method implements. The engine calls them; a method never reaches into trainer state."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from cll_ray.config import MethodConfig, TrainConfig
from cll_ray.embedding import ExpandableTokenEmbedding


@dataclass(frozen=True)
class Stage:
    """One training stage of a task: its epochs, its loss weights and whether images are read at all."""

    name: str
    epochs: int
    cross_lingual_weight: float
    cross_modal_weight: float
    temperature: float
    learn_temperature: bool = True
    use_images: bool = True


@dataclass(frozen=True)
class TaskSpec:
    """A task of the sequence: its name (a language code, or ``joint``) and the languages it trains on."""

    name: str
    languages: tuple[str, ...]


class Method:
    """Base class: hooks around one task of the sequence.

    Once: ``attach(student)``. Per task: ``new_row_distribution`` (when the vocabulary grows) ->
    ``begin_task`` (trainable parameters, per-language modules) -> per stage ``begin_stage`` and
    ``build_optimizer``; per step ``extend_batch`` -> forward -> ``extra_loss_terms`` -> ``after_step``; after
    the last epoch ``after_training`` (before the best epoch is restored) -> ``end_task``. ``activate(lang)``
    routes the student to a language (evaluation). ``state_dict``/``load_state_dict`` carry what the method
    keeps across tasks (memories, Fisher, adapters, …) in checkpoints: tensors and plain values only.
    """

    # every training batch holds one language of a multi-language task (MLA's joint schedule), its rows carry
    # the language's index as ``group``
    one_language_per_batch = False

    def __init__(self, cfg: MethodConfig) -> None:
        self.cfg = cfg
        self.student = None

    @property
    def name(self) -> str:
        return self.cfg.name

    # ---- the sequence --------------------------------------------------------------------------------------
    def tasks(self, order: list[str]) -> list[TaskSpec]:
        """The tasks for a language order: one per language (continual learning)."""
        return [TaskSpec(lang, (lang,)) for lang in order]

    def build_student(self, base, seed: int):
        """The learner's student over ``base`` (a ``BaseModel``): CLIP's text tower with its token embedding."""
        from cll_ray.model import TextStudent

        return TextStudent(base.clip, base.tokenizer.eos_id)

    def initial_tokenizer(self, base):
        """The tokenizer the student's ``token_embedding`` starts with: the base model's."""
        return base.tokenizer

    @property
    def tokenizer_family(self) -> str:
        """Methods of one family grow the same tokenizers from the same captions, so a run plans (and tokenizes
        its datasets) once per family: CLIP's BPE here."""
        return "clip_bpe"

    def grow_tokenizer(self, tokenizer, captions: list[str], vocab_size: int, name: str, train_bpe):
        """``tokenizer`` grown by a BPE of ``vocab_size`` trained on ``captions`` by ``train_bpe`` (the learner's
        cached language rule, §1.4): (grown, GrowthStats)."""
        from cll_ray.tokenization import grow

        return grow(tokenizer, train_bpe(captions, vocab_size), name)

    def keeps_base_path(self, lang: str) -> bool:
        """Whether ``lang`` never leaves the base model's own tokenizer, embedding and tower (MLA's English): its
        task grows and trains nothing."""
        return False

    def on_base_path(self, lang: str) -> bool:
        """Whether ``lang``'s text is encoded by the base tokenizer now (MLA: English, and languages not learned yet)."""
        return self.keeps_base_path(lang)

    def attach(self, student) -> None:
        """Called once with the learner's student, before any task or state is loaded."""
        self.student = student

    def new_row_distribution(self, embedding: ExpandableTokenEmbedding) -> tuple[float, float]:
        """(mean, std) of the normal distribution new embedding rows are drawn from."""
        raise NotImplementedError

    def begin_task(self, task: TaskSpec, index: int) -> None:
        """After the embedding grew: choose what trains (default: the token embedding only, §1.2)."""
        self.student.freeze_backbone()

    def memory_token_sets(self) -> dict[str, np.ndarray]:
        """Token ids per language of stored samples that join this task's T_t (ER/DER under TEIR, §2.2b)."""
        return {}

    def stages(self, task: TaskSpec, train: TrainConfig) -> list[Stage]:
        """The task's training stages: one CLL-CLIP stage by default (L = γ_cl·MSE + γ_cm·contrastive)."""
        c = self.cfg
        return [Stage("train", train.epochs, c.cross_lingual_weight, c.cross_modal_weight, c.temperature)]

    def begin_stage(self, stage: Stage) -> None:
        """Before a stage's optimizer is built (a method may change what trains between stages)."""

    def build_optimizer(
        self,
        embedding: torch.nn.Parameter,
        other_params: list[torch.nn.Parameter],
        row_scale: torch.Tensor,
        train: TrainConfig,
    ) -> torch.optim.Optimizer:
        """The stage's optimizer (fresh each task). ``row_scale`` is TEIR's r_i for every row."""
        raise NotImplementedError

    # ---- every step ----------------------------------------------------------------------------------------
    def extend_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch the forward sees (ER appends memory rows and a ``from_memory`` mask)."""
        return batch

    def extra_loss_terms(self, batch: dict, terms: dict) -> dict[str, torch.Tensor]:
        """Method-specific named loss terms added to the total (weighted already).

        ``terms["embedding"]`` is the student's output for the batch (B, E), with its graph.
        """
        return {}

    def after_step(self, batch: dict[str, torch.Tensor], embedding: torch.Tensor) -> None:
        """After the optimizer step, with the batch and the (detached) student outputs."""

    # ---- end of a task -------------------------------------------------------------------------------------
    def after_training(self, module: torch.nn.Module, batches: Callable[[], Iterable[dict]], train: TrainConfig) -> None:
        """After a stage's last epoch, with its last-epoch weights still in place (oEWC's Fisher pass, §7)."""

    def end_task(self, lang: str) -> None:
        """Called once after the task's best epoch is restored."""

    def activate(self, lang: str | None) -> None:
        """Route the student to ``lang``'s modules (test-time language identity, §6.1); None = none."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None
