"""MLA as its authors built it (mla.md §1.2-§1.3; Zhang, Hu & Jin, NeurIPS 2022; AIM3-RUC/MLA), on the CLL sequence.

- **English stays on CLIP's untouched path**: CLIP's tokenizer, token embedding and frozen tower, no acquirer.
  Its task trains nothing, so English scores after every task are the base model's.
- **Every other language goes through the language acquisition encoder** (``model.MLAStudent``): a separate
  multilingual token table of width d_emb (``method.mla_embedding_dim``) with its own WordPiece vocabulary, a
  linear d_emb → text width, CLIP's positions, the frozen tower with the language's **acquirers** (a residual
  width → width/2 → width ReLU MLP after every block, PyTorch's default init), the final LN, pooled at
  ``[SEP]``, CLIP's projection. The table is shared by the non-English languages. With ``method.mbert=DIR`` it
  starts as a local M-BERT's vocabulary and word embeddings and stays that vocabulary (the authors'); without,
  it grows per language: a WordPiece trained on the language's captions, its unseen tokens appended, new rows
  drawn by ``method.init`` (N(0, 0.02²), or TEIR's in ``mla_teir``, which also scales the table's updates).
- **Two stages**: Native Language Transfer (MSE to frozen CLIP's English embedding of the parallel caption; text
  only, no image is read), then Language Exposure (image-text InfoNCE at the fixed logit scale 100, τ 0.01).
  Both train what the authors' default switches train: the language's acquirers, the table and the linear map.
  ``mla`` runs them per language (a continual sequence cannot do otherwise); ``mla_joint`` runs the authors'
  schedule, each stage over every language at once with one language per batch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cll_ray.config import TrainConfig
from cll_ray.methods.adapters import MLAAdapter
from cll_ray.methods.base import Stage, TaskSpec
from cll_ray.methods.joint import AllLanguagesAtOnce
from cll_ray.wordpiece import grow_wordpiece, load_mbert, no_growth, specials_only, train_wordpiece

ENGLISH = "en"


class MLA(MLAAdapter):
    """Per-language acquirers (``MLAAdapter``'s sites) behind a separate multilingual embedding; English untouched."""

    bert_init = False

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        if cfg.mla_nlt_epochs < 0 or cfg.mla_le_epochs < 0 or cfg.mla_nlt_epochs + cfg.mla_le_epochs == 0:
            raise ValueError("method.mla_nlt_epochs and method.mla_le_epochs must be >= 0, not both 0")
        if cfg.mla_embedding_dim <= 0:
            raise ValueError(f"method.mla_embedding_dim must be > 0, got {cfg.mla_embedding_dim}")
        self._mbert = None  # (vocabulary, word embeddings), read once
        self.task_languages: list[str] = []  # the current task's non-English languages

    # ---- the student and its vocabulary ---------------------------------------------------------------------
    def mbert(self):
        if self.cfg.mbert and self._mbert is None:
            vocab, words = load_mbert(self.cfg.mbert)
            if words.shape[1] != self.cfg.mla_embedding_dim:
                raise ValueError(f"method.mbert: {self.cfg.mbert} has {words.shape[1]}-d word embeddings but "
                                 f"method.mla_embedding_dim is {self.cfg.mla_embedding_dim}; set them equal")
            self._mbert = vocab, words
        return self._mbert

    def initial_tokenizer(self, base):
        return self.mbert()[0] if self.cfg.mbert else specials_only()

    @property
    def tokenizer_family(self) -> str:  # a WordPiece grown per language, or a local M-BERT's fixed vocabulary
        if not self.cfg.mbert:
            return "wordpiece"
        import hashlib

        return "mbert-" + hashlib.sha256(str(Path(self.cfg.mbert).expanduser().resolve()).encode()).hexdigest()[:8]

    def build_student(self, base, seed: int):
        from cll_ray.model import MLAStudent

        if self.cfg.mbert:
            table = self.mbert()[1]
        else:  # the four specials' rows, drawn like any new row of the baseline init
            table = torch.empty(len(specials_only().vocab), self.cfg.mla_embedding_dim)
            table.normal_(self.cfg.init_mean, self.cfg.init_std, generator=torch.Generator().manual_seed(seed))
        return MLAStudent(base.clip, base.tokenizer.eos_id, table, self.initial_tokenizer(base).eos_id, seed)

    def grow_tokenizer(self, tokenizer, captions, vocab_size, name, train_bpe=None):  # WordPiece, not BPE
        if self.cfg.mbert:  # M-BERT's vocabulary covers every language, as in the authors' model
            return no_growth(tokenizer, name)
        language = train_wordpiece(captions, vocab_size, tokenizer.lowercase, tokenizer.strip_accents)
        return grow_wordpiece(tokenizer, language, name)

    # ---- routing --------------------------------------------------------------------------------------------
    def keeps_base_path(self, lang: str) -> bool:
        return lang == ENGLISH

    def on_base_path(self, lang: str) -> bool:
        # a language not learned yet is the base model's too: its zero-shot score is CLIP's, as for every method
        return lang == ENGLISH or lang not in self.languages

    def activate(self, lang: str | None) -> None:
        multilingual = lang is not None and not self.on_base_path(lang)
        self.student.multilingual = multilingual
        for site in self.sites:
            site.active = lang if multilingual else None

    # ---- a task ---------------------------------------------------------------------------------------------
    def begin_task(self, task: TaskSpec, index: int) -> None:
        self.student.freeze_backbone()
        self.task_languages = [lang for lang in task.languages if not self.keeps_base_path(lang)]
        if not self.task_languages:  # English: nothing trains
            self.student.token_embedding.weight.requires_grad_(False)
            self.activate(task.languages[0])
            return
        for lang in self.task_languages:
            self.add_language(lang)
            for p in self.language_parameters(lang):
                p.requires_grad_(True)
        self.student.input_map.requires_grad_(True)
        self.activate(self.task_languages[0])

    def stages(self, task: TaskSpec, train: TrainConfig) -> list[Stage]:
        if all(self.keeps_base_path(lang) for lang in task.languages):
            return []
        c = self.cfg
        nlt = Stage("nlt", c.mla_nlt_epochs, cross_lingual_weight=1.0, cross_modal_weight=0.0,
                    temperature=c.mla_le_temperature, learn_temperature=False, use_images=False)
        le = Stage("le", c.mla_le_epochs, cross_lingual_weight=0.0, cross_modal_weight=1.0,
                   temperature=c.mla_le_temperature, learn_temperature=False, use_images=True)
        return [s for s in (nlt, le) if s.epochs > 0]

    def extend_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if "group" in batch:  # one language per batch (mla_joint): route the student to it
            self.activate(self.task_languages[int(batch["group"][0])])
        return batch

    def end_task(self, lang: str) -> None:
        for other in self.languages:
            for p in self.language_parameters(other):
                p.requires_grad_(False)
        self.student.input_map.requires_grad_(False)

    # ---- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(),
                "input_map": {k: v.detach().cpu() for k, v in self.student.input_map.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        super().load_state_dict(state)
        self.student.input_map.load_state_dict(state["input_map"])
        self.student.input_map.requires_grad_(False)


class MLAJoint(AllLanguagesAtOnce, MLA):
    """The authors' schedule (mla.md §1.3): NLT over every language at once, then LE from its result, a random
    language per batch; English stays CLIP's. The non-continual reference for ``mla``, as ``joint`` is for CLL-CLIP.
    One WordPiece over all the languages' captions (``method.joint_vocab_size``; 0 = per-language size × languages)."""

    one_language_per_batch = True
