"""The canonical on-disk layout shared by SynthXM and every real-data importer.

A dataset directory holds:

- ``images.parquet``: one row per image (``IMAGES_SCHEMA``); the image is stored inline as encoded bytes
  (PNG/JPEG) or referenced by a path relative to the dataset directory;
- ``captions/lang=<code>/part-0.parquet``: one row per caption of that language (``CAPTIONS_SCHEMA``);
  the ``lang=`` folder is a hive partition, so Ray Data adds a ``lang`` column when it reads the folder;
- ``manifest.json``: languages, split sizes, seed, generator version and a sha256 per file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

SPLITS = ("pretrain", "train", "val", "test")

# The 36 XM3600 languages (method.md §5.1), in alphabetical order.
XM3600_LANGUAGES = (
    "ar bn cs da de el en es fa fi fil fr he hi hr hu id it ja ko mi nl no pl pt "
    "quz ro ru sv sw te th tr uk vi zh"
).split()

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=True),  # encoded PNG/JPEG bytes, or null when `path` is set
        pa.field("path", pa.string(), nullable=True),  # relative to the dataset directory
        pa.field("scene", pa.string(), nullable=True),  # SynthXM: the structured scene as JSON
    ]
)

CAPTIONS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("caption_index", pa.int32(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("caption_en", pa.string(), nullable=True),  # parallel English source caption
    ]
)

IMAGES_FILE = "images.parquet"
MANIFEST_FILE = "manifest.json"
CAPTIONS_DIR = "captions"


def captions_file(lang: str) -> str:
    """Path of a language's caption table, relative to the dataset directory."""
    return f"{CAPTIONS_DIR}/lang={lang}/part-0.parquet"


def data_home(root: str = "") -> Path:
    """Where generated data and caches live: ``root`` (data.root), else $CLL_RAY_HOME, else ~/.cache/cll_ray."""
    return Path(root or os.environ.get("CLL_RAY_HOME") or "~/.cache/cll_ray").expanduser().resolve()
