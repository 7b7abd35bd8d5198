"""Import Crossmodal-3600 (XM3600) into the canonical layout.

Source: the release's ``captions.jsonl``, one record per image::

    {"image/key": "000411001ff7dd4f", "image/locale": "ar", "ar": {"caption": ["...", ...], ...}, "bn": {...}, ...}

and its images folder, ``<images>/<image/key>.jpg``. Every key without a ``/`` is a language.

Splits: XM3600 is a test-only benchmark (method.md §5.3), so every image goes to ``test`` by default. For
experiments, ``carve={"train": 0.8, "val": 0.1}`` assigns each image to train/val/test by a hash of its key
(stable across runs and machines); its train captions then take the English caption of the same image with the
same index (modulo their number) as the English source, since XM3600 captions are not translations.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tqdm.auto import tqdm

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


def carve_split(key: str, carve: dict[str, float] | None) -> str:
    """``test``, or a split drawn from a hash of ``key`` with the fractions of ``carve`` (the rest is test)."""
    if not carve:
        return "test"
    u = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16) / 16**12  # uniform in [0, 1)
    edge = 0.0
    for split in ("train", "val"):
        edge += carve.get(split, 0.0)
        if u < edge:
            return split
    return "test"


def parse_carve(text: str | None) -> dict[str, float] | None:
    """``"train=0.8,val=0.1"`` -> {"train": 0.8, "val": 0.1}."""
    if not text:
        return None
    carve = {}
    for part in text.split(","):
        split, _, value = part.partition("=")
        if split not in ("train", "val") or not value:
            raise ValueError(f"--carve {text!r}: expected train=F,val=F with fractions that sum to at most 1")
        carve[split] = float(value)
    if sum(carve.values()) > 1 or min(carve.values()) < 0:
        raise ValueError(f"--carve {text!r}: fractions must be >= 0 and sum to at most 1")
    return carve


def import_xm3600(
    src: str | Path, images: str | Path, out: str | Path, langs: list[str] | None = None, *,
    skip_bad: bool = False, carve: dict[str, float] | None = None, embed_images: bool = False,
    progress: bool = True, overwrite: bool = False,
) -> ImportReport:
    """Import ``captions.jsonl`` + images folder to ``out``; returns the report (see the module docstring).

    Args:
        src: the ``captions.jsonl`` file (or a folder holding it).
        images: the folder of ``<key>.jpg`` images.
        out: dataset directory, written atomically.
        langs: languages to import (default: every language in the file).
        skip_bad: leave bad records out (and report them) instead of stopping.
        carve: train/val fractions for experiments; default all test.
        embed_images: store the JPEG bytes in images.parquet instead of a link to ``images``.
        overwrite: ``out`` may hold an earlier import; only the files its manifest lists are replaced.
    """
    started = time.time()
    replace = check_out(out, overwrite)  # before reading anything: a user's folder is never clobbered
    src, image_root = Path(src), Path(images).absolute()
    if src.is_dir():
        src = src / "captions.jsonl"
    if not src.is_file():
        raise FileNotFoundError(f"{src}: XM3600 captions file not found")
    wanted = None if langs is None else set(langs)
    unknown = sorted((wanted or set()) - set(XM3600_LANGUAGES))
    if unknown:
        raise ValueError(f"--langs: {unknown} are not XM3600 languages ({' '.join(XM3600_LANGUAGES)})")
    bad = BadRecords(skip_bad)
    records: list[tuple[int, str, dict]] = []  # (line, key, record) of the good records
    seen: dict[str, int] = {}
    with open(src, encoding="utf-8") as f:
        for line_no, line in enumerate(tqdm(f, desc="XM3600 records", unit="rec", disable=not progress), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = record["image/key"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                bad.add(Kind.MALFORMED, src, line_no, f"not a JSON object with 'image/key' ({e})")
                continue
            if key in seen:
                bad.add(Kind.DUPLICATE_ID, src, line_no, f"image/key {key!r} already at line {seen[key]}")
                continue
            seen[key] = line_no
            if not (image_root / f"{key}.jpg").is_file():
                bad.add(Kind.MISSING_IMAGE, src, line_no, f"{image_root / f'{key}.jpg'} not found")
                continue
            records.append((line_no, key, record))

    captions: dict[str, CaptionRows] = {}
    present = {k for _, _, r in records for k in r if "/" not in k}
    for lang in sorted(present - set(XM3600_LANGUAGES)):  # report each record's unknown language
        for line_no, key, record in records:
            if lang in record:
                bad.add(Kind.UNKNOWN_LANGUAGE, src, line_no, f"image/key {key!r}: {lang!r} is not an XM3600 language")
    languages = [lang for lang in XM3600_LANGUAGES if lang in present and (wanted is None or lang in wanted)]
    if wanted and wanted - present:
        raise ValueError(f"{src}: no captions in {sorted(wanted - present)}")
    for lang in languages:
        rows = captions[lang] = CaptionRows()
        for line_no, key, record in records:
            entry = record.get(lang)
            texts = entry.get("caption") if isinstance(entry, dict) else None
            if texts is None:
                continue
            if not isinstance(texts, list):
                bad.add(Kind.MALFORMED, src, line_no, f"{lang}.caption is not a list")
                continue
            split = carve_split(key, carve)
            english = [t for t in (record.get("en") or {}).get("caption", []) if not blank(t)]
            for i, text in enumerate(texts):
                if blank(text):
                    bad.add(Kind.EMPTY_CAPTION, src, line_no, f"image/key {key!r}: {lang}.caption[{i}] is {text!r}")
                    continue
                # a carved train caption needs an English source: the same image's English caption
                source = english[rows.count(key) % len(english)] if split == "train" and english else None
                rows.add(key, split, text, None if lang == "en" else source)
    images_by_id = {key: (carve_split(key, carve), f"{key}.jpg") for _, key, _ in records}
    return write_import(out, "xm3600", {"captions": str(src.absolute()), "images": str(image_root),
                                        "carve": carve or {}}, images_by_id, image_root,
                        {lang: rows.table() for lang, rows in captions.items() if len(rows)}, bad, embed_images,
                        started, replace)
