"""Framework-free training and evaluation loops for one language task (method.md §4, §6.1).

The Ray Train worker calls the same functions; nothing here imports Ray.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cll_ray.config import TrainConfig
from cll_ray.losses import CLLLoss
from cll_ray.methods.base import Method
from cll_ray.metrics import retrieval_metrics
from cll_ray.model import TextStudent
from cll_ray.optim import RowScaledAdamW, clip_grad_norm, warmup_constant
from cll_ray.parallel import mean_over_ranks


class TaskModule(nn.Module):
    """Student + loss as one module, so a data-parallel wrapper's ``forward`` sees every trainable parameter."""

    def __init__(self, student: TextStudent, loss: CLLLoss) -> None:
        super().__init__()
        self.student = student
        self.loss = loss

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss terms of ``batch``, plus ``embedding``: the student's output (B, E) for method terms."""
        embedding = self.student(batch["ids"])
        terms = self.loss(embedding, batch["teacher"], batch.get("image"), batch["image_index"],
                          current=batch.get("current"))
        return {**terms, "embedding": embedding}


class FeatureRows:
    """Rows of a feature table (the memory-mapped store's array) gathered batch by batch, never copied whole."""

    def __init__(self, table: np.ndarray, rows: np.ndarray):
        self.table, self.rows = table, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.table[self.rows[np.asarray(index)]], dtype=np.float32))

    @classmethod
    def cat(cls, parts: list[FeatureRows]) -> FeatureRows:
        if any(p.table is not parts[0].table for p in parts):
            raise ValueError("feature rows of different tables cannot be joined")
        return cls(parts[0].table, np.concatenate([p.rows for p in parts]))


