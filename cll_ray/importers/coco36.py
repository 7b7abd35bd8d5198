"""Import COCO-36 (MSCOCO36) as the reference distributes it (method.md §5.3-§5.4) into the canonical layout.

Sources under ``src`` (either the reference's ``data/`` folder or a folder holding the two parts directly):

- train: ``[corpus/multilingual_coco/36langs/]triplet/coco_vision-en-{lang}.tsv.gz``, lines
  ``image_rel_path \\t english_caption \\t target_caption``;
- val/test: ``annotations/coco/translated/{lang}/{val,test}.json``, a list of
  ``{"image": rel_path, "image_id": int, "caption": [str, ...]}``.

Image paths are relative to ``images`` (the COCO 2014 root, holding ``train2014/`` and ``val2014/``); the canonical
image id is that relative path. English train captions are the English column of ``coco_vision-en-en.tsv.gz``
when it exists, else of the first language's triplet file (every file has the same English side, §5.3).
Translated val/test captions take the English caption of the same image and index as their source.
"""

from __future__ import annotations

import gzip
import json
import time
import zlib
from pathlib import Path

from tqdm.auto import tqdm

from cll_ray.dataset import DataError
from cll_ray.importers.common import (
    BadRecords,
    CaptionRows,
    ImportReport,
    Kind,
    blank,
    check_out,
    write_import,
)
from cll_ray.layout import XM3600_LANGUAGES

TRIPLET_DIRS = ("triplet", "corpus/multilingual_coco/36langs/triplet")
ANNOTATIONS_DIR = "annotations/coco/translated"
EVAL_SPLITS = ("val", "test")


def _triplet_dir(src: Path) -> Path | None:
    return next((src / d for d in TRIPLET_DIRS if (src / d).is_dir()), None)


def discover(src: Path) -> tuple[dict[str, Path], dict[str, dict[str, Path]]]:
    """``({lang: triplet file}, {lang: {split: json file}})`` found under ``src``."""
    triplets = {}
    folder = _triplet_dir(src)
    if folder is not None:
        for path in sorted(folder.glob("coco_vision-en-*.tsv.gz")):
            triplets[path.name.removeprefix("coco_vision-en-").removesuffix(".tsv.gz")] = path
    evals: dict[str, dict[str, Path]] = {}
    for folder in sorted((src / ANNOTATIONS_DIR).glob("*")):
        files = {s: folder / f"{s}.json" for s in EVAL_SPLITS if (folder / f"{s}.json").is_file()}
        if files:
            evals[folder.name] = files
    return triplets, evals


def json_items(path: Path):
    """``(line, item)`` for each item of a JSON array, with the 1-based line where the item starts."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    decoder = json.JSONDecoder()
    pos = len(text) - len(text.lstrip())
    if not text.startswith("[", pos):
        raise ValueError(f"{path}: expected a JSON list of {{image, image_id, caption}} objects")
    pos, line, counted = pos + 1, 1, 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:line {e.lineno}: not valid JSON ({e.msg}); expected a JSON list of "
                            "{image, image_id, caption} objects; nothing was written") from e
        yield line, item


class _Images:
    """Images seen so far, ``{image_id: (split, rel)}``; checks existence once per image."""

    def __init__(self, root: Path, bad: BadRecords):
        self.root, self.bad = root, bad
        self.split: dict[str, tuple[str, str]] = {}
        self.exists: dict[str, bool] = {}
        self.first: dict[str, str] = {}  # image -> "file:line" where it was first seen

    def ok(self, rel: str, split: str, file: Path, line: int) -> bool:
        if rel not in self.exists:
            self.exists[rel] = (self.root / rel).is_file()
            if not self.exists[rel]:
                self.bad.add(Kind.MISSING_IMAGE, file, line, f"{self.root / rel} not found")
            self.first[rel] = f"{file}:{line}"
            self.split[rel] = (split, rel)
        elif self.split[rel][0] != split:
            self.bad.add(Kind.DUPLICATE_ID, file, line, f"image {rel!r} is in {split} here but in "
                         f"{self.split[rel][0]} at {self.first[rel]}")
            return False
        return self.exists[rel]


def _read_triplets(path: Path, lang: str, images: _Images, bad: BadRecords, english_side: bool,
                   progress: bool) -> CaptionRows:
    """One triplet file as ``lang``'s train captions (the English column when ``english_side``)."""
    rows, seen = CaptionRows(), {}
    line_no = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line_no, line in enumerate(tqdm(f, desc=f"COCO-36 train {lang}", unit="line", disable=not progress), 1):
                _triplet(line, line_no, path, images, bad, english_side, rows, seen)
    except (EOFError, OSError, UnicodeDecodeError, zlib.error) as e:  # truncated, not gzip, or not UTF-8
        raise DataError(f"{path}: unreadable after line {line_no} ({type(e).__name__}: {e}); expected gzip-compressed "
                        "UTF-8 lines image_rel_path<TAB>english_caption<TAB>target_caption; nothing was written") from e
    return rows


