"""Framework-free training and evaluation loops for one language task (method.md §4, §6.1).

The Ray Train worker calls the same functions; nothing here imports Ray.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
from cll_ray.optim import warmup_constant
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


@dataclass
class TrainSet:
    """One task's training rows: target-caption ids and the cached teacher features they are paired with."""

    ids: torch.Tensor  # (N, L) int64
    teacher: torch.Tensor  # (N, E) teacher text embedding of the English source caption
    image: torch.Tensor  # (N, E) teacher image embedding
    image_index: torch.Tensor  # (N,) image identity, for soft contrastive targets
    keys: torch.Tensor | None = None  # (N,) stable row keys, when the rows came from a data shard
    group: torch.Tensor | None = None  # (N,) language index: set, every batch holds one language (MLA's schedule)

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def concat(cls, sets: list[TrainSet], grouped: bool = False) -> TrainSet:
        """The union of several languages' rows (joint training), ids padded to the same width; ``grouped``
        records each row's language (its index in ``sets``) so that batches keep to one language."""
        if len(sets) == 1:
            return sets[0]
        width = max(s.ids.shape[1] for s in sets)
        ids = [nn.functional.pad(s.ids, (0, width - s.ids.shape[1])) for s in sets]
        group = torch.cat([torch.full((len(s),), k, dtype=torch.long) for k, s in enumerate(sets)]) if grouped else None
        return cls(torch.cat(ids), *(torch.cat([getattr(s, k) for s in sets]) for k in ("teacher", "image", "image_index")),
                   group=group)

    def shard(self, rank: int, world: int) -> TrainSet:
        """Every ``world``-th row from ``rank``: a disjoint slice per data-parallel rank."""
        rows = torch.arange(rank, len(self), world)
        return TrainSet(self.ids[rows], self.teacher[rows], self.image[rows], self.image_index[rows],
                        None if self.keys is None else self.keys[rows], None if self.group is None else self.group[rows])

    def num_batches(self, batch_size: int) -> int:
        """Full batches per epoch (per language when grouped)."""
        if self.group is None:
            return len(self) // batch_size
        return int(sum(int(n) // batch_size for n in torch.bincount(self.group)))

    def batches(self, batch_size: int, generator: torch.Generator, steps: int | None = None,
                device: torch.device | None = None, images: bool = True) -> Iterable[dict[str, torch.Tensor]]:
        """Shuffled batches, the last partial one dropped (``drop_last=True`` as in the reference).

        ``steps`` caps the count so that every data-parallel rank takes the same number of steps. ``images``
        False: the batch has no ``image`` and the image features are never read (MLA's text-only NLT). Grouped
        rows: each language's rows are shuffled and cut into batches, and the batches of every language are
        shuffled together (the authors' random language per batch); the batch carries its ``group``.
        """
        if self.group is None:
            order = torch.randperm(len(self), generator=generator)
            chunks = [order[start : start + batch_size] for start in range(0, len(self) // batch_size * batch_size,
                                                                            batch_size)]
        else:
            chunks = []
            for g in range(int(self.group.max()) + 1):
                rows = torch.nonzero(self.group == g).squeeze(1)
                rows = rows[torch.randperm(len(rows), generator=generator)]
                chunks += [rows[start : start + batch_size] for start in range(0, len(rows) // batch_size * batch_size,
                                                                               batch_size)]
            chunks = [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]
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
            batch = method.extend_batch(batch)
            with autocast(batch["ids"].device, train.precision):
                terms = module(batch)
                extra = method.extra_loss_terms(batch, terms)
            embedding_out = terms.pop("embedding")
            loss = terms["loss"] + sum(extra.values())
            terms.update(extra)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, train.grad_clip)
            optimizer.step()
            scheduler.step()
            method.after_step(batch, embedding_out.detach().float())
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
    if best_state is None:
        raise ValueError(f"{desc}: no training epoch ran (epochs={train.epochs})")
    # oEWC's Fisher reflects the last epoch (trap 10): the method sees those weights before the restore
    method.after_training(module, lambda: epoch_batches(train.epochs), train)
    core.student.load_state_dict(best_state, strict=False)  # carry the best epoch forward (§4)
    return TaskOutcome(best_epoch=best_epoch, best_val=best_val, history=history, steps=step)
