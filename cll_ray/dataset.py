"""Read and validate the canonical dataset layout (``layout.py``) with pyarrow only: no Ray, no torch.

Every problem raises a ``DataError`` whose message names the file, the 0-based row in that file (with its
image_id when known) and what was expected, so that a bad importer output fails at load time with a pointer to
the fix instead of as a shape error deep inside training. Nothing here writes to disk.

Column rules: the non-nullable fields of ``layout.CAPTIONS_SCHEMA`` / ``layout.IMAGES_SCHEMA`` are required; the
nullable ones may be absent (read as all-null). Compatible types are cast (any integer for ``int32``,
``large_string`` for ``string``, ``large_binary`` for ``binary``); extra columns are ignored.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from cll_ray import layout

_LANG_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]+)?$")
# Captions equal to these (case-insensitive) are stringified missing values, e.g. pandas' str(nan), not text.
_MISSING_TEXT = ("nan", "none", "null")


class DataError(ValueError):
    """Bad input: the message names the file, the row (0-based row index in that file, and the image_id when
    known) and what was expected."""


@dataclass(frozen=True)
class CaptionTable:
    """The captions of one language, one row per caption, in file order."""

    lang: str
    image_ids: list[str]
    captions: list[str]
    captions_en: list[str | None]  # parallel English source; for ``en`` itself, the caption when null
    caption_index: np.ndarray  # (N,) int32
    split: list[str]

    def __len__(self) -> int:
        return len(self.captions)


# ----------------------------------------------------------------------------------------------- manifest


def read_manifest(dataset_dir) -> dict:
    """Load ``manifest.json``; it must be a JSON object whose ``languages`` is a list of codes (or a mapping
    keyed by code)."""
    path = Path(dataset_dir) / layout.MANIFEST_FILE
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; expected a JSON object with the key 'languages'")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); expected a JSON object with key 'languages'") from e
    if not isinstance(manifest, dict) or "languages" not in manifest:
        raise DataError(f"{path}: missing key 'languages'; expected a JSON object with key 'languages'")
    langs = manifest["languages"]
    if not isinstance(langs, list | dict) or not all(isinstance(c, str) and c for c in langs):
        raise DataError(f"{path}: 'languages' is {langs!r}; expected a list of language codes (strings)")
    return manifest


def dataset_languages(dataset_dir) -> list[str]:
    """The dataset's language codes: from the manifest, or, when there is none, the ``captions/lang=*`` folders."""
    root = Path(dataset_dir)
    if (root / layout.MANIFEST_FILE).is_file():
        return list(read_manifest(root)["languages"])
    folders = sorted(p.name.removeprefix("lang=") for p in (root / layout.CAPTIONS_DIR).glob("lang=*"))
    if not folders:
        raise DataError(
            f"{root}: no {layout.MANIFEST_FILE}; expected it or {layout.CAPTIONS_DIR}/lang=<code>/"
        )
    return folders


def _check_language(lang, known: list[str] | None, source: Path) -> None:
    if known is not None:
        if lang not in known:
            raise DataError(f"{source}: unknown language {lang!r}; the known codes are {', '.join(known)}")
        return
    if isinstance(lang, str) and (lang in layout.XM3600_LANGUAGES or _LANG_RE.match(lang)):
        return
    raise DataError(
        f"{source}: {lang!r} is not a language code; expected one of the XM3600 codes "
        f"({', '.join(layout.XM3600_LANGUAGES)}) or a code matching {_LANG_RE.pattern}"
    )


def check_language_code(lang, source) -> None:
    """Raise a DataError unless ``lang`` is an XM3600 code or shaped like a language code (``[a-z]{2,3}``)."""
    _check_language(lang, None, Path(source))


def _check_split_names(splits: Iterable[str], source: Path) -> tuple[str, ...]:
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    bad = [s for s in splits if s not in layout.SPLITS]
    if bad or not splits:
        raise DataError(f"{source}: unknown split(s) {bad or splits!r}; expected some of {layout.SPLITS}")
    return splits


# ------------------------------------------------------------------------------------- reading and schema


def _read_parquet(path: Path, what: str, columns: Iterable[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise DataError(
            f"{path}: {what} not found; expected a Parquet file in the layout of cll_ray/layout.py"
        )
    try:
        pf = pq.ParquetFile(path)
        present = set(pf.schema_arrow.names)
        return pf.read(columns=None if columns is None else [c for c in columns if c in present])
    except (pa.ArrowException, OSError) as e:  # garbage bytes, truncated file, unreadable page
        raise DataError(f"{path}: not a readable Parquet file ({e}); expected the {what} as Parquet") from e


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}{'' if not f.nullable else ' (nullable)'}" for f in schema)


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_dictionary(actual):
        actual = actual.value_type
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual) or actual == pa.string_view()
    if pa.types.is_binary(expected):
        return pa.types.is_binary(actual) or pa.types.is_large_binary(actual) or actual == pa.binary_view()
    return actual == expected


