"""cll_ray.dataset on tiny tables written with pyarrow: a valid dataset reads back, every bad input is named."""

from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from cll_ray import layout
from cll_ray.dataset import (
    CaptionTable,
    DataError,
    dataset_languages,
    decode_images,
    image_ids_by_split,
    read_captions,
    read_images,
    read_manifest,
    validate_captions_file,
)

COLOURS = {"img0": (255, 0, 0), "img1": (0, 255, 0), "img2": (0, 0, 255), "img3": (255, 255, 0)}


def png(colour, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def images_table(**overrides) -> pa.Table:
    cols = {
        "image_id": ["img0", "img1", "img2", "img3"],
        "split": ["train", "train", "test", "test"],
        "image": [png(COLOURS["img0"]), png(COLOURS["img1"], (12, 8)), png(COLOURS["img2"]), None],
        "path": [None, None, None, "files/img3.png"],  # img3 is stored as a file
        "scene": ['{"objects": []}'] * 4,
    }
    cols.update(overrides)
    return pa.table({k: v for k, v in cols.items() if v is not None})


def captions_dict(lang="fr") -> dict:
    ids = ["img0", "img0", "img1", "img1", "img2", "img2", "img3", "img3"]
    return {
        "image_id": ids,
        "split": ["train"] * 4 + ["test"] * 4,
        "caption_index": pa.array([0, 1] * 4, pa.int32()),
        "caption": [f"{lang} légende {i}" for i in range(8)],
        "caption_en": [f"caption {i}" for i in range(8)],
    }


def write_captions(root, lang, cols: dict | pa.Table):
    path = root / layout.captions_file(lang)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(cols if isinstance(cols, pa.Table) else pa.table(cols), path)
    return path


@pytest.fixture
def root(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "img3.png").write_bytes(png(COLOURS["img3"]))
    pq.write_table(images_table(), tmp_path / layout.IMAGES_FILE)
    for lang in ("en", "fr"):
        write_captions(tmp_path, lang, captions_dict(lang))
    manifest = {"languages": ["en", "fr"], "splits": {"train": 2, "test": 2}, "seed": 0}
    (tmp_path / layout.MANIFEST_FILE).write_text(json.dumps(manifest))
    return tmp_path


def raises(fn, *parts):
    """Call ``fn``, expect a DataError, and check that its message contains every part."""
    with pytest.raises(DataError) as info:
        fn()
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# ------------------------------------------------------------------------------------------- valid dataset


def test_reads_a_valid_dataset(root):
    assert read_manifest(root)["seed"] == 0
    assert dataset_languages(root) == ["en", "fr"]

    train = read_captions(root, "fr")
    assert isinstance(train, CaptionTable) and len(train) == 4
    assert train.lang == "fr"
    assert train.image_ids == ["img0", "img0", "img1", "img1"]
    assert train.captions == [f"fr légende {i}" for i in range(4)]
    assert train.captions_en == [f"caption {i}" for i in range(4)]
    assert train.caption_index.dtype == np.int32 and train.caption_index.tolist() == [0, 1, 0, 1]
    assert train.split == ["train"] * 4

    both = read_captions(root, "fr", ("train", "test"), image_ids={"img1", "img3"}, require_english=True)
    assert both.image_ids == ["img1", "img1", "img3", "img3"]
    assert both.split == ["train", "train", "test", "test"]


def test_reads_images_and_splits(root):
    table = read_images(root)
    assert table.column_names == ["image_id", "split", "image", "path"]
    assert table.num_rows == 4
    assert read_images(root, splits=("test",), columns=("image_id", "scene")).to_pydict() == {
        "image_id": ["img2", "img3"],
        "scene": ['{"objects": []}'] * 2,
    }
    assert image_ids_by_split(root) == {
        "pretrain": [],
        "train": ["img0", "img1"],
        "val": [],
        "test": ["img2", "img3"],
    }


def test_decodes_bytes_and_paths_and_resizes(root):
    pixels = decode_images(read_images(root), root, image_size=8)
    assert pixels.shape == (4, 8, 8, 3) and pixels.dtype == np.uint8
    for i, image_id in enumerate(COLOURS):
        assert (pixels[i] == COLOURS[image_id]).all(), image_id  # img1 was 12x8, img3 a file
    rows = [{"image_id": "img0", "image": png((1, 2, 3), (5, 5)), "path": None}]
    assert decode_images(rows, root, image_size=4)[0, 2, 2].tolist() == [1, 2, 3]
    batch = {"image_id": np.array(["img3"]), "path": np.array(["files/img3.png"], dtype=object)}
    assert decode_images(batch, root, image_size=8).shape == (1, 8, 8, 3)


def test_accepts_compatible_types_and_absent_nullable_columns(root):
    cols = captions_dict()
    cols["caption_index"] = pa.array([0, 1] * 4, pa.int64())
    cols["caption"] = pa.array(cols["caption"], pa.large_string())
    del cols["caption_en"]  # nullable: may be absent
    write_captions(root, "fr", cols)
    table = read_captions(root, "fr")
    assert table.caption_index.dtype == np.int32
    assert table.captions_en == [None] * 4
    # For English itself the source caption is the caption.
    write_captions(root, "en", {**captions_dict("en"), "caption_en": [None] * 8})
    assert read_captions(root, "en", require_english=True).captions_en == [
        f"en légende {i}" for i in range(4)
    ]


def test_languages_from_folders_without_manifest(root):
    (root / layout.MANIFEST_FILE).unlink()
    assert dataset_languages(root) == ["en", "fr"]
    assert len(read_captions(root, "fr")) == 4


# ----------------------------------------------------------------------------------------------- bad inputs


def test_missing_column(root):
    cols = captions_dict()
    del cols["caption"]
    path = write_captions(root, "fr", cols)
    raises(lambda: read_captions(root, "fr"), str(path), "missing column(s) caption", "CAPTIONS_SCHEMA")


def test_wrong_column_type(root):
    cols = captions_dict()
    cols["caption_index"] = ["0", "1"] * 4
    path = write_captions(root, "fr", cols)
    raises(lambda: read_captions(root, "fr"), str(path), "'caption_index' has type string", "expected int32")


def test_unknown_language(root):
    raises(lambda: read_captions(root, "de"), "manifest.json", "unknown language 'de'", "en, fr")
    path = root / layout.captions_file("fr")
    raises(lambda: validate_captions_file(path, "French!", None), str(path), "XM3600 codes", "quz")
    assert validate_captions_file(path, "pt-BR", None).num_rows == 8  # plausible without a manifest


def test_empty_caption(root):
    cols = captions_dict()
    cols["caption"][3] = "   "
    path = write_captions(root, "fr", cols)
    raises(lambda: read_captions(root, "fr"), str(path), "row 3 (image_id 'img1')", "non-empty caption")


def test_none_and_nan_captions(root):
    cols = captions_dict()
    cols["caption"][5] = None
    cols["caption"][7] = None
    path = write_captions(root, "fr", cols)
    raises(lambda: read_captions(root, "fr"), str(path), "row 5 (image_id 'img2')", "2 bad rows", "non-empty")

    df = pd.DataFrame({**captions_dict(), "caption_index": [0, 1] * 4})
    df.loc[2, "caption"] = math.nan  # pandas' missing value: pyarrow stores it as null
    write_captions(root, "fr", pa.Table.from_pandas(df, preserve_index=False))
    raises(lambda: read_captions(root, "fr"), str(path), "row 2 (image_id 'img1')", "caption is null")

    cols = captions_dict()
    cols["caption"][1] = "NaN"  # str(nan) written as text by a careless importer
    write_captions(root, "fr", cols)
    raises(lambda: read_captions(root, "fr"), "row 1 (image_id 'img0')", "'NaN'", "non-empty caption")


def test_image_id_without_image(root):
    cols = captions_dict()
    cols["image_id"][6] = "img9"
    path = write_captions(root, "fr", cols)
    raises(lambda: read_captions(root, "fr"), str(path), "row 6", "'img9'", "present in images.parquet")


def test_bad_split(root):
    cols = captions_dict()
    cols["split"][4] = "training"
    path = write_captions(root, "fr", cols)
    raises(lambda: read_captions(root, "fr"), str(path), "row 4", "'training'", "'pretrain', 'train'")
    cols["split"][4] = None
    write_captions(root, "fr", cols)
    raises(lambda: read_captions(root, "fr"), "row 4", "split is null")


def test_duplicate_caption_rows(root):
    cols = captions_dict()
    cols["caption_index"] = pa.array([0, 1, 0, 0, 0, 1, 0, 1], pa.int32())
    path = write_captions(root, "fr", cols)
    raises(
        lambda: read_captions(root, "fr"),
        str(path),
        "row 3",
        "first at row 2",
        "unique (image_id, caption_index)",
    )


def test_require_english(root):
    cols = captions_dict()
    cols["caption_en"][1] = None  # a train row
    cols["caption_en"][6] = ""  # a test row
    path = write_captions(root, "fr", cols)
    raises(
        lambda: read_captions(root, "fr", require_english=True),
        str(path),
        "row 1 (image_id 'img0')",
        "caption_en",
    )
    raises(lambda: read_captions(root, "fr", ("test",), require_english=True), "row 6 (image_id 'img3')")
    assert len(read_captions(root, "fr")) == 4  # not required: fine


def test_corrupt_parquet(root):
    path = root / layout.captions_file("fr")
    path.write_bytes(b"this is not parquet at all")
    raises(lambda: read_captions(root, "fr"), str(path), "not a readable Parquet file")
    (root / layout.IMAGES_FILE).write_bytes(b"PAR1 garbage")
    raises(lambda: read_images(root), layout.IMAGES_FILE, "not a readable Parquet file")


def test_missing_files(root):
    shutil.rmtree(root / layout.CAPTIONS_DIR / "lang=fr")
    path = root / layout.captions_file("fr")
    raises(lambda: read_captions(root, "fr"), str(path), "not found", "Parquet file")
    (root / layout.IMAGES_FILE).unlink()
    raises(lambda: read_captions(root, "en"), layout.IMAGES_FILE, "not found")
    (root / layout.MANIFEST_FILE).unlink()
    raises(lambda: read_manifest(root), "manifest.json", "not found", "'languages'")


def test_bad_manifest(root):
    (root / layout.MANIFEST_FILE).write_text("{not json")
    raises(lambda: read_manifest(root), "manifest.json", "not valid JSON")
    (root / layout.MANIFEST_FILE).write_text(json.dumps({"seed": 0}))
    raises(lambda: dataset_languages(root), "manifest.json", "missing key 'languages'")


def test_duplicate_image_ids(root):
    pq.write_table(images_table(image_id=["img0", "img1", "img0", "img3"]), root / layout.IMAGES_FILE)
    raises(
        lambda: read_images(root), layout.IMAGES_FILE, "row 2 (image_id 'img0')", "first at row 0", "unique"
    )
    raises(lambda: image_ids_by_split(root), "row 2")


def test_image_without_bytes_or_path(root):
    pq.write_table(
        images_table(
            image=[png((0, 0, 0)), b"", png((0, 0, 0)), None], path=[None, None, None, "files/img3.png"]
        ),
        root / layout.IMAGES_FILE,
    )
    raises(
        lambda: read_images(root),
        layout.IMAGES_FILE,
        "row 1 (image_id 'img1')",
        "neither image bytes nor path",
    )
    assert read_images(root, columns=("image_id",)).num_rows == 4  # ids only: the bytes are not read


def test_undecodable_and_missing_image_files(root):
    rows = [{"image_id": "a", "image": png((0, 0, 0))}, {"image_id": "b", "image": b"not an image"}]
    raises(
        lambda: decode_images(rows, root, 8), "batch row 1 (image_id 'b')", "could not be decoded", "PNG/JPEG"
    )
    rows = [{"image_id": "c", "path": "files/nope.png"}]
    raises(lambda: decode_images(rows, root, 8), "files/nope.png", "batch row 0 (image_id 'c')", "not found")
