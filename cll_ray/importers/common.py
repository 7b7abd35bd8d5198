"""What every importer shares: bad-record bookkeeping, the import report, and building the canonical tables.

A bad record is reported with its file and line and counted by kind. Without ``skip_bad`` an import that saw any
bad record raises ``BadRecordsError`` (listing them) before anything is written; with it, the bad records are
left out and listed in the report. Never silently.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from cll_ray.dataset import DataError
from cll_ray.layout import (
    CAPTIONS_SCHEMA,
    IMAGES_FILE,
    IMAGES_SCHEMA,
    MANIFEST_FILE,
    SPLITS,
    captions_file,
    data_home,
)
from cll_ray.writer import ROW_GROUP, DatasetWriter, previous_dataset_files

IMPORTER_VERSION = "1.0.0"


class Kind:
    """The kinds of bad record, as reported and counted."""

    MISSING_IMAGE = "missing image"
    EMPTY_CAPTION = "empty caption"
    UNKNOWN_LANGUAGE = "unknown language"
    DUPLICATE_ID = "duplicate id"
    MALFORMED = "malformed record"
    MISSING_ENGLISH = "missing English source"

SHOWN = 20  # bad records printed in a report or an error; all are counted


@dataclass(frozen=True)
class BadRecord:
    kind: str
    file: str
    line: int  # 1-based line in ``file`` (a 0-based row for Parquet input, see ``unit``)
    detail: str
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.file}:{self.unit} {self.line}: {self.kind}: {self.detail}"


class BadRecordsError(DataError):
    """Bad input records, and ``skip_bad`` was not set."""

    def __init__(self, bad: list[BadRecord]):
        self.bad = bad
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(Counter(b.kind for b in bad).items()))
        shown = "\n".join(f"  {b}" for b in bad[:SHOWN])
        more = f"\n  ... and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        super().__init__(f"{len(bad)} bad record(s) ({counts}); nothing was written. Fix them, or pass "
                         f"--skip-bad (skip_bad=True) to leave them out:\n{shown}{more}")


@dataclass
class ImportReport:
    """What an import (or add-language) did: per-language and per-split counts, and every bad record."""

    out: str
    images: dict[str, int] = field(default_factory=dict)  # split -> images
    captions: dict[str, dict[str, int]] = field(default_factory=dict)  # lang -> split -> captions
    bad: list[BadRecord] = field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # e.g. columns ignored with --ignore-columns

    @property
    def bad_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(b.kind for b in self.bad).items()))

    def summary(self) -> dict:
        return {"images": self.images, "captions": self.captions, "skipped": self.bad_counts,
                "seconds": round(self.seconds, 2)}

    def format(self) -> str:
        splits = [s for s in SPLITS if any(c.get(s) for c in self.captions.values()) or self.images.get(s)]
        rows = [["lang", *splits, "total"]]
        rows += [[lang, *(str(c.get(s, 0)) for s in splits), str(sum(c.values()))] for lang, c in self.captions.items()]
        rows += [["images", *(str(self.images.get(s, 0)) for s in splits), str(sum(self.images.values()))]]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"{self.out}: {sum(self.images.values())} images, {len(self.captions)} languages "
                 f"in {self.seconds:.1f}s"]
        lines += ["  " + "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
                  for r in rows]
        if self.bad:
            lines.append(f"skipped {len(self.bad)} bad record(s): "
                         + ", ".join(f"{n} {k}" for k, n in self.bad_counts.items()))
            lines += [f"  {b}" for b in self.bad[:SHOWN]]
            if len(self.bad) > SHOWN:
                lines.append(f"  ... and {len(self.bad) - SHOWN} more (all listed in the manifest's import.bad)")
        else:
            lines.append("no bad records")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


class BadRecords:
    """Collects bad records while an importer reads its sources."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.records: list[BadRecord] = []
        self._seen: set[tuple] = set()

    def add(self, kind: str, file: str | Path, line: int, detail: str, unit: str = "line") -> None:
        if (kind, str(file), line) not in self._seen:  # a source read twice (COCO-36 English) reports once
            self._seen.add((kind, str(file), line))
            self.records.append(BadRecord(kind, str(file), int(line), detail, unit))

    def check(self) -> None:
        """Raise when there were bad records and they may not be skipped."""
        if self.records and not self.skip_bad:
            raise BadRecordsError(self.records)


def blank(text) -> bool:
    """Null, empty or whitespace-only text, or a stringified missing value (the dataset reader's rule)."""
    return not isinstance(text, str) or not text.strip() or text.strip().lower() in ("nan", "none", "null")


