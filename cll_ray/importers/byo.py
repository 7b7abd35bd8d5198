"""Bring your own language: add one language's captions to an existing dataset in the canonical layout.

Input: CSV (with a header), JSON lines or Parquet with the columns ``image_id`` and ``caption``, and optionally
``caption_en`` (or ``english``/``source``: the English source caption), ``split``, ``caption_index`` and
``lang``. Each row is checked against the dataset's images: the image must exist, the split (when given) must
be the image's split, and ``lang`` (when given) must be the language being added. A train caption without an
English source takes the dataset's English caption of the same image (same index, modulo their number).
Any other column is an error that lists the accepted ones (``ignore_columns`` ignores them, with a warning).

The result goes to a new dataset (``out``) that shares every unchanged file with the source by hard link (a
copy across filesystems), or, with ``in_place``, into the source itself: the caption table is written first and
the manifest rewritten last, each atomically, so the dataset either has the new language or does not. Every
writer here replaces a file by rename, never in place, so a shared (hard-linked) file is never changed. The
SynthXM cache that default runs read is never changed in place.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from cll_ray import dataset as ds
from cll_ray.importers.common import (
    BadRecords,
    CaptionRows,
    ImportReport,
    Kind,
    blank,
    check_not_cache,
    split_counts,
)
from cll_ray.io import atomic_dir, atomic_write_with
from cll_ray.layout import MANIFEST_FILE, captions_file
from cll_ray.writer import REPLACING_FILE, entries, sha256_file, write_captions_table, write_manifest

ENGLISH_ALIASES = ("caption_en", "english", "source")
COLUMNS = ("image_id", "caption", *ENGLISH_ALIASES, "split", "caption_index", "lang")  # every accepted column


def read_caption_file(path: Path) -> tuple[pa.Table, int, str]:
    """The table, the offset from a 0-based row to the number reported, and its unit ("line" or "row")."""
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    try:
        if suffix in (".csv", ".csv.gz", ".tsv"):
            parse = pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",", newlines_in_values=False)
            convert = pcsv.ConvertOptions(strings_can_be_null=False, quoted_strings_can_be_null=False)
            # every column as text: ids like 000123 must keep their zeros
            names = pcsv.read_csv(path, parse_options=parse).column_names
            convert.column_types = {name: pa.string() for name in names}
            return pcsv.read_csv(path, parse_options=parse, convert_options=convert), 2, "line"  # header = line 1
        if suffix in (".jsonl", ".json", ".ndjson"):
            return pjson.read_json(path), 1, "line"
        if suffix == ".parquet":
            return pq.read_table(path), 0, "row"
    except (pa.ArrowException, OSError) as e:
        raise ds.DataError(f"{path}: could not be read as {suffix.lstrip('.')} ({e})") from e
    raise ds.DataError(f"{path}: unknown caption file type {suffix!r}; expected .csv, .tsv, .jsonl or .parquet")


def _column(table: pa.Table, names: tuple[str, ...]) -> list | None:
    name = next((n for n in names if n in table.column_names), None)
    if name is None:
        return None
    return [None if v is None else str(v) for v in table.column(name).to_pylist()]


def check_columns(table: pa.Table, path: Path, ignore: bool) -> list[str]:
    """Unknown columns are an error (a misnamed English column would leave captions without their source);
    with ``ignore`` they are left out and named in the returned warnings."""
    unknown = [name for name in table.column_names if name not in COLUMNS]
    english = [name for name in ENGLISH_ALIASES if name in table.column_names]
    if len(english) > 1:
        raise ds.DataError(f"{path}: several English source columns ({', '.join(english)}); keep one of them")
    if unknown and not ignore:
        raise ds.DataError(f"{path}: unknown column(s) {', '.join(unknown)}; the accepted columns are "
                           f"{', '.join(COLUMNS)} ({' / '.join(ENGLISH_ALIASES)}: the English source caption). "
                           "Rename them, or pass --ignore-columns to ignore them")
    return [f"{path}: ignored unknown column(s) {', '.join(unknown)}"] if unknown else []


def link_dataset(src: Path, dst: Path, skip: set[str]) -> None:
    """Fill ``dst`` with ``src``'s files as hard links (copies across filesystems) and its links as links, but
    not ``skip`` (paths relative to the dataset)."""
    for rel in entries(src):
        if rel in skip or any(part.endswith(".tmp") for part in Path(rel).parts):  # a writer's leftovers
            continue
        source, target = src / rel, dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():  # e.g. images -> the image root: the same target, made absolute
            os.symlink(os.path.join(source.parent, os.readlink(source)), target, target_is_directory=source.is_dir())
            continue
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


def add_language(
    dataset_dir: str | Path, lang: str, captions: str | Path, *, out: str | Path | None = None,
    in_place: bool = False, skip_bad: bool = False, overwrite: bool = False, ignore_columns: bool = False,
) -> ImportReport:
    """Add ``lang``'s captions from ``captions`` to the dataset, written to ``out`` (a new dataset) or, with
    ``in_place``, to ``dataset_dir`` itself; returns the report (module docstring)."""
    started = time.time()
    root, path = Path(dataset_dir), Path(captions)
    if (out is None) == (not in_place):
        raise ValueError(f"{root}: add-language needs either --out DIR (a new dataset sharing the unchanged files) "
                         "or --in-place (change this dataset); " + ("not both" if in_place else "neither was given"))
    manifest = ds.read_manifest(root)
    if in_place:
        check_not_cache(root, "--in-place")
    else:
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"{out}: exists and is not empty; nothing was written. --out takes a new folder")
    ds.check_language_code(lang, path)
    if lang in manifest["languages"] and not overwrite:
        raise ValueError(f"{root}: already has language {lang!r}; pass --overwrite to replace its captions")
    table, offset, unit = read_caption_file(path)
    warnings = check_columns(table, path, ignore_columns)
    image_ids, texts = _column(table, ("image_id",)), _column(table, ("caption",))
    if image_ids is None or texts is None:
        raise ds.DataError(f"{path}: missing column(s) image_id and/or caption; found {table.column_names}")
    n = table.num_rows
    english, splits = _column(table, ENGLISH_ALIASES) or [None] * n, _column(table, ("split",)) or [None] * n
    langs, indices = _column(table, ("lang",)) or [lang] * n, _column(table, ("caption_index",))

    image_split = dict(zip(*ds.read_images(root, columns=("image_id", "split")).to_pydict().values(), strict=True))
    sources: dict[str, list[str]] = defaultdict(list)  # the dataset's English captions, per image
    if "en" in manifest["languages"] and lang != "en":
        en = ds.read_captions(root, "en", splits=tuple(sorted(set(image_split.values()))))
        for image_id, text in zip(en.image_ids, en.captions):
            sources[image_id].append(text)

    bad = BadRecords(skip_bad)
    rows, seen = CaptionRows(), {}
    for r in range(n):
        where = r + offset
        image_id, text = image_ids[r], texts[r]
        key = (image_id, indices[r] if indices else text)
        if langs[r] != lang:
            bad.add(Kind.UNKNOWN_LANGUAGE, path, where, f"lang {langs[r]!r}; this file adds {lang!r}", unit)
        elif image_id not in image_split:
            bad.add(Kind.MISSING_IMAGE, path, where, f"image_id {image_id!r} is not in {root / 'images.parquet'}", unit)
        elif blank(text):
            bad.add(Kind.EMPTY_CAPTION, path, where, f"image_id {image_id!r}: caption is {text!r}", unit)
        elif key in seen:
            bad.add(Kind.DUPLICATE_ID, path, where, f"image_id {image_id!r} caption already at {unit} {seen[key]}", unit)
        elif splits[r] not in (None, "", image_split[image_id]):
            bad.add(Kind.MALFORMED, path, where, f"split {splits[r]!r}, but image {image_id!r} is in "
                    f"{image_split[image_id]}", unit)
        else:
            split, source = image_split[image_id], english[r]
            if blank(source) and lang != "en" and split == "train":
                options = sources.get(image_id)
                if not options:
                    bad.add(Kind.MISSING_ENGLISH, path, where, f"train caption of {image_id!r} has no English source "
                            "and the dataset has no English caption of that image", unit)
                    continue
                source = options[rows.count(image_id) % len(options)]
            seen[key] = where
            rows.add(image_id, split, text, None if lang == "en" or blank(source) else source)
    bad.check()
    if not len(rows):
        raise ds.DataError(f"{path}: no usable caption; nothing added")

    rel = captions_file(lang)
    languages = [code for code in manifest["languages"] if code != lang] + [lang]
    manifest.setdefault("added_languages", {})[lang] = {"source": str(path.absolute()), "skipped": len(bad.records)}

    def write(target: Path) -> None:
        atomic_write_with(target / rel, lambda tmp: write_captions_table(tmp, rows.table()))
        ds.validate_captions_file(target / rel, lang, set(image_split))
        manifest.update(languages=languages, captions={**manifest.get("captions", {}), lang: len(rows)},
                        files={**manifest.get("files", {}), rel: sha256_file(target / rel)})
        write_manifest(target, manifest, atomic=True)

    if in_place:
        write(root)
    else:
        manifest["derived_from"] = str(root.absolute())
        with atomic_dir(out) as tmp:
            link_dataset(root, tmp, skip={MANIFEST_FILE, REPLACING_FILE, rel})  # both are written anew
            write(tmp)
    report = ImportReport(out=str(root if in_place else out), captions={lang: split_counts(rows.table())},
                          bad=bad.records, seconds=time.time() - started, warnings=warnings)
    counts = defaultdict(int)
    for image_id in set(rows.cols["image_id"]):
        counts[image_split[image_id]] += 1
    report.images = dict(counts)
    return report