@dataclass
class TrainSet:
    """One task's training rows: target-caption ids and the cached teacher features they are paired with."""

    ids: torch.Tensor  # (N, L) int64
    teacher: FeatureRows  # (N, E) teacher text embedding of the English source caption
    image: FeatureRows  # (N, E) teacher image embedding
    image_index: torch.Tensor  # (N,) image identity, for soft contrastive targets
    keys: torch.Tensor | None = None  # (N,) stable row keys, when the rows came from a data shard
    group: torch.Tensor | None = None  # (N,) language index: set, every batch holds one language (MLA's schedule)
    # (rank, world): every rank holds the same rows and draws the same global batches of batch_size × world
    # rows, taking its own slice of each, so W workers train on exactly one worker's batches
    part: tuple[int, int] = (0, 1)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_rows(cls, ids: np.ndarray, teacher_rows: np.ndarray, image_rows: np.ndarray, features,
                  keys: np.ndarray | None = None) -> TrainSet:
        """Rows as token ids plus row indices into the teacher ``features`` store (``FeatureStore``)."""
        return cls(
            ids=torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)),
            teacher=FeatureRows(features.text_features, teacher_rows),
            image=FeatureRows(features.image_features, image_rows),
            image_index=torch.from_numpy(np.asarray(image_rows, dtype=np.int64)),
            keys=None if keys is None else torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        )

    @classmethod
    def concat(cls, sets: list[TrainSet], grouped: bool = False) -> TrainSet:
        """The union of several languages' rows (joint training), ids padded to the same width; ``grouped``
        records each row's language (its index in ``sets``) so that batches keep to one language."""
        if len(sets) == 1:
            return sets[0]
        width = max(s.ids.shape[1] for s in sets)
        ids = [nn.functional.pad(s.ids, (0, width - s.ids.shape[1])) for s in sets]
        group = torch.cat([torch.full((len(s),), k, dtype=torch.long) for k, s in enumerate(sets)]) if grouped else None
        return cls(torch.cat(ids), FeatureRows.cat([s.teacher for s in sets]), FeatureRows.cat([s.image for s in sets]),
                   torch.cat([s.image_index for s in sets]), group=group)

    def lengths(self) -> torch.Tensor:
        """Each caption's token count (ids are zero-padded)."""
        return (self.ids != 0).sum(dim=1)

    def _sorted_by_length(self, rows: torch.Tensor, pool: int) -> torch.Tensor:
        lengths = self.lengths()
        return torch.cat([part[torch.argsort(lengths[part], stable=True)] for part in rows.split(pool)])

    def padding_fraction(self, batch_size: int, generator: torch.Generator, length_buckets: int = 0) -> float:
        """The share of a step's token positions that are padding, after trimming each batch to its longest
        caption (what the forward computes on), over one epoch of ``batches``."""
        real = total = 0
        for batch in self.batches(batch_size, generator, images=False, length_buckets=length_buckets):
            n = (batch["ids"] != 0).sum(dim=1)
            real, total = real + int(n.sum()), total + int(n.max()) * len(n)
        return 1 - real / max(1, total)

    def shard(self, rank: int, world: int) -> TrainSet:
        """What data-parallel rank ``rank`` of ``world`` trains on: its slice of every global batch."""
        return replace(self, part=(rank, world))

    def num_batches(self, batch_size: int) -> int:
        """Full batches per epoch (per language when grouped), ``batch_size`` being this rank's share."""
        size = batch_size * self.part[1]
        if self.group is None:
            return len(self) // size
        return int(sum(int(n) // size for n in torch.bincount(self.group)))

    def batches(self, batch_size: int, generator: torch.Generator, steps: int | None = None,
                device: torch.device | None = None, images: bool = True, length_buckets: int = 0,
                ) -> Iterable[dict[str, torch.Tensor]]:
        """Shuffled batches, the last partial one dropped (``drop_last=True`` as in the reference).

        ``batch_size`` is this rank's share of the global batch (``part``); ``steps`` caps the count. ``images``
        False: the batch has no ``image`` and the image features are never read (MLA's text-only NLT). Grouped
        rows: each language's rows are shuffled and cut into batches, and the batches of every language are
        shuffled together (the authors' random language per batch); the batch carries its ``group``.
        ``length_buckets`` k > 0: each run of k shuffled batches is re-cut after sorting its rows by caption
        length, and all batches are shuffled again, so a batch holds captions of similar length.
        """
        rank, world = self.part
        size = batch_size * world
        groups = [None] if self.group is None else range(int(self.group.max()) + 1)
        chunks = []
        for g in groups:
            rows = torch.arange(len(self)) if g is None else torch.nonzero(self.group == g).squeeze(1)
            rows = rows[torch.randperm(len(rows), generator=generator)][: len(rows) // size * size]
            if length_buckets:
                rows = self._sorted_by_length(rows, size * length_buckets)
            chunks += list(rows.split(size)) if len(rows) else []
        if self.group is not None or length_buckets:
            chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
        chunks = [rows[rank * batch_size : (rank + 1) * batch_size] for rows in chunks]
        for rows in chunks[: len(chunks) if steps is None else steps]:
            batch = {"ids": self.ids[rows], "teacher": self.teacher[rows], "image_index": self.image_index[rows]}
            if images:
                batch["image"] = self.image[rows]
            if self.group is not None:
                batch["group"] = self.group[rows]
            yield {k: v.to(device) for k, v in batch.items()} if device is not None else batch


@dataclass
class RetrievalSet:
    """Captions of one language and split, and the images they are retrieved against."""

    ids: torch.Tensor  # (N_captions, L)
    caption_image: np.ndarray  # (N_captions,) row into image_features
    image_features: np.ndarray  # (N_images, E)


@dataclass
class TaskOutcome:
    best_epoch: int
    best_val: dict[str, float]
    history: list[dict] = field(default_factory=list)
    steps: int = 0


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere torch emulates it, 10x slower
    than fp32 (measured on an AVX2-only CPU)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto``: bf16 where the hardware has it (fp16 on older GPUs), else fp32; other values as given."""
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    """Mixed precision for the forward pass: bf16 autocast (CPU or GPU), fp16 on GPU, or none (fp32).

    The reference trains with AMP; parameters, gradients and optimizer state stay fp32 either way.
    """
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


@torch.no_grad()
def encode_texts(student: TextStudent, ids: torch.Tensor, batch_size: int = 1024, precision: str = "fp32") -> np.ndarray:
    was_training = student.training
    student.eval()
    device = student.token_embedding.weight.device
    out = []
    for i in range(0, len(ids), batch_size):
        with autocast(device, precision):
            out.append(student(ids[i : i + batch_size].to(device)).float().cpu())
    student.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 1), np.float32)


def evaluate(student: TextStudent, data: RetrievalSet, batch_size: int = 1024, precision: str = "fp32") -> dict[str, float]:
    """t2i/i2t R@1/5/10 and r_mean of the student's text embeddings against the cached image embeddings."""
    text = encode_texts(student, data.ids, batch_size, precision)
    return retrieval_metrics(text, data.image_features, data.caption_image)


def trained_state_keys(student: nn.Module) -> set[str]:
    """State entries a task can change: the token embedding (rows and frequencies) and trainable parameters."""
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    return {k for k in student.state_dict() if k.startswith("token_embedding.") or k in trainable}


def _read_window(window: dict[str, torch.Tensor], steps: int, error: str) -> dict[str, float]:
    """One host sync: the means of the summed scalars over ``steps`` steps, and ``window`` emptied; a loss
    that is not finite stops the task (the NaN guard), ``error`` naming where."""
    keys = list(window)
    means = dict(zip(keys, (torch.stack([window[k] for k in keys]) / steps).tolist(), strict=True))
    if not math.isfinite(means["loss"]):
        raise FloatingPointError(error.format(means["loss"]))
    window.clear()
    return means


def sparse_embedding_gradient(module: nn.Module, optimizer: torch.optim.Optimizer, train: TrainConfig) -> bool:
    """Whether the token embedding's gradient is a sparse tensor of the batch's rows: asked for
    (``train.sparse_embedding_grad``), the optimizer reads it through a row group, and no data-parallel wrapper
    (which all-reduces dense gradients) sits in between."""
    core: TaskModule = getattr(module, "module", module)
    embedding = core.student.token_embedding.weight
    return (train.sparse_embedding_grad and module is core and isinstance(optimizer, RowScaledAdamW)
            and optimizer.takes_sparse_grad(embedding))


class TrainingStep:
    """One optimizer step on a batch, as the engine runs it and the bench times it: the method's batch, the
    forward under autocast, the method's extra terms, backward, gradient clipping, the optimizer and schedule.

    The step never waits for the device: the loss terms come back as device tensors. fp16 (GPUs without bf16)
    runs with a ``GradScaler``; as in the reference, the schedule does not advance on a step the scaler skipped.
    The embedding's gradient is sparse where it is asked for and can be (``sparse_embedding_gradient``).
    """

    def __init__(self, module: nn.Module, method: Method, optimizer: torch.optim.Optimizer, scheduler,
                 trainable: list[torch.nn.Parameter], train: TrainConfig) -> None:
        self.module, self.method, self.optimizer, self.scheduler = module, method, optimizer, scheduler
        self.trainable, self.train = trainable, train
        core: TaskModule = getattr(module, "module", module)
        self.embedding = core.student.token_embedding
        self.embedding.sparse_grad = sparse_embedding_gradient(module, optimizer, train)
        device = self.embedding.weight.device
        fp16 = resolve_precision(train.precision, device) == "fp16"
        self.scaler = torch.amp.GradScaler(device.type) if fp16 else None

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The step on ``batch``; returns the loss terms (detached device tensors, extra terms included)."""
        method, optimizer, scaler = self.method, self.optimizer, self.scaler
        batch = method.extend_batch(batch)
        with autocast(batch["ids"].device, self.train.precision):
            terms = self.module(batch)
            extra = method.extra_loss_terms(batch, terms)
        embedding_out = terms.pop("embedding")
        loss = terms["loss"] + sum(extra.values())
        terms.update(extra)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            clip_grad_norm(self.trainable, self.train.grad_clip)
            optimizer.step()
            self.scheduler.step()
        else:
            scale = scaler.get_scale()
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            clip_grad_norm(self.trainable, self.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if scaler.get_scale() >= scale:  # the step was taken (a skipped one lowers the scale)
                self.scheduler.step()
        method.after_step(batch, embedding_out.detach().float())
        return {k: v.detach() for k, v in terms.items()}

    def close(self) -> None:
        """Dense gradients again (the methods' passes after training, e.g. oEWC's Fisher, read ``p.grad``)."""
        self.embedding.sparse_grad = False


def train_one_task(
    module: nn.Module,
    method: Method,
    row_scale: torch.Tensor,
    epoch_batches: Callable[[int], Iterable[dict[str, torch.Tensor]]],
    steps_per_epoch: int,
    train: TrainConfig,
    validate: Callable[[], dict[str, float]],
    progress: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    desc: str = "train",
    log_every: int = 1,
    on_epoch: Callable[[dict], None] | None = None,
) -> TaskOutcome:
    """Train one task; keep the epoch with the best current-language val ``r_mean`` (restored at the end).

    ``module`` is a ``TaskModule`` or a data-parallel wrapper of one: the forward of the wrapper is what runs,
    so gradients are synchronized. AdamW (fresh), 10% linear warm-up then constant, grad-norm clip, NaN guard.
    Loss terms are summed on the device and read every ``log_every`` steps and at each epoch's end
    (``on_step(step, their means)``, and the NaN guard), so with ``log_every`` > 1 (a run's ``run.log_every``)
    a step does not wait for the device; ``on_epoch(history entry)`` after each epoch.
    """
    core: TaskModule = getattr(module, "module", module)
    embedding = core.student.token_embedding.weight
    others = [p for n, p in core.named_parameters() if p.requires_grad and p is not embedding]
    optimizer = method.build_optimizer(embedding, others, row_scale, train)
    total = steps_per_epoch * train.epochs
    scheduler = warmup_constant(optimizer, int(train.warmup_ratio * total))
    trainable = [p for p in core.parameters() if p.requires_grad]
    kept = trained_state_keys(core.student)
    log_every = max(1, int(log_every))
    step_once = TrainingStep(module, method, optimizer, scheduler, trainable, train)

    history: list[dict] = []
    best_epoch, best_val, best_state = -1, None, None
    step = 0
    bar = tqdm(total=total, desc=desc, disable=not progress, unit="step", leave=False)
    for epoch in range(train.epochs):
        module.train()
        running: dict[str, torch.Tensor] = {}  # float64 sums on the device: the epoch means in `history`
        window: dict[str, torch.Tensor] = {}  # the same since the last read
        lr_sum, window_steps = 0.0, 0

        for batch in epoch_batches(epoch):
            terms = step_once(batch)
            step += 1
            window_steps += 1
            values = {k: v.detach().double() for k, v in terms.items()}
            values["temperature"] = core.loss.temperature.detach().double()
            for k, v in values.items():
                running[k] = running[k] + v if k in running else v
                window[k] = window[k] + v if k in window else v
            lr = scheduler.get_last_lr()[0]
            lr_sum += lr
            bar.update(1)
            if step % log_every == 0:
                means = _read_window(window, window_steps, f"{desc}: loss is {{}} in steps "
                                     f"{step - window_steps + 1}-{step} (epoch {epoch})")
                bar.set_postfix(loss=f"{means['loss']:.4f}")
                if on_step is not None:
                    on_step(step, {**means, "lr": lr})
                window_steps = 0
        if window:
            means = _read_window(window, window_steps, f"{desc}: loss is {{}} in steps "
                                 f"{step - window_steps + 1}-{step} (epoch {epoch})")
            if on_step is not None:
                on_step(step, {**means, "lr": lr})
            window_steps = 0
        val = validate()
        if best_val is None or val["r_mean"] > best_val["r_mean"]:
            best_epoch, best_val = epoch, val
            best_state = {k: v.detach().clone() for k, v in core.student.state_dict().items() if k in kept}
        # the order of the keys as before: the loss terms, lr, temperature
        sums = {k: float(v) for k, v in running.items() if k != "temperature"}
        if running:
            sums.update(lr=lr_sum, temperature=float(running["temperature"]))
        epoch_means = mean_over_ranks({f"train_{k}": v / max(1, steps_per_epoch) for k, v in sums.items()})
        history.append({"epoch": epoch, "steps": step, **epoch_means, **{f"val_{k}": v for k, v in val.items()}})
        if on_epoch is not None:
            on_epoch(history[-1])
    bar.close()
    step_once.close()
    if best_state is None:
        raise ValueError(f"{desc}: no training epoch ran (epochs={train.epochs})")
    # oEWC's Fisher reflects the last epoch (trap 10): the method sees those weights before the restore
    method.after_training(module, lambda: epoch_batches(train.epochs), train)
    core.student.load_state_dict(best_state, strict=False)  # carry the best epoch forward (§4)
    return TaskOutcome(best_epoch=best_epoch, best_val=best_val, history=history, steps=step)
