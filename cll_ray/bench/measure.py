"""What `cll-ray bench` measures, in one process on the same inputs: cll-ray's training step against the
reference-equivalent step, the step as the vocabulary grows, evaluation throughput, and the projections of the
paper's protocol from them.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch.utils.flop_counter import FlopCounterMode

from cll_ray.bench.reference import ReferenceStep, reference_text_model
from cll_ray.config import load_config
from cll_ray.embedding import teir_row_scale
from cll_ray.engine import TaskModule, TrainingStep, autocast, cpu_has_native_bf16, encode_texts
from cll_ray.losses import CLLLoss
from cll_ray.methods import build_method
from cll_ray.model import TextStudent, build_clip
from cll_ray.optim import warmup_constant

# CLIP's BPE vocabulary: 49,406 tokens, then <start_of_text> and <end_of_text>
CLIP_VOCAB, BOS, EOS = 49_408, 49_406, 49_407
# the paper's protocol (method.md §4, §8): COCO-36 training captions per language, epochs per task, the val and
# test splits (Karpathy 5,000 images, 25,010 captions), and XM3600's test captions averaged over its 36 languages
COCO_TRAIN_CAPTIONS, EPOCHS, COCO_EVAL_CAPTIONS = 566_747, 3, 25_010
XM3600_CAPTIONS = 261_375 / 36
TASKS = 36
LANGUAGE_EVALUATIONS = TASKS * (TASKS + 1) // 2  # after task t, every one of the t languages seen: Σ t = 666
# dense bf16/fp16 tensor-core peaks of the GPUs users run on (datasheets); others: the measured matmul peak
GPU_PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L4": 121.0, "A10": 125.0, "V100": 125.0, "T4": 65.0}


@dataclass(frozen=True)
class BenchSettings:
    arch: str = "ViT-B-16"  # the text tower the paper trains (random weights: nothing is downloaded)
    batch_size: int = 128
    task_rows: int = 10_000  # the rows a task adds (and trains) beyond CLIP's vocabulary
    steps: int = 3  # timed steps per measurement, after one untimed warm-up step
    vocab_rows: tuple[int, ...] = (50_000, 400_000)
    dense_too: bool = True  # also time the step with a dense embedding gradient (what it was before)
    eval_captions: int = 4096
    mean_tokens: float = 20.0  # caption length with BOS and EOS (COCO-36's mean is about 20)


QUICK = BenchSettings(batch_size=32, steps=2, eval_captions=512, dense_too=False)


def synthetic_batch(settings: BenchSettings, vocab: int, embed_dim: int, seed: int = 0, context: int = 77,
                    ) -> dict[str, torch.Tensor]:
    """Captions of COCO-like lengths (BOS, tokens, EOS, zero padding), 70% of their tokens among the task's rows,
    with random teacher text and image features; each caption of its own image."""
    g = torch.Generator().manual_seed(seed)
    n = settings.batch_size
    lengths = torch.normal(settings.mean_tokens, 5.0, (n,), generator=g).round().clamp(6, min(60, context)).long()
    width = int(lengths.max())
    ids = torch.zeros(n, width, dtype=torch.long)
    task = torch.randint(vocab - settings.task_rows, vocab, (n, width), generator=g)
    base = torch.randint(0, BOS, (n, width), generator=g)
    tokens = torch.where(torch.rand(n, width, generator=g) < 0.7, task, base)
    for i, length in enumerate(lengths.tolist()):
        ids[i, 0], ids[i, 1 : length - 1], ids[i, length - 1] = BOS, tokens[i, : length - 2], EOS
    return {"ids": ids, "teacher": torch.randn(n, embed_dim, generator=g), "image": torch.randn(n, embed_dim, generator=g),
            "image_index": torch.arange(n)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], object], steps: int, device: torch.device) -> float:
    """Seconds per call of ``step``: one warm-up call, then the mean of ``steps`` timed calls."""
    step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return (time.perf_counter() - start) / steps


def step_flops(step: Callable[[], object]) -> int:
    """The floating-point operations of one call of ``step`` (forward and backward), as torch counts them."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` square matmuls of size ``n``: this machine's practical peak."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """The peak MFU is taken against: a known GPU's datasheet peak, else the measured matmul peak."""
    if device.type == "cuda" and precision != "fp32":
        name = torch.cuda.get_device_name(device)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return tflops * 1e12, f"{key} datasheet"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return matmul_peak(device, dtype), "measured matmul"


