"""Teacher features, computed once per (dataset, base model) and cached: training runs only the text tower.

- image embeddings of every train/val/test image (the frozen image tower), keyed by image id;
- teacher English text embeddings of every English source caption of the train split, keyed by the text.

Both are unnormalized float32, as the reference stores them (method.md §1.1).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cll_ray import dataset as ds
from cll_ray.io import atomic_dir

if TYPE_CHECKING:  # the store itself stays light (numpy only): Ray Data actors load it
    from cll_ray.base_model import BaseModel

FEATURE_SPLITS = ("train", "val", "test")


@dataclass
class FeatureStore:
    image_ids: list[str]
    image_features: np.ndarray  # (N_images, E)
    texts: list[str]
    text_features: np.ndarray  # (N_texts, E)

    def __post_init__(self) -> None:
        self._image_row = {image_id: i for i, image_id in enumerate(self.image_ids)}
        self._text_row = {text: i for i, text in enumerate(self.texts)}

    def image_rows(self, image_ids: list[str]) -> np.ndarray:
        try:
            return np.array([self._image_row[i] for i in image_ids], dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"no cached image feature for image id {e.args[0]!r}") from None

    def text_rows(self, texts: list[str]) -> np.ndarray:
        try:
            return np.array([self._text_row[t] for t in texts], dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"no cached teacher feature for English caption {e.args[0]!r}") from None

    def save(self, directory: Path) -> None:
        with atomic_dir(directory) as tmp:
            np.save(tmp / "image_features.npy", self.image_features)
            np.save(tmp / "text_features.npy", self.text_features)
            (tmp / "keys.json").write_text(json.dumps({"image_ids": self.image_ids, "texts": self.texts}), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> FeatureStore:
        """The store with its arrays memory-mapped (read-only): the processes of a node share one copy in the
        page cache, and only the rows a batch gathers are read."""
        keys = json.loads((directory / "keys.json").read_text(encoding="utf-8"))
        return cls(
            image_ids=keys["image_ids"],
            image_features=np.load(directory / "image_features.npy", mmap_mode="r"),
            texts=keys["texts"],
            text_features=np.load(directory / "text_features.npy", mmap_mode="r"),
        )


def english_sources(dataset_dir: str | Path) -> list[str]:
    """Distinct English source captions of the train split over every language (sorted, deterministic)."""
    texts: set[str] = set()
    for lang in ds.dataset_languages(dataset_dir):
        table = ds.read_captions(dataset_dir, lang, splits=("train",))
        texts.update(table.captions if lang == "en" else [t for t in table.captions_en if t])
    return sorted(texts)


def features_key(dataset_dir: str | Path, base: BaseModel) -> str:
    manifest = ds.read_manifest(dataset_dir)
    payload = json.dumps({"data": manifest.get("files", manifest), "base": base.fingerprint}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_or_compute_features(
    dataset_dir: str | Path, base: BaseModel, cache_root: str | Path, progress: bool = True, chunk: int = 2048,
    compute: Callable[[], FeatureStore] | None = None,
) -> FeatureStore:
    """The cached features for (dataset, base model), computing them first if needed: with ``compute`` (the Ray
    Data job of ``cll_ray.distributed.feature_job``, say), else in this process."""
    folder = Path(cache_root) / "features" / features_key(dataset_dir, base)
    if (folder / "keys.json").exists():
        return FeatureStore.load(folder)
    store = compute() if compute is not None else _compute_in_process(dataset_dir, base, progress, chunk)
    store.save(folder)
    return store


def _compute_in_process(dataset_dir: str | Path, base: BaseModel, progress: bool, chunk: int) -> FeatureStore:
    from tqdm.auto import tqdm

    images = ds.read_images(dataset_dir, splits=FEATURE_SPLITS)
    image_ids = images.column("image_id").to_pylist()
    parts = []
    for start in tqdm(range(0, len(image_ids), chunk), desc="image features", disable=not progress):
        pixels = ds.decode_images(images.slice(start, chunk), dataset_dir, base.image_size)
        parts.append(base.encode_images(pixels))
    texts = english_sources(dataset_dir)
    text_parts = [
        base.encode_texts(texts[s : s + chunk])
        for s in tqdm(range(0, len(texts), chunk), desc="teacher text features", disable=not progress)
    ]
    dim = base.embed_dim
    return FeatureStore(
        image_ids=image_ids,
        image_features=np.concatenate(parts) if parts else np.zeros((0, dim), np.float32),
        texts=texts,
        text_features=np.concatenate(text_parts) if text_parts else np.zeros((0, dim), np.float32),
    )
