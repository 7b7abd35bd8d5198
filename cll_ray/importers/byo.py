"""Bring your own language: add one language's captions to an existing dataset in the canonical layout.

Input: CSV (with a header), JSON lines or Parquet with the columns ``image_id`` and ``caption``, and optionally
``caption_en`` (or ``english``/``source``: the English source caption), ``split``, ``caption_index`` and
``lang``. Each row is checked against the dataset's images: the image must exist, the split (when given) must
be the image's split, and ``lang`` (when given) must be the language being added. A train caption without an
English source takes the dataset's English caption of the same image (same index, modulo their number).
The caption table is written first and the manifest rewritten last, each atomically, so the dataset either
has the new language or does not.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from cll_ray import dataset as ds
from cll_ray.importers.common import BadRecords, CaptionRows, ImportReport, Kind, blank, split_counts
from cll_ray.io import atomic_write_with
from cll_ray.layout import captions_file
from cll_ray.writer import sha256_file, write_captions_table, write_manifest

ENGLISH_ALIASES = ("caption_en", "english", "source")


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


def add_language(
    dataset_dir: str | Path, lang: str, captions: str | Path, *, skip_bad: bool = False, overwrite: bool = False,
) -> ImportReport:
    """Add ``lang``'s captions from ``captions`` to the dataset; returns the report (module docstring)."""
    started = time.time()
    root, path = Path(dataset_dir), Path(captions)
    manifest = ds.read_manifest(root)
    ds.check_language_code(lang, path)
    if lang in manifest["languages"] and not overwrite:
        raise ValueError(f"{root}: already has language {lang!r}; pass --overwrite to replace its captions")
    table, offset, unit = read_caption_file(path)
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
    atomic_write_with(root / rel, lambda tmp: write_captions_table(tmp, rows.table()))
    ds.validate_captions_file(root / rel, lang, set(image_split))
    languages = [code for code in manifest["languages"] if code != lang] + [lang]
    manifest.update(languages=languages, captions={**manifest.get("captions", {}), lang: len(rows)},
                    files={**manifest.get("files", {}), rel: sha256_file(root / rel)})
    manifest.setdefault("added_languages", {})[lang] = {"source": str(path.absolute()), "skipped": len(bad.records)}
    write_manifest(root, manifest, atomic=True)
    report = ImportReport(out=str(root), captions={lang: split_counts(rows.table())}, bad=bad.records,
                          seconds=time.time() - started)
    counts = defaultdict(int)
    for image_id in set(rows.cols["image_id"]):
        counts[image_split[image_id]] += 1
    report.images = dict(counts)
    return report