def tensor_megabytes(tensors) -> float:
    total = 0
    for t in tensors:
        if t is None:
            continue
        if t.is_sparse:
            total += t._values().nbytes + t._indices().nbytes
        else:
            total += t.nbytes
    return total / 2**20


def optimizer_megabytes(optimizer: torch.optim.Optimizer) -> float:
    return tensor_megabytes(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))


class Bench:
    """The inputs every measurement shares: a text tower of ``settings.arch`` grown by the task's rows."""

    def __init__(self, settings: BenchSettings, device: torch.device, precision: str):
        self.settings, self.device, self.precision = settings, device, precision
        self.cfg = load_config(method="cll_clip_teir", overrides=[f"train.batch_size={settings.batch_size}",
                                                                   f"train.precision={precision}"])
        self.clip = build_clip(settings.arch, CLIP_VOCAB, EOS)
        self.vocab = CLIP_VOCAB + settings.task_rows
        self.student = self.grown(self.vocab)
        self.batch = self.batch_for(self.vocab)

    def batch_for(self, rows: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """The bench's batch for a vocabulary of ``rows`` rows (the same lengths at every size)."""
        batch = synthetic_batch(self.settings, rows, self.student.text_projection.shape[1], seed,
                                self.student.context_length)
        return self.on_device(batch)

    def on_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in batch.items()}

    def grown(self, rows: int) -> TextStudent:
        """A student over the base tower with ``rows`` embedding rows (TEIR's initialisation for the new ones)."""
        student = TextStudent(self.clip, EOS)
        mu, sigma = student.token_embedding.matrix_statistics()
        student.token_embedding.grow(rows, mu, sigma, torch.Generator().manual_seed(0))
        student.freeze_backbone()
        return student.to(self.device)

    def cll_ray_step(self, student: TextStudent, precision: str | None = None, sparse: bool | None = None):
        """cll-ray's step (``engine.TrainingStep``) for CLL-CLIP + TEIR on ``student``, the embedding's gradient
        row-sparse or dense (None: as the config says): (step, its optimizer, module, TrainingStep)."""
        sparse = self.cfg.train.sparse_embedding_grad if sparse is None else sparse
        train = replace(self.cfg.train, sparse_embedding_grad=sparse)
        train = train if precision is None else replace(train, precision=precision)
        method = build_method(self.cfg.method)
        method.attach(student)
        m = self.cfg.method
        module = TaskModule(student, CLLLoss(m.cross_lingual_weight, m.cross_modal_weight, m.temperature)).to(self.device)
        rows = student.token_embedding.num_embeddings
        task_tokens = torch.arange(rows - self.settings.task_rows, rows)
        scale = teir_row_scale(rows, task_tokens, student.token_embedding.token_frequencies, [BOS, EOS])
        embedding = student.token_embedding.weight
        others = [p for p in module.parameters() if p.requires_grad and p is not embedding]
        optimizer = method.build_optimizer(embedding, others, scale, train)
        trainable = [p for p in module.parameters() if p.requires_grad]
        step = TrainingStep(module, method, optimizer, warmup_constant(optimizer, 0), trainable, train)
        batch = self.batch if rows == self.vocab else self.batch_for(rows)
        return (lambda: step(batch)), optimizer, module, step

    def reference_step(self, precision: str) -> tuple[Callable[[], torch.Tensor], ReferenceStep]:
        t, m = self.cfg.train, self.cfg.method
        model = reference_text_model(self.student).to(self.device)
        step = ReferenceStep(model, t.lr, t.betas, t.adam_eps, t.weight_decay, t.grad_clip, m.cross_lingual_weight,
                             m.cross_modal_weight, m.temperature, lambda: autocast(self.device, precision))
        return (lambda: step(self.batch)), step


def _memory_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_megabytes(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def precisions(device: torch.device) -> list[str]:
    """fp32, and the half precision this hardware computes fast (bf16 on AMX/AVX512-BF16 CPUs and Ampere+)."""
    if device.type == "cuda":
        return ["fp32", "bf16" if torch.cuda.is_bf16_supported() else "fp16"]
    return ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]