def _conform(table: pa.Table, schema: pa.Schema, path: Path, schema_name: str) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, cast to its types (nullable columns may be absent)."""
    missing = [f.name for f in schema if not f.nullable and f.name not in table.column_names]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; expected columns "
            f"{_describe(schema)} (layout.{schema_name})"
        )
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.chunked_array([pa.nulls(len(table), field.type)]))
            continue
        column = table.column(field.name)
        if not (_compatible(column.type, field.type) or (field.nullable and pa.types.is_null(column.type))):
            raise DataError(
                f"{path}: column {field.name!r} has type {column.type}; expected {field.type} "
                f"(layout.{schema_name})"
            )
        try:
            columns.append(column.cast(field.type))
        except pa.ArrowInvalid as e:  # e.g. an int64 caption_index beyond int32
            raise DataError(f"{path}: column {field.name!r} does not fit {field.type} ({e})") from e
    return pa.Table.from_arrays(columns, names=schema.names)


# ------------------------------------------------------------------------------------------------ checks


def _bool_mask(array) -> np.ndarray:
    return np.asarray(pc.fill_null(array, True).to_numpy(zero_copy_only=False), dtype=bool)


def _row_error(
    path: Path, table: pa.Table, bad: np.ndarray, what: str, expected: str, column: str = ""
) -> DataError:
    """A DataError for the first row where ``bad`` is set; ``{value}`` in ``what`` is that row's ``column``."""
    rows = np.flatnonzero(bad)
    row = int(rows[0])
    image_id = table.column("image_id")[row].as_py() if "image_id" in table.column_names else None
    where = f"row {row}" + (f" (image_id {image_id!r})" if image_id is not None else "")
    if column:
        value = table.column(column)[row].as_py()
        what = what.format(value="null" if value is None else repr(value))
    total = f"; {len(rows)} bad rows in total" if len(rows) > 1 else ""
    return DataError(f"{path}: {where}: {what}; expected {expected}{total}")


def _not_in(column: pa.ChunkedArray, values) -> np.ndarray:
    """True where ``column`` is null or not among ``values``."""
    return ~_bool_mask(pc.fill_null(pc.is_in(column, value_set=pa.array(values, pa.string())), False))


def _check_not_null(table: pa.Table, path: Path, columns: Iterable[str]) -> None:
    for name in columns:
        bad = _bool_mask(pc.is_null(table.column(name)))
        if bad.any():
            raise _row_error(path, table, bad, f"{name} is null", f"a non-null {name} in every row")


def _check_splits(table: pa.Table, path: Path) -> None:
    bad = _not_in(table.column("split"), layout.SPLITS)
    if bad.any():
        raise _row_error(path, table, bad, "unknown split {value}", f"one of {layout.SPLITS}", "split")


def _check_caption_index(table: pa.Table, path: Path) -> None:
    bad = _bool_mask(pc.less(table.column("caption_index"), 0))
    if bad.any():
        raise _row_error(path, table, bad, "caption_index is negative", "a caption_index >= 0")


def _blank_text(column: pa.ChunkedArray) -> np.ndarray:
    """True where a string is null, empty, whitespace-only or a stringified missing value ("nan", "None")."""
    stripped = pc.utf8_trim_whitespace(column)
    blank = pc.or_(
        pc.equal(pc.utf8_length(stripped), 0),
        pc.is_in(pc.utf8_lower(stripped), value_set=pa.array(_MISSING_TEXT)),
    )
    return _bool_mask(blank)  # null -> True


def _check_caption_text(table: pa.Table, path: Path) -> None:
    bad = _blank_text(table.column("caption"))
    if bad.any():
        expected = "a non-empty caption in every row (no null, NaN or blank text)"
        raise _row_error(path, table, bad, "caption is {value}", expected, "caption")


def _check_english(table: pa.Table, path: Path, selected: np.ndarray | None = None) -> None:
    bad = _blank_text(table.column("caption_en"))
    if selected is not None:
        bad &= selected
    if bad.any():
        expected = "a non-empty English source caption in every row when English is required"
        raise _row_error(path, table, bad, "caption_en is {value}", expected, "caption_en")