class CaptionRows:
    """One language's caption rows in file order; ``caption_index`` counts captions per image."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {name: [] for name in CAPTIONS_SCHEMA.names}
        self._per_image: Counter = Counter()

    def add(self, image_id: str, split: str, caption: str, caption_en: str | None = None) -> None:
        self.cols["image_id"].append(image_id)
        self.cols["split"].append(split)
        self.cols["caption_index"].append(self._per_image[image_id])
        self.cols["caption"].append(caption.strip())
        self.cols["caption_en"].append(caption_en.strip() if isinstance(caption_en, str) else None)
        self._per_image[image_id] += 1

    def __len__(self) -> int:
        return len(self.cols["caption"])

    def count(self, image_id: str) -> int:
        """Captions of ``image_id`` added so far."""
        return self._per_image[image_id]

    def table(self) -> pa.Table:
        """The rows as an Arrow table (far smaller than the Python lists: COCO-36 holds 36 x 590k captions)."""
        return pa.Table.from_pydict(self.cols, schema=CAPTIONS_SCHEMA)


def split_counts(table: pa.Table) -> dict[str, int]:
    counts = Counter(table.column("split").to_pylist())
    return {s: counts[s] for s in SPLITS if counts[s]}


def image_chunks(images: dict[str, tuple[str, str]], image_root: Path, embed: bool, chunk: int = ROW_GROUP):
    """``{image_id: (split, path relative to image_root)}`` -> images tables of ``chunk`` rows.

    Referenced images get the path ``images/<rel>`` (``images`` is a link to the image root inside the dataset);
    embedded ones carry their encoded bytes, which makes the dataset self-contained (e.g. for a cluster). Chunks
    keep only one row group of image bytes in memory.
    """
    ids = list(images)
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        rel = [images[i][1] for i in part]
        yield pa.Table.from_pydict(
            {
                "image_id": part,
                "split": [images[i][0] for i in part],
                "image": [(image_root / r).read_bytes() for r in rel] if embed else pa.nulls(len(part), pa.binary()),
                "path": pa.nulls(len(part), pa.string()) if embed else [f"images/{r}" for r in rel],
                "scene": pa.nulls(len(part), pa.string()),
            },
            schema=IMAGES_SCHEMA,
        )


def check_not_cache(path: str | Path, what: str) -> None:
    """Refuse to change a dataset inside the SynthXM cache: every default run reads it as generated."""
    cache = data_home() / "synthxm"  # sequence.synthxm_dir's parent
    resolved = Path(path).expanduser().resolve()
    if resolved == cache or cache in resolved.parents:
        raise ValueError(f"{path}: is in the SynthXM cache ({cache}), which default runs read as generated; "
                         f"{what} would change it. Write to another folder (--out)")


def check_out(out: str | Path, overwrite: bool) -> set[str] | None:
    """Before an import reads anything: None when ``out`` is new or empty, else (with ``overwrite``) the files
    the earlier import wrote there, the only ones the new import may replace. A user's own files never go."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; nothing was written")
    if not out.exists() or not any(out.iterdir()):
        return None
    if not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty; nothing was written. Choose a new or empty folder, "
                              "or pass --overwrite to replace the dataset an earlier import wrote there (only the "
                              "files its manifest lists; other files stay)")
    owned = previous_dataset_files(out)
    if owned is None:
        raise FileExistsError(f"{out}: is not empty and holds no dataset manifest ({MANIFEST_FILE}); nothing was "
                              "written. --overwrite replaces only what an earlier import wrote (as its manifest "
                              "lists); choose a new or empty folder")
    check_not_cache(out, "--overwrite")
    return owned


def write_import(
    out: str | Path, name: str, source: dict, images: dict[str, tuple[str, str]], image_root: Path,
    captions: dict[str, pa.Table], bad: BadRecords, embed_images: bool, started: float,
    replace: set[str] | None = None,
) -> ImportReport:
    """Write the imported dataset atomically and return its report (raises on bad records unless skipped).

    ``replace``: the earlier import's files in ``out`` (``check_out``); only those may be replaced.
    """
    bad.check()
    used = {i for table in captions.values() for i in pc.unique(table.column("image_id")).to_pylist()}
    images = {i: v for i, v in images.items() if i in used}  # an image without any caption is no use
    if not images:
        raise DataError(f"{source}: no image with a usable caption; nothing to import")
    links = None if embed_images else {"images": image_root}
    if replace is not None:
        writes = [IMAGES_FILE, MANIFEST_FILE, *map(captions_file, captions), *(links or {})]
        clash = [rel for rel in writes if rel not in replace and os.path.lexists(Path(out) / rel)]
        if clash:
            raise FileExistsError(f"{out}: the import would replace {', '.join(clash)}, which the earlier import "
                                  "did not write; nothing was written")
    report = ImportReport(out=str(out), bad=bad.records)
    with DatasetWriter(out, links=links, replace=replace) as writer:
        writer.write_images(image_chunks(images, image_root, embed_images))
        for lang, table in captions.items():
            writer.write_captions(lang, table)
            report.captions[lang] = split_counts(table)
        report.images = {s: n for s, n in writer.splits.items() if n}
        report.seconds = time.time() - started
        writer.finish({"name": name, "importer_version": IMPORTER_VERSION, "source": source,
                       "images_embedded": embed_images,
                       "import": {**report.summary(), "bad": [str(b) for b in bad.records]}})
    return report
