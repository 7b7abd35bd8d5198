"""Ray Data: read the caption tables, tokenize them, join the cached teacher features by id.

One pipeline for all the languages of a run: ``read_parquet(captions/) -> filter(train split, run languages)
-> map_batches(EncodeCaptions) -> materialize``, then one dataset per language (``train_<lang>``). A row is its
token ids (int32) and two row indices into the teacher feature store, which every worker loads itself: the
features are never copied into the object store. Every worker reads a language whole and trains on its slice
of every global batch (``TrainSet.part``), so W workers draw exactly one worker's batches. ``EncodeCaptions``
loads the tokenizers (each language's is the one its task will have) and the feature store once per actor,
and imports nothing heavy. Datasets are materialized before the Trainer starts: Ray Data would otherwise wait
for CPUs the Train workers hold.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray
from ray.data.expressions import col

from cll_ray import layout
from cll_ray.features import FeatureStore
from cll_ray.tokenization import ClipBPE
from cll_ray.wordpiece import tokenizer_from_json

MAX_CAPTIONS_PER_IMAGE = 1000  # row keys are image_row * 1000 + caption_index


class EncodeCaptions:
    """``map_batches`` callable: caption strings -> token ids, teacher text/image feature rows, a stable row key."""

    def __init__(self, tokenizers: list[dict[str, str]], context_length: int, features_dir: str):
        # one {lang: tokenizer} per task order: column ids_<k> holds the ids under order k's tokenizers
        self.tokenizers = [{lang: tokenizer_from_json(text) for lang, text in order.items()} for order in tokenizers]
        self.context_length = context_length
        self.features = FeatureStore.load(Path(features_dir))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        langs = batch["lang"].astype(str)
        captions = batch["caption"].astype(str)
        # x_tgt = x_en for the English task (method.md §3)
        english = np.where(langs == "en", captions, batch["caption_en"].astype(str))
        image_rows = self.features.image_rows(batch["image_id"].astype(str).tolist())
        out = {}
        for k, tokenizers in enumerate(self.tokenizers):
            ids = np.zeros((len(captions), self.context_length), dtype=np.int32)
            for lang in np.unique(langs):
                rows = np.nonzero(langs == lang)[0]
                ids[rows] = tokenizers[lang].encode(captions[rows].tolist(), self.context_length)
            out[f"ids_{k}"] = ids
        return {
            "lang": langs,
            "key": image_rows * MAX_CAPTIONS_PER_IMAGE + batch["caption_index"].astype(np.int64),
            **out,
            "teacher_index": self.features.text_rows(english.tolist()),
            "image_index": image_rows,
        }


def build_train_datasets(
    dataset_dir: str | Path, tokenizers: dict[str, dict[str, ClipBPE]], context_length: int, features_dir: str | Path
) -> dict[str, ray.data.Dataset]:
    """``{prefix + lang: dataset}`` of model inputs, for every ``{prefix: {lang: tokenizer}}`` (a run has one
    prefix, ``train_``; a sweep one per task order). One read and one tokenizing pass serve every prefix."""
    prefixes = list(tokenizers)
    langs = sorted({lang for per_lang in tokenizers.values() for lang in per_lang})
    encoded = (
        ray.data.read_parquet(str(Path(dataset_dir) / layout.CAPTIONS_DIR))  # hive: lang=<code>/ -> "lang"
        .filter(expr=(col("split") == "train") & col("lang").is_in(langs))
        .select_columns(["lang", "image_id", "caption_index", "caption", "caption_en"])
        .map_batches(
            EncodeCaptions,
            fn_constructor_kwargs={
                "tokenizers": [{lang: t.to_json() for lang, t in tokenizers[p].items()} for p in prefixes],
                "context_length": context_length, "features_dir": str(features_dir)},
            batch_format="numpy",
            batch_size=2048,
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=0.5,
        )
        .materialize()
    )
    shared = ["lang", "key", "teacher_index", "image_index"]
    return {
        f"{prefix}{lang}": encoded.filter(expr=col("lang") == lang).select_columns([*shared, f"ids_{k}"])
        .rename_columns({f"ids_{k}": "ids"}).materialize()
        for k, prefix in enumerate(prefixes) for lang in tokenizers[prefix]
    }


def collect_train_set(shard, features: FeatureStore):
    """A worker's copy of a language's rows, sorted by row key so its content, not block order, decides the
    result, with the teacher features looked up in the worker's own ``features`` store."""
    from cll_ray.engine import TrainSet

    parts = list(shard.iter_batches(batch_size=4096, batch_format="numpy"))
    if not parts:
        raise ValueError("this language's training rows are empty")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in ("key", "ids", "teacher_index", "image_index")}
    order = np.argsort(cat["key"], kind="stable")
    return TrainSet.from_rows(cat["ids"][order], cat["teacher_index"][order], cat["image_index"][order], features,
                              keys=cat["key"][order])