def _check_unique(table: pa.Table, path: Path, columns: tuple[str, ...]) -> None:
    # Integer keys (dictionary codes for strings) so that rows can be lexsorted; stable, so within a group of
    # equal keys the earliest row comes first and every later one is a duplicate.
    keys = [pc.dictionary_encode(table.column(c).combine_chunks()).indices.to_numpy() for c in columns]
    order = np.lexsort(keys[::-1])
    same = np.logical_and.reduce([k[order][1:] == k[order][:-1] for k in keys]) if len(order) > 1 else []
    bad = np.zeros(len(order), dtype=bool)
    bad[order[1:]] = same
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        first = int(np.flatnonzero(np.logical_and.reduce([k == k[row] for k in keys]))[0])
        key = ", ".join(f"{c}={table.column(c)[row].as_py()!r}" for c in columns)
        what = f"duplicate {key} (first at row {first})"
        raise _row_error(path, table, bad, what, f"unique ({', '.join(columns)})")


def _check_known_images(table: pa.Table, path: Path, known_image_ids: set[str]) -> None:
    bad = _not_in(table.column("image_id"), sorted(known_image_ids))
    if bad.any():
        expected = f"an image_id present in {layout.IMAGES_FILE}"
        raise _row_error(path, table, bad, "image_id {value} has no image", expected, "image_id")


def _check_image_source(table: pa.Table, path: Path) -> None:
    bad = _bool_mask(pc.equal(pc.binary_length(table.column("image")), 0)) & _blank_text(table.column("path"))
    if bad.any():
        expected = "encoded PNG/JPEG bytes in 'image' or a path relative to the dataset directory in 'path'"
        raise _row_error(path, table, bad, "neither image bytes nor path", expected)


# ------------------------------------------------------------------------------------------- public API


def validate_captions_file(
    path, lang: str, known_image_ids: set[str] | None, *, require_english: bool = False
) -> pa.Table:
    """Read and validate one ``captions/lang=<code>/part-0.parquet``; returns it in ``layout.CAPTIONS_SCHEMA``.

    ``known_image_ids`` (the ids of images.parquet) is checked when given. ``require_english`` asks for a
    non-empty ``caption_en`` in every row of a non-English language.
    """
    path = Path(path)
    _check_language(lang, None, path)
    table = _conform(_read_parquet(path, "caption table"), layout.CAPTIONS_SCHEMA, path, "CAPTIONS_SCHEMA")
    _check_not_null(table, path, ("image_id", "split", "caption_index"))
    _check_splits(table, path)
    _check_caption_index(table, path)
    _check_caption_text(table, path)
    _check_unique(table, path, ("image_id", "caption_index"))
    if known_image_ids is not None:
        _check_known_images(table, path, known_image_ids)
    if require_english and lang != "en":
        _check_english(table, path)
    return table


def read_captions(
    dataset_dir,
    lang: str,
    splits=("train",),
    *,
    image_ids: set[str] | None = None,
    require_english: bool = False,
) -> CaptionTable:
    """Read one language's captions of ``splits`` (optionally only those of ``image_ids``), after validating
    the whole file against the manifest and images.parquet.

    ``require_english`` checks ``caption_en`` on the selected rows only (XM3600-style test captions may have
    no English source). For ``en`` a null ``caption_en`` is filled with the caption itself.
    """
    root = Path(dataset_dir)
    path = root / layout.captions_file(lang)
    splits = _check_split_names(splits, path)
    if (root / layout.MANIFEST_FILE).is_file():
        _check_language(lang, dataset_languages(root), root / layout.MANIFEST_FILE)
    known = set(read_images(root, columns=("image_id",)).column("image_id").to_pylist())
    table = validate_captions_file(path, lang, known)

    selected = ~_not_in(table.column("split"), splits)
    if not selected.any():
        present = sorted(set(table.column("split").to_pylist()))
        raise DataError(f"{path}: no rows of split {splits}; expected at least one (the file has {present})")
    if image_ids is not None:
        selected &= ~_not_in(table.column("image_id"), sorted(image_ids))
    if require_english and lang != "en":
        _check_english(table, path, selected)
    table = table.filter(pa.array(selected))

    captions = table.column("caption").to_pylist()
    captions_en = table.column("caption_en").to_pylist()
    if lang == "en":
        captions_en = [c if e is None else e for c, e in zip(captions, captions_en, strict=True)]
    return CaptionTable(
        lang=lang,
        image_ids=table.column("image_id").to_pylist(),
        captions=captions,
        captions_en=captions_en,
        caption_index=table.column("caption_index").to_numpy().astype(np.int32),
        split=table.column("split").to_pylist(),
    )