def _triplet(line: str, line_no: int, path: Path, images: _Images, bad: BadRecords, english_side: bool,
             rows: CaptionRows, seen: dict) -> None:
    fields = line.rstrip("\n").split("\t")
    if len(fields) != 3:
        bad.add(Kind.MALFORMED, path, line_no, f"{len(fields)} tab-separated fields; expected 3")
        return
    rel, english, target = fields
    text = english if english_side else target
    if blank(english) or blank(text):
        which = "english" if blank(english) else "target"
        bad.add(Kind.EMPTY_CAPTION, path, line_no, f"image {rel!r}: {which} caption is {text!r}")
        return
    if (rel, english) in seen:
        bad.add(Kind.DUPLICATE_ID, path, line_no, f"(image {rel!r}, English source) already at line "
                f"{seen[rel, english]}")
        return
    seen[rel, english] = line_no
    if images.ok(rel, "train", path, line_no):
        rows.add(rel, "train", text, None if english_side else english)


def _read_eval(path: Path, lang: str, split: str, images: _Images, bad: BadRecords, rows: CaptionRows,
               english: dict[str, list[str]] | None) -> None:
    """One val/test JSON into ``rows``; ``english`` maps image -> its English captions (the sources)."""
    seen: dict[str, int] = {}
    for line, item in json_items(path):
        rel = item.get("image") if isinstance(item, dict) else None
        if not isinstance(rel, str) or not isinstance(item.get("caption"), list):
            bad.add(Kind.MALFORMED, path, line, "expected an object with 'image' (str) and 'caption' (list)")
            continue
        key = str(item.get("image_id", rel))
        if key in seen:
            bad.add(Kind.DUPLICATE_ID, path, line, f"image_id {key} already at line {seen[key]}")
            continue
        seen[key] = line
        if not images.ok(rel, split, path, line):
            continue
        sources = (english or {}).get(rel) or []
        for i, text in enumerate(item["caption"]):
            if blank(text):
                bad.add(Kind.EMPTY_CAPTION, path, line, f"image {rel!r}: caption[{i}] is {text!r}")
                continue
            n = rows.count(rel)
            rows.add(rel, split, text, sources[n % len(sources)] if sources else None)


def import_coco36(
    src: str | Path, images: str | Path, out: str | Path, langs: list[str] | None = None, *,
    skip_bad: bool = False, embed_images: bool = False, progress: bool = True, overwrite: bool = False,
) -> ImportReport:
    """Import COCO-36 from ``src`` (module docstring) with images under ``images`` to ``out``."""
    started = time.time()
    replace = check_out(out, overwrite)  # before reading anything: a user's folder is never clobbered
    src, image_root = Path(src), Path(images).absolute()
    triplets, evals = discover(src)
    if not triplets and not evals:
        raise FileNotFoundError(f"{src}: no {TRIPLET_DIRS[0]}/coco_vision-en-*.tsv.gz and no "
                                f"{ANNOTATIONS_DIR}/<lang>/{{val,test}}.json; not a COCO-36 folder")
    bad = BadRecords(skip_bad)
    for lang in sorted(set(triplets) | set(evals)):
        if lang not in XM3600_LANGUAGES:
            where = triplets.get(lang) or next(iter(evals[lang].values())).parent
            bad.add(Kind.UNKNOWN_LANGUAGE, where, 0, f"{lang!r} is not one of the 36 COCO-36 languages", unit="file")
    available = [lang for lang in XM3600_LANGUAGES if lang in triplets or lang in evals or (lang == "en" and triplets)]
    languages = available if langs is None else list(langs)
    missing = sorted(set(languages) - set(available))
    if missing:
        raise ValueError(f"{src}: no COCO-36 files for {missing} (found: {' '.join(available)})")
    image_set = _Images(image_root, bad)
    english_eval: dict[str, dict[str, list[str]]] = {s: {} for s in EVAL_SPLITS}
    captions: dict[str, CaptionRows] = {}
    # English first: its val/test captions are the sources of the translated ones
    for lang in sorted(languages, key=lambda code: code != "en"):
        if lang == "en":
            path = triplets.get("en") or next(iter(triplets.values()), None)
            rows = _read_triplets(path, lang, image_set, bad, path != triplets.get("en"), progress) if path else CaptionRows()
        else:
            rows = _read_triplets(triplets[lang], lang, image_set, bad, False, progress) if lang in triplets else CaptionRows()
        for split, path in evals.get(lang, {}).items():
            _read_eval(path, lang, split, image_set, bad, rows, None if lang == "en" else english_eval[split])
            if lang == "en":
                for image_id, s, text in zip(rows.cols["image_id"], rows.cols["split"], rows.cols["caption"]):
                    if s == split:
                        english_eval[split].setdefault(image_id, []).append(text)
        if len(rows):
            captions[lang] = rows.table()
    return write_import(out, "coco36", {"src": str(src.absolute()), "images": str(image_root)}, image_set.split,
                        image_root, {lang: captions[lang] for lang in languages if lang in captions}, bad,
                        embed_images, started, replace)
