"""Pretrain the English base model on SynthXM's English pretraining split (both towers, CLIP loss).

The recipe (synthxm.md, measured on this 2-core machine): AdamW lr 2e-3, wd 0.1, 5% warm-up then cosine, batch
256, bf16 autocast on CPU. A fixed number of steps (not a time budget) keeps it reproducible from the seed.
The result is cached under a key of (dataset, config), so later runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from cll_ray import dataset as ds
from cll_ray.base_model import BaseModel
from cll_ray.metrics import retrieval_metrics
from cll_ray.model import attention_backend, build_clip
from cll_ray.tokenization import train_bpe


@dataclass(frozen=True)
class PretrainConfig:
    arch: str = "cll-synthclip-4L-128"
    vocab_size: int = 1000
    steps: int = 560
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_ratio: float = 0.05
    seed: int = 0
    eval_every: int = 100
    bf16: bool = True


def cache_key(dataset_dir: str | Path, cfg: PretrainConfig) -> str:
    manifest = ds.read_manifest(dataset_dir)
    payload = json.dumps({"data": manifest.get("files", manifest), "cfg": asdict(cfg)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _eval_tensors(base: BaseModel, dataset_dir, split: str):
    """Images of ``split`` and their English captions, as model inputs for retrieval."""
    table = ds.read_images(dataset_dir, splits=(split,))
    ids = table.column("image_id").to_pylist()
    pixels = ds.decode_images(table, dataset_dir, base.image_size)
    caps = ds.read_captions(dataset_dir, "en", splits=(split,))
    index = {image_id: i for i, image_id in enumerate(ids)}
    caption_image = np.array([index[i] for i in caps.image_ids], dtype=np.int64)
    return pixels, caps.captions, caption_image


@torch.no_grad()
def english_retrieval(base: BaseModel, pixels: np.ndarray, captions: list[str], caption_image: np.ndarray) -> dict:
    """Retrieval of the base model on English: t2i/i2t R@1/5/10 and r_mean."""
    image_emb = base.encode_images(pixels)
    text_emb = base.encode_texts(captions)
    return retrieval_metrics(text_emb, image_emb, caption_image)


def pretrain(dataset_dir: str | Path, cfg: PretrainConfig = PretrainConfig(), progress: bool = True) -> BaseModel:
    """Train the English base model; returns it with its test scores and curve in ``info``."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    started = time.time()

    # 1. English pretraining captions -> CLIP-style BPE; images decoded once
    caps = ds.read_captions(dataset_dir, "en", splits=("pretrain",))
    tokenizer = train_bpe(caps.captions, cfg.vocab_size, base=True)  # the shipped base's rule
    images = ds.read_images(dataset_dir, splits=("pretrain",))
    image_ids = images.column("image_id").to_pylist()
    torch.manual_seed(cfg.seed)  # right before the weights are drawn
    clip = build_clip(cfg.arch, tokenizer.size, tokenizer.eos_id)
    base = BaseModel(clip=clip, tokenizer=tokenizer, arch=cfg.arch)
    pixels = ds.decode_images(images, dataset_dir, base.image_size)  # (N, S, S, 3) uint8
    index = {image_id: i for i, image_id in enumerate(image_ids)}
    ids = torch.from_numpy(tokenizer.encode(caps.captions, base.context_length))
    captions_of: list[list[int]] = [[] for _ in image_ids]
    for row, image_id in enumerate(caps.image_ids):
        captions_of[index[image_id]].append(row)
    val = _eval_tensors(base, dataset_dir, "val")

    # 2. AdamW, no decay on gains/biases/logit scale; warm-up then cosine over a fixed number of steps
    decay = [p for n, p in clip.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in clip.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr
    )
    warmup = max(1, int(cfg.warmup_ratio * cfg.steps))

    def lr_at(step: int) -> float:
        if step < warmup:
            return cfg.lr * (step + 1) / warmup
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.steps - warmup)))

    # 3. train: each step takes B distinct images (a permutation per epoch) and one random caption of each
    curve, order, cursor = [], rng.permutation(len(image_ids)), 0
    bar = tqdm(total=cfg.steps, desc="pretrain", disable=not progress, unit="step")
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(order):
            order, cursor = rng.permutation(len(image_ids)), 0
        batch = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        rows = [captions_of[i][rng.integers(len(captions_of[i]))] for i in batch]
        text = ids[rows]  # full context length: open_clip adds the whole positional table
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        clip.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16), attention_backend():
            img_f, txt_f, scale = clip(base.preprocess(pixels[batch]), text)
        logits = scale.float() * F.normalize(img_f.float(), dim=-1) @ F.normalize(txt_f.float(), dim=-1).T
        labels = torch.arange(len(batch))
        loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            scores = english_retrieval(base, *val)
            curve.append({"step": step + 1, "loss": loss.item(), "val_t2i_r1": scores["t2i_r1"], "val_i2t_r1": scores["i2t_r1"],
                          "seconds": round(time.time() - started, 1)})
            bar.write(f"step {step + 1}: loss {loss.item():.3f}  val t2i R@1 {scores['t2i_r1']:.1f}  i2t R@1 {scores['i2t_r1']:.1f}")
    bar.close()

    # 4. final English test retrieval
    clip.eval()
    test_pixels, test_captions, test_caption_image = _eval_tensors(base, dataset_dir, "test")
    test = english_retrieval(base, test_pixels, test_captions, test_caption_image)
    base.info.update(
        {
            "pretrain_config": asdict(cfg),
            "dataset": str(Path(dataset_dir).name),
            "test_en": test,
            "test_images": len(test_pixels),
            "test_captions": len(test_captions),
            "curve": curve,
            "train_seconds": round(time.time() - started, 1),
        }
    )
    return base


def load_or_pretrain(dataset_dir: str | Path, cache_root: str | Path, cfg: PretrainConfig = PretrainConfig(),
                     progress: bool = True) -> tuple[BaseModel, Path, bool]:
    """The cached base model for (dataset, cfg), training it first if needed. Returns (model, folder, cached)."""
    folder = Path(cache_root) / "base_models" / f"{cfg.arch}-{cache_key(dataset_dir, cfg)}"
    if (folder / "base.json").exists():
        return BaseModel.load(folder), folder, True
    base = pretrain(dataset_dir, cfg, progress=progress)
    base.save(folder)
    return base, folder, False