def read_images(dataset_dir, splits=None, columns=("image_id", "split", "image", "path")) -> pa.Table:
    """Read and validate images.parquet; returns ``columns`` (names of ``layout.IMAGES_SCHEMA``) of ``splits``.

    image_id and split are always read and checked (non-null, known split, unique ids). The check that each row
    has image bytes or a path runs when both ``image`` and ``path`` are requested (the default), so that reading
    ids only does not load every image.
    """
    path = Path(dataset_dir) / layout.IMAGES_FILE
    columns = tuple(columns)
    unknown = [c for c in columns if c not in layout.IMAGES_SCHEMA.names]
    if unknown:
        raise DataError(f"{path}: unknown column(s) {unknown}; expected some of {layout.IMAGES_SCHEMA.names}")
    wanted = [f.name for f in layout.IMAGES_SCHEMA if f.name in {"image_id", "split", *columns}]
    schema = pa.schema([layout.IMAGES_SCHEMA.field(name) for name in wanted])
    table = _conform(_read_parquet(path, "image table", wanted), schema, path, "IMAGES_SCHEMA")
    _check_not_null(table, path, ("image_id", "split"))
    _check_splits(table, path)
    _check_unique(table, path, ("image_id",))
    if {"image", "path"} <= set(columns):
        _check_image_source(table, path)
    if splits is not None:
        splits = _check_split_names(splits, path)
        table = table.filter(pa.array(~_not_in(table.column("split"), splits)))
    return table.select(list(columns))


def image_ids_by_split(dataset_dir) -> dict[str, list[str]]:
    """``{split: [image_id, ...]}`` for every split of ``layout.SPLITS`` (empty lists included), in file order."""
    table = read_images(dataset_dir, columns=("image_id", "split"))
    by_split: dict[str, list[str]] = {s: [] for s in layout.SPLITS}
    columns = table.to_pydict()
    for image_id, split in zip(columns["image_id"], columns["split"], strict=True):
        by_split[split].append(image_id)
    return by_split


def _image_rows(table_or_rows) -> list[tuple[object, bytes | None, str | None]]:
    """(image_id, bytes, path) per row of a pyarrow Table, a dict of columns (a Ray batch) or a list of rows."""
    if isinstance(table_or_rows, pa.Table):
        table_or_rows = {name: table_or_rows.column(name).to_pylist() for name in table_or_rows.column_names}
    if isinstance(table_or_rows, Mapping):
        n = len(next(iter(table_or_rows.values()), []))
        cols = {k: list(table_or_rows.get(k, [None] * n)) for k in ("image_id", "image", "path")}
        return list(zip(cols["image_id"], cols["image"], cols["path"], strict=True))
    return [(r.get("image_id"), r.get("image"), r.get("path")) for r in table_or_rows]


def _fit(img: Image.Image, size: int) -> Image.Image:
    """Bicubic resize of the shorter side to ``size`` and centre crop, as CLIP's preprocessing does."""
    if img.size == (size, size):
        return img
    w, h = img.size
    scale = size / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_images(table_or_rows, dataset_dir, image_size: int) -> np.ndarray:
    """Decode images to a uint8 array (N, image_size, image_size, 3).

    Each row needs ``image`` (encoded bytes) or ``path`` (relative to ``dataset_dir``); bytes win when both are
    set. Images of another size are bicubic-resized (shorter side) and centre-cropped. Row numbers in errors
    are positions in ``table_or_rows``.
    """
    root = Path(dataset_dir)
    rows = _image_rows(table_or_rows)
    out = np.empty((len(rows), image_size, image_size, 3), dtype=np.uint8)  # (N, H, W, 3)
    for i, (image_id, data, rel) in enumerate(rows):
        where = f"batch row {i} (image_id {image_id!r})"
        if data is not None and len(data) > 0:
            source, fp = root / layout.IMAGES_FILE, io.BytesIO(bytes(data))
        elif rel is not None and str(rel).strip():
            source = fp = root / str(rel)
            if not source.is_file():
                raise DataError(f"{source}: {where}: image file not found; expected a file under {root}")
        else:
            raise DataError(f"{root / layout.IMAGES_FILE}: {where}: no image bytes or path; expected one")
        try:
            with Image.open(fp) as img:
                out[i] = np.asarray(_fit(img.convert("RGB"), image_size), dtype=np.uint8)
        # UnidentifiedImageError (not an image) and truncated files are OSErrors.
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise DataError(f"{source}: {where}: image could not be decoded ({e}); expected PNG/JPEG") from e
    return out
