"""Ray Data: read a language's caption table, tokenize it, join the cached teacher features by id.

The pipeline is ``read_parquet -> filter(split) -> map_batches(EncodeCaptions) -> materialize``. The tokenizer
and the feature store load once per actor. Datasets are materialized before the Trainer starts: the caption
tables are small, and Ray Data would otherwise wait for CPUs that the Train workers hold (ray.md §2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray
import torch
from ray.data.expressions import col

from cll_ray import layout
from cll_ray.engine import TrainSet
from cll_ray.features import FeatureStore
from cll_ray.tokenization import ClipBPE

MAX_CAPTIONS_PER_IMAGE = 1000  # row keys are image_row * 1000 + caption_index


class EncodeCaptions:
    """``map_batches`` callable: caption strings -> token ids + teacher text/image features + a stable row key."""

    def __init__(self, tokenizer_json: str, context_length: int, features_dir: str, lang: str):
        self.tokenizer = ClipBPE.from_json(tokenizer_json)
        self.context_length = context_length
        self.features = FeatureStore.load(Path(features_dir))
        self.lang = lang

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        captions = [str(c) for c in batch["caption"]]
        english = captions if self.lang == "en" else [str(c) for c in batch["caption_en"]]  # x_tgt = x_en for en
        image_rows = self.features.image_rows([str(i) for i in batch["image_id"]])
        return {
            "key": image_rows * MAX_CAPTIONS_PER_IMAGE + batch["caption_index"].astype(np.int64),
            "ids": self.tokenizer.encode(captions, self.context_length),
            "teacher": self.features.text_features[self.features.text_rows(english)],
            "image": self.features.image_features[image_rows],
            "image_index": image_rows,
        }


def build_train_dataset(
    dataset_dir: str | Path, lang: str, tokenizer: ClipBPE, context_length: int, features_dir: str | Path
) -> ray.data.Dataset:
    """The training rows of ``lang`` as a materialized Ray Dataset of model inputs."""
    path = Path(dataset_dir) / layout.captions_file(lang)
    ds = (
        ray.data.read_parquet(str(path))
        .filter(expr=col("split") == "train")
        .select_columns(["image_id", "caption_index", "caption", "caption_en"])
        .map_batches(
            EncodeCaptions,
            fn_constructor_kwargs={"tokenizer_json": tokenizer.to_json(), "context_length": context_length,
                                   "features_dir": str(features_dir), "lang": lang},
            batch_format="numpy",
            batch_size=1024,
            concurrency=1,
            num_cpus=0.5,
        )
    )
    return ds.materialize()


def collect_train_set(shard) -> TrainSet:
    """A worker's whole shard as tensors, sorted by row key so its content, not block order, decides the result."""
    parts = list(shard.iter_batches(batch_size=4096, batch_format="numpy"))
    if not parts:
        raise ValueError("this worker's data shard is empty (more workers than training rows?)")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.argsort(cat["key"], kind="stable")
    return TrainSet(
        ids=torch.from_numpy(cat["ids"][order].astype(np.int64)),
        teacher=torch.from_numpy(cat["teacher"][order].astype(np.float32)),
        image=torch.from_numpy(cat["image"][order].astype(np.float32)),
        image_index=torch.from_numpy(cat["image_index"][order].astype(np.int64)),
        keys=torch.from_numpy(cat["key"][order].astype(np.int64)),
    )
