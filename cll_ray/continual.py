"""One continual learner: the state that carries across language tasks, and the per-task steps around the engine.

Per task (method.md §1.4-§2.2, §4): train the language's BPE on its training captions, grow the tokenizer and
the embedding (the method picks the new rows' distribution), compute the task token set T_t and the TEIR scale
r_i, train with the engine, keep the best epoch, then count the task's tokens in the frequency buffer.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cll_ray import dataset as ds
from cll_ray.base_model import BaseModel
from cll_ray.config import ExperimentConfig
from cll_ray.embedding import teir_row_scale
from cll_ray.engine import RetrievalSet, TaskModule, TaskOutcome, TrainSet, evaluate, train_one_task
from cll_ray.features import FeatureStore
from cll_ray.losses import CLLLoss
from cll_ray.methods import build_method
from cll_ray.methods.base import Stage, TaskSpec
from cll_ray.model import TextStudent
from cll_ray.tokenization import ClipBPE, GrowthStats, train_bpe_cached
from cll_ray.wordpiece import WordPieceVocab, no_growth, tokenizer_from_json

TOKENIZER_CACHE = "tokenizers"  # under the data home: <key>.json per trained language BPE


@dataclass
class PreparedTask:
    lang: str  # the task's name: its language, or "joint"
    index: int
    growth: GrowthStats
    task_tokens: np.ndarray  # T_t: ids of the task's training captions, no BOS/EOS, no truncation
    row_scale: torch.Tensor  # r_i for every row
    train: TrainSet | None  # None when the rows come from elsewhere (a Ray Data shard)
    val: list[RetrievalSet]  # one per language of the task (validation averages them)
    spec: TaskSpec | None = None
    token_counts: np.ndarray | None = None  # languages using each T_t token (f_i increment, §2.2a)


class ContinualLearner:
    """The student, its growing tokenizer and the method, over a dataset in the canonical layout."""

    def __init__(self, base: BaseModel, features: FeatureStore, dataset_dir: str | Path, cfg: ExperimentConfig):
        self.base = base
        self.features = features
        self.dataset_dir = Path(dataset_dir)
        self.cfg = cfg
        self.method = build_method(cfg.method)
        self.student: TextStudent = self.method.build_student(base, cfg.train.seed)
        self.method.attach(self.student)
        # the tokenizer of the student's token_embedding (MLA: its multilingual WordPiece, not CLIP's BPE)
        self.tokenizer: ClipBPE | WordPieceVocab = self.method.initial_tokenizer(base)
        self.tasks: list[dict] = []  # one record per completed task
        self.plan: dict[str, tuple[ClipBPE, GrowthStats]] = {}  # growth computed ahead (the Ray driver's)
        self._split_images = ds.image_ids_by_split(self.dataset_dir)

    @property
    def context_length(self) -> int:
        return self.student.context_length

    # ---- data -----------------------------------------------------------------------------------------------
    def tokenizer_for(self, lang: str) -> ClipBPE | WordPieceVocab:
        """The tokenizer of ``lang``'s text now: the base model's where the method keeps ``lang`` on the base
        path (MLA's English, and languages it has not learned yet), else the learned one."""
        return self.base.tokenizer if self.method.on_base_path(lang) else self.tokenizer

    def task_tokenizer(self, lang: str) -> ClipBPE | WordPieceVocab:
        """The tokenizer of ``lang``'s training captions at its task, from the growth plan (the Ray driver's)."""
        return self.base.tokenizer if self.method.keeps_base_path(lang) else self.plan[lang][0]

    def trained_languages(self, spec: TaskSpec) -> tuple[str, ...]:
        """The languages of a task whose captions train (MLA's English trains nothing)."""
        return tuple(lang for lang in spec.languages if not self.method.keeps_base_path(lang))

    def retrieval_set(self, lang: str, split: str, tokenizer: ClipBPE | None = None) -> RetrievalSet:
        """``lang``'s captions of ``split`` against every image of that split."""
        tokenizer = tokenizer or self.tokenizer_for(lang)
        caps = ds.read_captions(self.dataset_dir, lang, splits=(split,))
        images = self._split_images[split]
        position = {image_id: i for i, image_id in enumerate(images)}
        return RetrievalSet(
            ids=torch.from_numpy(tokenizer.encode(caps.captions, self.context_length)),
            caption_image=np.array([position[i] for i in caps.image_ids], dtype=np.int64),
            image_features=self.features.image_features[self.features.image_rows(images)],
        )

    def _train_set(self, lang: str, caps: ds.CaptionTable) -> TrainSet:
        english = caps.captions if lang == "en" else caps.captions_en  # for en, x_tgt = x_en (§3)
        return TrainSet.from_rows(self.tokenizer_for(lang).encode(caps.captions, self.context_length),
                                  self.features.text_rows(english), self.features.image_rows(caps.image_ids),
                                  self.features)

    def plan_growth(self, order: list[str]) -> tuple[ClipBPE, list[GrowthStats]]:
        """Grow a copy of the tokenizer through ``order``: the final tokenizer and each task's growth."""
        current, stats = self.tokenizer, []
        for lang in order:
            current, growth = self._grow(current, lang)
            stats.append(growth)
        return current, stats

    def use_plan(self, final: ClipBPE, stats: list[GrowthStats]) -> None:
        """Take each task's grown tokenizer from a plan (prefixes of ``final``) instead of retraining BPEs."""
        merges = len(self.tokenizer.merges)
        for growth in stats:
            merges += growth.merges_added
            self.plan[growth.lang] = (final.prefix(growth.new_size, merges), growth)

    # ---- the task steps -------------------------------------------------------------------------------------
    def grown_tokenizer(self, lang: str, captions: list[str] | None = None) -> tuple[ClipBPE, GrowthStats]:
        """The current tokenizer grown by ``lang``'s BPE (trained on its training captions); a pure function."""
        planned = self.plan.get(lang)
        if planned is not None and planned[1].old_size == self.tokenizer.size:
            return planned
        return self._grow(self.tokenizer, lang, captions)

    def _grow(self, tokenizer: ClipBPE, lang: str, captions: list[str] | None = None) -> tuple[ClipBPE, GrowthStats]:
        if self.method.keeps_base_path(lang):
            return no_growth(tokenizer, lang)
        if captions is None:
            captions = ds.read_captions(self.dataset_dir, lang, splits=("train",)).captions
        return self.method.grow_tokenizer(tokenizer, captions, self.cfg.model.language_vocab_size, lang,
                                          self._train)

    def _grow_joint(self, name: str, captions: list[str], languages: int) -> tuple[ClipBPE, GrowthStats]:
        """One BPE over every language's captions (the reference's oracle vocabulary, §1.4), then grow."""
        size = self.cfg.method.joint_vocab_size or self.cfg.model.language_vocab_size * languages
        return self.method.grow_tokenizer(self.tokenizer, captions, size, name, self._train)

    def _train(self, captions: list[str], vocab_size: int) -> ClipBPE:
        """The language BPE of ``captions``, trained once and reused from the data home's tokenizer cache."""
        from cll_ray.sequence import cll_ray_home  # sequence imports this module

        batch = self.cfg.model.bpe_batch_lines
        if len(captions) < batch:
            warnings.warn(f"{len(captions)} training captions: fewer than one batch of model.bpe_batch_lines="
                          f"{batch}, so this task's BPE learns no merges (the reference drops a partial batch)",
                          stacklevel=2)
        return train_bpe_cached(captions, vocab_size, cll_ray_home(self.cfg) / TOKENIZER_CACHE, batch)

    def begin_task(self, task: str | TaskSpec, build_train: bool = True) -> PreparedTask:
        """Grow tokenizer and embedding for the task's language(s) and build its training data.

        A multi-language task (joint training) always builds its data here: it is not a per-language shard.
        """
        spec = task if isinstance(task, TaskSpec) else TaskSpec(task, (task,))
        index = len(self.tasks)
        trained = self.trained_languages(spec)
        caps = {lang: ds.read_captions(self.dataset_dir, lang, splits=("train",), require_english=lang != "en")
                for lang in trained}
        all_captions = [c for table in caps.values() for c in table.captions]
        if len(spec.languages) == 1:
            self.tokenizer, growth = self.grown_tokenizer(spec.name, all_captions)
        elif trained:
            self.tokenizer, growth = self._grow_joint(spec.name, all_captions, len(trained))
        else:
            self.tokenizer, growth = no_growth(self.tokenizer, spec.name)
        embedding = self.student.token_embedding
        mean, std = self.method.new_row_distribution(embedding)
        # Seeded per task (the reference is not), so a resumed run draws the same rows.
        generator = torch.Generator().manual_seed(self.cfg.train.seed * 1000 + index)
        embedding.grow(self.tokenizer.size, mean, std, generator=generator)
        self.method.begin_task(spec, index)
        # T_t: the task's captions plus stored memory captions (ER/DER), each token counted once per language
        token_sets = {lang: self.tokenizer.token_set(table.captions) for lang, table in caps.items()}
        for lang, ids in self.method.memory_token_sets().items():
            token_sets[lang] = np.union1d(token_sets.get(lang, np.zeros(0, np.int64)), ids)
        task_tokens, counts = np.unique(np.concatenate([np.zeros(0, np.int64), *token_sets.values()]),
                                        return_counts=True)
        row_scale = teir_row_scale(
            self.tokenizer.size, torch.from_numpy(task_tokens), embedding.token_frequencies,
            self.tokenizer.special_ids, self.cfg.method.freq_power,
        )
        train = None
        if trained and (build_train or len(spec.languages) > 1):
            train = TrainSet.concat([self._train_set(lang, table) for lang, table in caps.items()],
                                    grouped=self.method.one_language_per_batch)
        val = [self.retrieval_set(lang, "val") for lang in spec.languages]
        return PreparedTask(spec.name, index, growth, task_tokens, row_scale, train, val, spec, counts)

    def task_module(self, stage: Stage | None = None) -> TaskModule:
        """Student + a fresh loss (τ re-created at its initial value every task) with the stage's weights."""
        m = self.cfg.method
        stage = stage or Stage("train", self.cfg.train.epochs, m.cross_lingual_weight, m.cross_modal_weight,
                               m.temperature)
        loss = CLLLoss(stage.cross_lingual_weight, stage.cross_modal_weight, stage.temperature)
        # an unused τ must not be trainable: a data-parallel wrapper requires every trainable parameter in use
        loss.temperature.requires_grad_(stage.learn_temperature and stage.cross_modal_weight != 0)
        return TaskModule(self.student, loss)

    def _validate(self, task: PreparedTask) -> dict[str, float]:
        train = self.cfg.train
        spec = task.spec or TaskSpec(task.lang, (task.lang,))
        scores = []
        for lang, val in zip(spec.languages, task.val, strict=True):
            self.method.activate(lang)  # a joint task routes each language to its own modules
            scores.append(evaluate(self.student, val, train.eval_batch_size, train.precision))
        return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}

    def train_task(
        self,
        task: PreparedTask,
        train_set: TrainSet | None = None,
        batch_size: int | None = None,
        steps_per_epoch: int | None = None,
        wrap=None,
        device: torch.device | None = None,
        progress: bool = True,
        on_step=None,
        on_epoch=None,
        log_every: int = 1,
    ) -> TaskOutcome:
        """Train the prepared task. A data-parallel worker passes its shard, its share of the batch, the step
        count all ranks agree on, and ``wrap`` (e.g. Ray's ``prepare_model``) for the task module. ``on_step(step,
        scalars)`` every ``log_every`` steps and ``on_epoch(history entry)``, with steps counted across stages."""
        train = self.cfg.train
        spec = task.spec or TaskSpec(task.lang, (task.lang,))
        stages = self.method.stages(spec, train)
        if not stages:  # nothing of this task trains (MLA's English): its record holds the validation only
            return TaskOutcome(best_epoch=-1, best_val=self._validate(task), history=[], steps=0)
        train_set = train_set if train_set is not None else task.train
        batch_size = batch_size or train.batch_size
        torch.manual_seed(train.seed)  # seed_everything(42) at every task's fit (§4)
        generator = torch.Generator().manual_seed(train.seed)
        steps = steps_per_epoch if steps_per_epoch is not None else train_set.num_batches(batch_size)
        if steps == 0:
            raise ValueError(f"{task.lang}: {len(train_set)} training captions < batch size "
                             f"{batch_size * train_set.part[1]}")
        outcomes, done = [], 0
        for stage in stages:
            self.method.begin_stage(stage)
            module = self.task_module(stage)
            module = wrap(module) if wrap is not None else module

            def batches(epoch, stage=stage):
                yield from train_set.batches(batch_size, generator, steps=steps, device=device,
                                             images=stage.use_images, length_buckets=train.length_buckets)

            outcome = train_one_task(
                module, self.method, task.row_scale, epoch_batches=batches, steps_per_epoch=steps,
                train=replace(train, epochs=stage.epochs), validate=lambda: self._validate(task),
                progress=progress, desc=f"task {task.index + 1} {task.lang} {stage.name}",
                on_step=None if on_step is None else lambda step, s, done=done: on_step(done + step, s),
                on_epoch=None if on_epoch is None else lambda h, done=done, stage=stage: on_epoch(
                    {**h, "stage": stage.name, "steps": h["steps"] + done}),
                log_every=log_every,
            )
            for h in outcome.history:
                h.update(stage=stage.name, steps=h["steps"] + done)
            done += outcome.steps
            outcomes.append(outcome)
        last = outcomes[-1]
        history = [h for o in outcomes for h in o.history]
        return TaskOutcome(best_epoch=last.best_epoch, best_val=last.best_val, history=history, steps=done)

    def end_task(self, task: PreparedTask, outcome: TaskOutcome) -> dict:
        """Count the task's tokens once (f_i += 1) and record the task."""
        counts = None if task.token_counts is None else torch.from_numpy(task.token_counts)
        self.student.token_embedding.commit_task_tokens(torch.from_numpy(task.task_tokens), counts)
        self.method.end_task(task.lang)
        record = {"lang": task.lang, "index": task.index, "growth": asdict(task.growth),
                  "num_task_tokens": int(len(task.task_tokens)), "best_epoch": outcome.best_epoch,
                  "best_val": outcome.best_val, "history": outcome.history, "steps": outcome.steps}
        self.tasks.append(record)
        return record

    def task_epochs(self, task: PreparedTask) -> int:
        """The epochs of every training stage of the task (0 where nothing trains)."""
        return sum(stage.epochs for stage in self.method.stages(task.spec or TaskSpec(task.lang, (task.lang,)),
                                                                self.cfg.train))

    def task_steps(self, task: PreparedTask, train_set: TrainSet | None, batch_size: int | None,
                   steps_per_epoch: int | None) -> int:
        """The optimizer steps the task will take, across its stages (for progress and ETA)."""
        if train_set is None:
            return 0
        steps = steps_per_epoch if steps_per_epoch is not None else train_set.num_batches(
            batch_size or self.cfg.train.batch_size)
        return steps * self.task_epochs(task)

    def trains(self, task: PreparedTask) -> bool:
        """Whether the task has a training stage (MLA's English task has none)."""
        return bool(self.method.stages(task.spec or TaskSpec(task.lang, (task.lang,)), self.cfg.train))

    def learn(self, lang: str, progress: bool = True, on_step=None) -> dict:
        task = self.begin_task(lang)
        return self.end_task(task, self.train_task(task, progress=progress, on_step=on_step))

    def evaluate(self, lang: str, split: str = "test") -> dict[str, float]:
        train = self.cfg.train
        self.method.activate(lang)  # language-routed methods use the test language's modules (§6.1)
        return evaluate(self.student, self.retrieval_set(lang, split), train.eval_batch_size, train.precision)

    # ---- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything that carries across tasks, as tensors and plain values (no pickled objects)."""
        return {
            "tokenizer": self.tokenizer.to_json(),
            "embedding": {k: v.detach().cpu() for k, v in self.student.token_embedding.state_dict().items()},
            "method": self.method.state_dict(),
            "tasks": self.tasks,
        }

    def load_state_dict(self, state: dict) -> None:
        self.tokenizer = tokenizer_from_json(state["tokenizer"])
        self.student.token_embedding.load_state_dict(state["embedding"])
        self.student.freeze_backbone()
        self.method.load_state_dict(state["method"])
        self.tasks = list(state["tasks"])
