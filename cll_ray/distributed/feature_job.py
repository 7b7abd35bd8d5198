"""Teacher features as a Ray Data batch-inference job (method.md §1.1): every image through the frozen image
tower and every English source caption through the frozen text tower, once per (dataset, base model).

``read_parquet(images) -> map_batches(decode, CPU tasks) -> map_batches(EncodeImages, actor pool)``: decoding
runs in parallel tasks while each actor, which loads the base model once, keeps its device busy. With GPUs in
the cluster (or asked of its autoscaler) there is one actor per GPU (``num_gpus=1``) and large batches; on CPUs one actor and small batches.
Results are put back in the dataset's order, so the store does not depend on how Ray scheduled the blocks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch
from ray.data.expressions import col

from cll_ray import dataset as ds
from cll_ray import layout
from cll_ray.base_model import BaseModel
from cll_ray.features import FEATURE_SPLITS, FeatureStore, english_sources

# (images, texts) per batch: a ViT-B/16 forward at 256 images fits any current GPU; CPUs want small batches
BATCH_SIZES = {"gpu": (256, 1024), "cpu": (32, 256)}


class _Encoder:
    """Loads the base model once per actor, on the GPU Ray gave it, else on the CPU."""

    def __init__(self, base_dir: str):
        self.base = BaseModel.load(base_dir)
        if torch.cuda.is_available():  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
            self.base.clip.to("cuda")


class EncodeImages(_Encoder):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"image_id": batch["image_id"], "features": self.base.encode_images(batch["pixels"])}


class EncodeTexts(_Encoder):
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = batch["text"].astype(str).tolist()
        return {"text": batch["text"], "features": self.base.encode_texts(texts)}


def decode_batch(batch: dict[str, np.ndarray], dataset_dir: str, image_size: int) -> dict[str, np.ndarray]:
    """Encoded image bytes or paths -> uint8 pixels (B, S, S, 3)."""
    return {"image_id": batch["image_id"], "pixels": ds.decode_images(batch, dataset_dir, image_size)}


def _collect(dataset: ray.data.Dataset, key: str, order: list[str], dim: int) -> np.ndarray:
    """Features of ``dataset`` as one array in the order of ``order`` (one row per key)."""
    row = {k: i for i, k in enumerate(order)}
    out = np.zeros((len(order), dim), dtype=np.float32)
    for batch in dataset.iter_batches(batch_size=4096, batch_format="numpy"):
        out[[row[k] for k in batch[key].astype(str).tolist()]] = batch["features"]
    return out


def compute_features(dataset_dir: str | Path, base_dir: str | Path, gpus: int = 0) -> FeatureStore:
    """The feature store of (dataset, base model in ``base_dir``), computed with Ray Data on the current cluster.

    One encoder actor per GPU: the cluster's, or the ``gpus`` asked of an autoscaler, which may be none yet (the
    pool starts with the first and grows as they come up). Ray Data reports its own progress (quiet under the
    CLI's ``RAY_DATA_DISABLE_PROGRESS_BARS=1``).
    """
    dataset_dir, base_dir = str(Path(dataset_dir).absolute()), str(Path(base_dir).absolute())
    base = BaseModel.load(base_dir)  # for its sizes only
    gpus = max(gpus, int(ray.cluster_resources().get("GPU", 0)))
    image_batch, text_batch = BATCH_SIZES["gpu" if gpus else "cpu"]
    actor = {"compute": ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, gpus)), "num_gpus": 1 if gpus else 0,
             "fn_constructor_kwargs": {"base_dir": base_dir}, "batch_format": "numpy"}

    image_ids = ds.read_images(dataset_dir, splits=FEATURE_SPLITS, columns=("image_id",)).column("image_id").to_pylist()
    images = (
        ray.data.read_parquet(str(Path(dataset_dir) / layout.IMAGES_FILE))
        .filter(expr=col("split").is_in(list(FEATURE_SPLITS)))
        .select_columns(["image_id", "image", "path"])
        .map_batches(decode_batch, fn_kwargs={"dataset_dir": dataset_dir, "image_size": base.image_size},
                     batch_size=image_batch, batch_format="numpy")
        .map_batches(EncodeImages, batch_size=image_batch, **actor)
    )
    texts = english_sources(dataset_dir)  # none when the dataset has no train split (XM3600 as released)
    encoded_texts = ray.data.from_arrow(pa.table({"text": pa.array(texts, pa.string())})).map_batches(
        EncodeTexts, batch_size=text_batch, **actor)
    return FeatureStore(
        image_ids=image_ids,
        image_features=_collect(images, "image_id", image_ids, base.embed_dim),
        texts=texts,
        text_features=_collect(encoded_texts, "text", texts, base.embed_dim) if texts else
        np.zeros((0, base.embed_dim), np.float32),
    )
