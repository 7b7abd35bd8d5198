"""The English base model: an open_clip CLIP plus its tokenizer, saved as a small self-describing folder.

It plays the role OpenAI CLIP plays in the paper: frozen image tower, frozen text transformer, English teacher.
A folder holds ``weights.pt`` (a plain state dict, loaded with ``weights_only=True``), ``tokenizer.json``
(a `tokenizers` JSON) and ``base.json`` (architecture, fingerprint, how it was trained, its scores).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from cll_ray.io import atomic_dir
from cll_ray.model import build_clip
from cll_ray.tokenization import ClipBPE

SHIPPED_BASE = "synthclip-base"  # package folder cll_ray/assets/<name>


@dataclass
class BaseModel:
    clip: open_clip.CLIP
    tokenizer: ClipBPE
    arch: str
    info: dict = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """sha256 over the weights and the tokenizer: keys every feature cache built from this model."""
        if "fingerprint" not in self.info:
            h = hashlib.sha256(self.tokenizer.to_json().encode())
            for name, tensor in sorted(self.clip.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self.info["fingerprint"] = h.hexdigest()
        return self.info["fingerprint"]

    @property
    def image_size(self) -> int:
        size = self.clip.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def context_length(self) -> int:
        return int(self.clip.positional_embedding.shape[0])

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalized float (N, 3, S, S); bicubic resize + center crop when sizes differ."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
        size = self.image_size
        if x.shape[-1] != size or x.shape[-2] != size:
            scale = size / min(x.shape[-2:])
            hw = (max(size, round(x.shape[-2] * scale)), max(size, round(x.shape[-1] * scale)))
            x = F.interpolate(x, size=hw, mode="bicubic", align_corners=False).clamp(0, 1)
            top, left = (hw[0] - size) // 2, (hw[1] - size) // 2
            x = x[..., top : top + size, left : left + size]
        cfg = getattr(self.clip.visual, "preprocess_cfg", {}) or {}
        mean = torch.tensor(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)).view(1, 3, 1, 1)
        std = torch.tensor(cfg.get("std", open_clip.OPENAI_DATASET_STD)).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode_images(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Unnormalized image embeddings from the frozen image tower: (N, E) float32."""
        self.clip.eval()
        out = [self.clip.encode_image(self.preprocess(images[i : i + batch_size]).to(self.device)).float().cpu()
               for i in range(0, len(images), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim), np.float32)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int = 512) -> np.ndarray:
        """Unnormalized teacher text embeddings of (English) texts: (N, E) float32."""
        self.clip.eval()
        out = []
        for i in range(0, len(texts), batch_size):
            ids = torch.from_numpy(self.tokenizer.encode(texts[i : i + batch_size], self.context_length))
            out.append(self.clip.encode_text(ids.to(self.device)).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.embed_dim), np.float32)

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @property
    def embed_dim(self) -> int:
        return int(self.clip.text_projection.shape[1]) if isinstance(self.clip.text_projection, torch.Tensor) else int(
            self.clip.text_projection.out_features
        )

    # ---- persistence ----------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.fingerprint  # noqa: B018 - computed once and recorded
        with atomic_dir(directory) as tmp:
            torch.save(self.clip.state_dict(), tmp / "weights.pt")
            (tmp / "tokenizer.json").write_text(self.tokenizer.to_json(), encoding="utf-8")
            (tmp / "base.json").write_text(json.dumps({"arch": self.arch, **self.info}, indent=2), encoding="utf-8")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> BaseModel:
        directory = Path(directory)
        for name in ("weights.pt", "tokenizer.json", "base.json"):
            if not (directory / name).exists():
                raise FileNotFoundError(f"{directory / name}: missing; not a base-model folder written by cll-ray")
        info = json.loads((directory / "base.json").read_text(encoding="utf-8"))
        tokenizer = ClipBPE.from_json((directory / "tokenizer.json").read_text(encoding="utf-8"))
        clip = build_clip(info["arch"], tokenizer.size, tokenizer.eos_id)
        clip.load_state_dict(torch.load(directory / "weights.pt", map_location="cpu", weights_only=True))
        clip.eval()
        arch = info.pop("arch")
        return cls(clip=clip, tokenizer=tokenizer, arch=arch, info=info)

    @classmethod
    def from_open_clip(cls, arch: str, weights: str | None) -> BaseModel:
        """A real CLIP (e.g. ViT-B-16) from a local weights file, with CLIP's own BPE vocabulary.

        ``weights=None`` gives the architecture randomly initialised: for tests of the real model path only.
        """
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"{weights}: pretrained weights file not found (nothing is downloaded)")
        tokenizer = ClipBPE.from_clip_bpe_file()
        clip = build_clip(arch, tokenizer.size, tokenizer.eos_id, pretrained=weights)
        clip.eval()
        return cls(clip=clip, tokenizer=tokenizer, arch=arch, info={"source": str(weights or "random-init")})


def shipped_base_dir() -> Path:
    return Path(str(resources.files("cll_ray") / "assets" / SHIPPED_BASE))
