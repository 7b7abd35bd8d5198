"""Use an exported model (``cll_ray.export``): text embeddings in any learned language, and image search.

Everything goes through open_clip and `tokenizers` only, exactly as a user without cll-ray would load the folder;
an ``mla`` model's non-English languages also need its acquisition encoder (``model.MLAStudent`` over the loaded
CLIP, with the exported table, linear map and acquirers): the text's language picks the path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image
from tokenizers import Tokenizer

from cll_ray.export import EXPORT_INFO, MLA_TOKENIZER_FILE, MLA_WEIGHTS_FILE, WEIGHTS_FILE

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class ExportedModel:
    def __init__(self, directory: str | Path, device: str | None = None):
        self.directory = Path(directory)
        info_path = self.directory / EXPORT_INFO
        if not info_path.is_file():
            raise FileNotFoundError(f"{info_path}: missing; not a model folder written by `cll-ray export`")
        try:
            self.info = json.loads(info_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{info_path}: not valid JSON ({e}); export the model again") from e
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        for name in (WEIGHTS_FILE, "open_clip_config.json", "tokenizer.json"):
            if not (self.directory / name).is_file():
                raise FileNotFoundError(f"{self.directory / name}: missing; export the model again (`cll-ray export`)")
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(f"local-dir:{self.directory}")
        except Exception as e:  # safetensors, JSON and torch each raise their own type for a damaged file
            raise ValueError(f"{self.directory / WEIGHTS_FILE} (or open_clip_config.json): not a loadable model, "
                             f"truncated or damaged ({type(e).__name__}: {e}); export the model again") from e
        self.model.to(self.device).eval()
        try:
            self.tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        except Exception as e:  # the tokenizers library raises a bare Exception
            raise ValueError(f"{self.directory / 'tokenizer.json'}: not a readable tokenizer ({e}); "
                             "export the model again") from e
        self.encoder = self._load_mla() if "mla" in self.info else None

    def _load_mla(self):
        """MLA's acquisition encoder over the loaded CLIP: the multilingual table, linear map and acquirers."""
        from safetensors.torch import load_file

        from cll_ray.methods.adapters import AdapterSite, LayerAdapters
        from cll_ray.model import MLAStudent

        meta = self.info["mla"]
        weights = load_file(str(self.directory / MLA_WEIGHTS_FILE))
        student = MLAStudent(self.model, self.info["eos_id"], weights["table"], meta["sep_id"])
        student.input_map.load_state_dict({k.split(".", 1)[1]: v for k, v in weights.items()
                                           if k.startswith("input_map.")})
        width = student.transformer.width
        sites = [AdapterSite(width, meta["acquirer_width"] or width // 2, bert_init=False)
                 for _ in student.transformer.resblocks]
        for lang in meta["languages"]:
            for layer, site in enumerate(sites):
                prefix = f"acquirers.{lang}.{layer}."
                site.banks[lang] = site.new_bank()
                site.banks[lang].load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
        student.layer_adapter = LayerAdapters(sites)
        self.mla_tokenizer = Tokenizer.from_file(str(self.directory / MLA_TOKENIZER_FILE))
        return student.to(self.device).eval()

    @property
    def languages(self) -> list[str]:
        return list(self.info["languages"])

    def check_language(self, lang: str | None) -> None:
        if lang is not None and lang not in self.languages:
            raise ValueError(f"{self.directory}: language {lang!r} was not learned; this model knows "
                             f"{', '.join(self.languages)}")

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([e.ids for e in self.tokenizer.encode_batch(list(texts))], dtype=torch.long)  # (N, L)

    @torch.no_grad()
    def encode_text(self, texts: list[str], normalize: bool = True, batch_size: int = 256,
                    lang: str | None = None) -> np.ndarray:
        """(N, E) float32 text embeddings (L2-normalized unless ``normalize=False``). An ``mla`` model needs the
        texts' language ``lang``: English (and any language without acquirers) takes CLIP's own path."""
        if self.encoder is not None:
            return self._encode_mla(texts, normalize, batch_size, lang)
        out = [self.model.encode_text(self.tokenize(texts[i : i + batch_size]).to(self.device), normalize=normalize)
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out).float().cpu().numpy()

    def _encode_mla(self, texts: list[str], normalize: bool, batch_size: int, lang: str | None) -> np.ndarray:
        if lang is None:
            raise ValueError(f"{self.directory}: an mla model routes a text by its language; give it (--lang), "
                             f"one of {', '.join(self.languages)}")
        self.check_language(lang)
        multilingual = lang in self.info["mla"]["languages"]
        self.encoder.multilingual = multilingual
        for site in self.encoder.layer_adapter.sites:
            site.active = lang if multilingual else None
        tokenizer = self.mla_tokenizer if multilingual else self.tokenizer
        out = []
        for i in range(0, len(texts), batch_size):
            ids = torch.tensor([e.ids for e in tokenizer.encode_batch(list(texts[i : i + batch_size]))])
            vectors = self.encoder(ids.to(self.device))
            out.append(torch.nn.functional.normalize(vectors, dim=-1) if normalize else vectors)
        return torch.cat(out).float().cpu().numpy()

    @torch.no_grad()
    def encode_images(self, paths: list[Path], normalize: bool = True, batch_size: int = 64) -> np.ndarray:
        """(N, E) float32 image embeddings through the exported image tower."""
        out = []
        for i in range(0, len(paths), batch_size):
            pixels = []
            for path in paths[i : i + batch_size]:
                try:
                    with Image.open(path) as img:
                        pixels.append(self.preprocess(img.convert("RGB")))
                except OSError as e:  # not an image, or truncated: PIL's messages do not name the file
                    raise ValueError(f"{path}: not a readable image ({e}); fix or remove it") from e
            out.append(self.model.encode_image(torch.stack(pixels).to(self.device), normalize=normalize))
        return torch.cat(out).float().cpu().numpy() if out else np.zeros((0, 0), np.float32)

    def search(self, queries: list[str], folder: str | Path, top_k: int = 5,
               lang: str | None = None) -> list[list[tuple[str, float]]]:
        """For each query, the ``top_k`` images of ``folder`` (recursively) by cosine similarity, best first."""
        paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        scores = self.encode_text(queries, lang=lang) @ self.encode_images(paths).T  # (Q, N)
        ranked = []
        for row in scores:
            best = np.argsort(-row, kind="stable")[:top_k]
            ranked.append([(str(paths[j]), float(row[j])) for j in best])
        return ranked