def run_bench(settings: BenchSettings, device: torch.device, progress: Callable[[str], None] = print) -> dict:
    """Every measurement, as one JSON-ready record."""
    torch.manual_seed(0)
    fast = precisions(device)[-1]
    bench = Bench(settings, device, fast)
    n = settings.batch_size
    tokens = int((bench.batch["ids"] != 0).sum())
    record = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "arch": settings.arch, "batch_size": n, "vocab_rows": bench.vocab,
        "task_rows": settings.task_rows, "mean_tokens": tokens / n, "timed_steps": settings.steps, "steps": [],
    }

    # the same loss on the same batch, in fp32, before any step
    cll_loss = bench.cll_ray_step(bench.grown(bench.vocab), "fp32")[2](bench.batch)["loss"].item()
    ref_loss = bench.reference_step("fp32")[1].loss(bench.batch).item()
    record["loss_check"] = {"cll_ray": cll_loss, "reference": ref_loss, "relative_difference": abs(cll_loss - ref_loss) / abs(ref_loss)}
    if record["loss_check"]["relative_difference"] > 1e-4:
        raise RuntimeError(f"cll-ray's and the reference's loss differ on the same batch: {record['loss_check']}")
    progress(f"same batch, same weights (fp32): loss {cll_loss:.6f} (cll-ray) vs {ref_loss:.6f} (reference)")

    peaks = {}
    for precision in precisions(device):
        peaks[precision] = peak_flops(device, precision)
        for name in ("reference", "cll-ray"):
            _memory_reset(device)
            if name == "reference":
                step, ref = bench.reference_step(precision)
                params, optimizer = ref.parameters(), ref.optimizer
            else:
                step, optimizer, module, _ = bench.cll_ray_step(bench.grown(bench.vocab), precision)
                params = [p for p in module.parameters() if p.requires_grad]
            seconds = time_steps(step, settings.steps, device)
            flops = step_flops(step)
            entry = {"step": name, "precision": precision, "seconds": seconds, "captions_per_s": n / seconds,
                     "flop_per_step": flops, "flop_per_s": flops / seconds, "mfu": flops / seconds / peaks[precision][0],
                     "peak": peaks[precision][1], "gradient_mb": tensor_megabytes(p.grad for p in params),
                     "optimizer_mb": optimizer_megabytes(optimizer), "peak_memory_mb": _peak_megabytes(device)}
            record["steps"].append(entry)
            progress(f"{name:9s} {precision}: {entry['captions_per_s']:.1f} captions/s, "
                     f"{entry['flop_per_s'] / 1e9:.0f} GFLOP/s ({entry['mfu']:.1%} MFU)")
            del step, optimizer, params

    record["vocabulary"] = []
    for rows in settings.vocab_rows:
        for sparse in (True, False) if settings.dense_too else (True,):
            student = bench.grown(rows)
            step, optimizer, module, _ = bench.cll_ray_step(student, fast, sparse=sparse)
            seconds = time_steps(step, settings.steps, device)
            params = [p for p in module.parameters() if p.requires_grad]
            record["vocabulary"].append({
                "rows": rows, "gradient": "row-sparse" if sparse else "dense", "seconds": seconds,
                "gradient_mb": tensor_megabytes(p.grad for p in params), "optimizer_mb": optimizer_megabytes(optimizer),
                "embedding_mb": tensor_megabytes([student.token_embedding.weight])})
            progress(f"{rows:,} rows, {record['vocabulary'][-1]['gradient']} gradient: {seconds:.3f} s/step")
            del student, step, optimizer, module, params

    context = bench.student.context_length
    ids = torch.cat([torch.nn.functional.pad(b, (0, context - b.shape[1])) for b in (
        bench.batch_for(bench.vocab, seed=s)["ids"].cpu() for s in range(-(-settings.eval_captions // n)))])
    ids = ids[: settings.eval_captions]
    encode = lambda: encode_texts(bench.student, ids, bench.cfg.train.eval_batch_size, fast)  # noqa: E731
    eval_seconds = time_steps(encode, 1, device)
    per_s = len(ids) / eval_seconds
    record["evaluation"] = {"precision": fast, "captions": len(ids), "captions_per_s": per_s,
                            "language_evaluations": LANGUAGE_EVALUATIONS,
                            "xm3600_matrix_s": LANGUAGE_EVALUATIONS * XM3600_CAPTIONS / per_s}
    progress(f"evaluation: {per_s:.0f} captions/s")

    best = max((s for s in record["steps"] if s["step"] == "cll-ray"), key=lambda s: s["captions_per_s"])
    train_s = TASKS * EPOCHS * COCO_TRAIN_CAPTIONS / best["captions_per_s"]
    val_s = TASKS * EPOCHS * COCO_EVAL_CAPTIONS / per_s
    test_s = LANGUAGE_EVALUATIONS * (COCO_EVAL_CAPTIONS + XM3600_CAPTIONS) / per_s
    record["projection"] = {"precision": best["precision"], "train_h": train_s / 3600, "validation_h": val_s / 3600,
                            "test_h": test_s / 3600, "total_h": (train_s + val_s + test_s) / 3600}
    return record
