"""Write a dataset in the canonical layout (``layout.py``): Parquet tables, checksums and the manifest.

Shared by SynthXM and the real-data importers. ``DatasetWriter`` builds the whole dataset in a temporary sibling
directory and renames it into place only when every file is written (``io.atomic_dir``), so a failed import
never leaves a half-written dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cll_ray.io import atomic_dir, atomic_write_text
from cll_ray.layout import CAPTIONS_SCHEMA, IMAGES_FILE, IMAGES_SCHEMA, MANIFEST_FILE, SPLITS, captions_file

ROW_GROUP = 512  # images per Parquet row group: Ray Data reads a dataset in blocks of row groups


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def write_manifest(dataset_dir: str | Path, manifest: dict, atomic: bool = False) -> None:
    path = Path(dataset_dir) / MANIFEST_FILE
    if atomic:
        atomic_write_text(path, manifest_text(manifest))
    else:
        path.write_text(manifest_text(manifest), encoding="utf-8")


def write_captions_table(path: str | Path, table: pa.Table) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.select(CAPTIONS_SCHEMA.names).cast(CAPTIONS_SCHEMA), path)


class DatasetWriter:
    """``with DatasetWriter(out) as w: w.write_images(...); w.write_captions(lang, ...); w.finish(info)``.

    Captions are written one language at a time, so an importer holds a single language in memory.
    """

    def __init__(self, out: str | Path, links: dict[str, str | Path] | None = None):
        self.out = Path(out).absolute()
        self.links = {name: Path(target).absolute() for name, target in (links or {}).items()}
        self.captions: dict[str, int] = {}
        self.splits: dict[str, int] = {}
        self.manifest: dict | None = None

    def __enter__(self) -> DatasetWriter:
        self._ctx = atomic_dir(self.out)
        self.tmp = self._ctx.__enter__()
        for name, target in self.links.items():  # e.g. images -> the image root, for path-referenced images
            os.symlink(target, self.tmp / name, target_is_directory=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool | None:
        if exc_type is None and self.manifest is None:  # never install a dataset without a manifest
            error = RuntimeError(f"{self.out}: DatasetWriter.finish() was not called; nothing written")
            self._ctx.__exit__(RuntimeError, error, None)
            raise error
        return self._ctx.__exit__(exc_type, exc, tb)

    def write_images(self, tables: Iterable[pa.Table]) -> None:
        """The images table, from chunks (one row group each), so that embedded bytes stream to disk."""
        self.splits = dict.fromkeys(SPLITS, 0)
        with pq.ParquetWriter(self.tmp / IMAGES_FILE, IMAGES_SCHEMA) as parquet:
            for table in tables:
                parquet.write_table(table.select(IMAGES_SCHEMA.names).cast(IMAGES_SCHEMA), row_group_size=ROW_GROUP)
                for split in table.column("split").to_pylist():
                    self.splits[split] += 1

    def write_captions(self, lang: str, table: pa.Table) -> None:
        write_captions_table(self.tmp / captions_file(lang), table)
        self.captions[lang] = table.num_rows

    def finish(self, info: dict) -> dict:
        """Checksum every table and write the manifest (``info`` plus languages, sizes and files)."""
        rels = [IMAGES_FILE] + [captions_file(lang) for lang in self.captions]
        self.manifest = {
            **info,
            "languages": list(self.captions),
            "splits": self.splits,
            "captions": dict(self.captions),
            "files": {rel: sha256_file(self.tmp / rel) for rel in rels},
        }
        write_manifest(self.tmp, self.manifest)
        return self.manifest
