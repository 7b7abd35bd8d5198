"""Write a dataset in the canonical layout (``layout.py``): Parquet tables, checksums and the manifest.

Shared by SynthXM and the real-data importers. ``DatasetWriter`` builds the whole dataset in a temporary sibling
directory and renames it into place only when every file is written (``io.atomic_dir``), so a failed import
never leaves a half-written dataset behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from cll_ray.io import atomic_dir, atomic_write_text
from cll_ray.layout import CAPTIONS_SCHEMA, IMAGES_FILE, IMAGES_SCHEMA, MANIFEST_FILE, SPLITS, captions_file

ROW_GROUP = 512  # images per Parquet row group: Ray Data reads a dataset in blocks of row groups
# While an import replaces an earlier one inside a folder that holds other files too, this file lists every
# path the two imports own; a replace that was interrupted is finished (or redone) by the next --overwrite.
REPLACING_FILE = ".manifest.replacing.json"


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


def previous_dataset_files(out: Path) -> set[str] | None:
    """The paths (relative to ``out``) that an earlier dataset writer put there: its manifest's files, the
    manifest and its links; None when ``out`` holds no readable manifest."""
    for name in (REPLACING_FILE, MANIFEST_FILE):  # an interrupted replace lists the old and the new files
        try:
            manifest = json.loads((out / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and isinstance(manifest.get("files"), (dict, list)):
            links = set(manifest.get("links", []))
            if "links" not in manifest and (out / "images").is_symlink():  # written before manifests listed links
                links.add("images")
            return set(manifest["files"]) | links | {MANIFEST_FILE, REPLACING_FILE}
    return None


def entries(folder: Path) -> list[str]:
    """Files and links under ``folder``, relative to it (a link to a folder is one entry, not followed)."""
    rels = []
    for parent, dirs, files in os.walk(folder):
        here = Path(parent)
        rels += [str((here / n).relative_to(folder)) for n in files]
        rels += [str((here / n).relative_to(folder)) for n in dirs if (here / n).is_symlink()]
    return rels


def replace_dataset_files(new: Path, out: Path, old: set[str]) -> None:
    """Move the dataset built in ``new`` into ``out``, replacing the files of ``old`` (what the earlier writer
    owned) and leaving every other file of ``out`` alone. The manifest is removed first and installed last, so
    a reader never sees a manifest that does not match its tables; REPLACING_FILE covers an interruption."""
    rels = entries(new)
    atomic_write_text(out / REPLACING_FILE, json.dumps({"files": sorted(old | set(rels))}))
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    for rel in rels:
        if rel != MANIFEST_FILE:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(new / rel, out / rel)
    for rel in sorted(old - set(rels) - {MANIFEST_FILE, REPLACING_FILE}):
        path = out / rel
        if path.is_symlink() or path.is_file():
            path.unlink()
            for parent in path.relative_to(out).parents:  # now-empty folders of a dropped language
                if str(parent) != "." and (out / parent).is_dir() and not any((out / parent).iterdir()):
                    (out / parent).rmdir()
    os.replace(new / MANIFEST_FILE, out / MANIFEST_FILE)
    (out / REPLACING_FILE).unlink()


class DatasetWriter:
    """``with DatasetWriter(out) as w: w.write_images(...); w.write_captions(lang, ...); w.finish(info)``.

    Captions are written one language at a time, so an importer holds a single language in memory. By default
    the finished dataset replaces ``out`` whole; with ``replace`` (the files an earlier writer owned there, see
    ``previous_dataset_files``) only those are replaced and the other files in ``out`` stay.
    """

    def __init__(self, out: str | Path, links: dict[str, str | Path] | None = None, replace: set[str] | None = None):
        self.out = Path(out).absolute()
        self.links = {name: Path(target).absolute() for name, target in (links or {}).items()}
        self.replace = replace
        self.captions: dict[str, int] = {}
        self.splits: dict[str, int] = {}
        self.manifest: dict | None = None

    def __enter__(self) -> DatasetWriter:
        self._ctx = atomic_dir(self.out) if self.replace is None else self._into_existing()
        self.tmp = self._ctx.__enter__()
        for name, target in self.links.items():  # e.g. images -> the image root, for path-referenced images
            os.symlink(target, self.tmp / name, target_is_directory=True)
        return self

    @contextmanager
    def _into_existing(self):
        tmp = Path(tempfile.mkdtemp(prefix=".import-", suffix=".tmp", dir=self.out))  # same filesystem: renames
        try:
            yield tmp
            replace_dataset_files(tmp, self.out, self.replace)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

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
            "links": sorted(self.links),
        }
        write_manifest(self.tmp, self.manifest)
        return self.manifest
