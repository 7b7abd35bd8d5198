"""XM3600 / COCO-36 importers and add-language on fixture files in the real formats; bad records of each kind."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from realdata import LANGS, write_coco36, write_xm3600

from cll_ray import dataset as ds
from cll_ray.cli import main
from cll_ray.importers import BadRecordsError, add_language, import_coco36, import_xm3600


def read_all(data, lang):
    return ds.read_captions(data, lang, splits=("train", "val", "test"))


# ------------------------------------------------------------------------------------------------ XM3600


def test_xm3600_all_test_by_default(tmp_path):
    src, images = write_xm3600(tmp_path)
    report = import_xm3600(src, images, tmp_path / "xm", progress=False)
    assert report.images == {"test": 12} and not report.bad
    assert report.captions == {lang: {"test": 24} for lang in ["ar", "en", "fr", "ru", "zh"]}
    assert ds.dataset_languages(tmp_path / "xm") == ["ar", "en", "fr", "ru", "zh"]
    zh = ds.read_captions(tmp_path / "xm", "zh", splits=("test",))
    assert zh.captions[0] == "一个红色的正方形" and list(zh.caption_index[:2]) == [0, 1]
    pixels = ds.decode_images(ds.read_images(tmp_path / "xm"), tmp_path / "xm", 32)
    assert pixels.shape == (12, 32, 32, 3)  # linked images resolve through the dataset's images/ link


def test_xm3600_carve_and_embed(tmp_path):
    src, images = write_xm3600(tmp_path)
    out = tmp_path / "xm"
    report = import_xm3600(src, images, out, langs=["en", "ru"], carve={"train": 0.5, "val": 0.25},
                           embed_images=True, progress=False)
    assert sum(report.images.values()) == 12 and report.images.get("train", 0) > 0
    assert not (out / "images").exists()  # bytes are inline
    ru = ds.read_captions(out, "ru", splits=("train",), require_english=True)
    en = ds.read_captions(out, "en", splits=("train",))
    assert set(ru.captions_en) <= set(en.captions)  # the same image's English caption is the source
    again = tmp_path / "xm2"
    import_xm3600(src, images, again, langs=["en", "ru"], carve={"train": 0.5, "val": 0.25}, progress=False)
    assert ds.image_ids_by_split(again) == ds.image_ids_by_split(out)  # carving is a function of the key


def _bad_xm3600(tmp_path):
    src, images = write_xm3600(tmp_path)
    lines = src.read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    missing = dict(first, **{"image/key": "ffffffffffffffff"})  # line 13: no such image
    empty = json.loads(lines[1])  # line 2: an empty French caption
    empty["fr"]["caption"][1] = "  "
    unknown = json.loads(lines[2])  # line 3: a language that is not XM3600's
    unknown["xx"] = {"caption": ["zzz"]}
    lines[1], lines[2] = json.dumps(empty, ensure_ascii=False), json.dumps(unknown, ensure_ascii=False)
    lines += [json.dumps(missing, ensure_ascii=False), lines[3]]  # line 14 duplicates line 4
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return src, images


def assert_reported(message: str, expected: list[tuple]) -> None:
    """Each (file, line, kind[, detail]) appears in the error message as ``file:line N: kind: ...detail``."""
    for path, line, kind, *detail in expected:
        assert f"{path}:line {line}: {kind}" in message, (path, line, kind, message)
        assert all(d in message for d in detail), detail


def test_xm3600_bad_records_stop_with_file_and_line(tmp_path):
    src, images = _bad_xm3600(tmp_path)
    with pytest.raises(BadRecordsError) as err:
        import_xm3600(src, images, tmp_path / "xm", progress=False)
    assert_reported(str(err.value), [(src, 13, "missing image"), (src, 2, "empty caption"),
                                     (src, 3, "unknown language", "'xx'"),
                                     (src, 14, "duplicate id", "already at line 4")])
    assert sorted(b.kind for b in err.value.bad) == ["duplicate id", "empty caption", "missing image",
                                                     "unknown language"]
    assert not (tmp_path / "xm").exists() and not list(tmp_path.glob(".xm*"))  # nothing half-written


def test_xm3600_skip_bad_skips_and_counts(tmp_path, capsys):
    src, images = _bad_xm3600(tmp_path)
    out = tmp_path / "xm"
    code = main(["data", "import", "xm3600", "--src", str(src), "--images", str(images), "--out", str(out),
                 "--skip-bad"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "skipped 4 bad record(s): 1 duplicate id, 1 empty caption, 1 missing image, 1 unknown language" in printed
    assert ds.read_images(out, columns=("image_id",)).num_rows == 12
    assert len(read_all(out, "fr")) == 23 and len(read_all(out, "en")) == 24  # only the empty caption left out
    manifest = ds.read_manifest(out)
    assert manifest["import"]["skipped"] == {"duplicate id": 1, "empty caption": 1, "missing image": 1,
                                             "unknown language": 1}
    assert "xx" not in manifest["languages"]


# ----------------------------------------------------------------------------------------------- COCO-36


def test_coco36_splits_sources_and_languages(tmp_path):
    src, images = write_coco36(tmp_path)
    out = tmp_path / "coco"
    report = import_coco36(src, images, out, progress=False)
    assert report.images == {"train": 12, "val": 2, "test": 2} and not report.bad
    assert ds.dataset_languages(out) == ["ar", "en", "fr", "ru", "zh"]
    for lang in LANGS:
        table = read_all(out, lang)
        assert len(table) == 32
        train = ds.read_captions(out, lang, splits=("train",), require_english=True)
        assert len(train) == 24
    ar = ds.read_captions(out, "ar", splits=("test",))
    en = ds.read_captions(out, "en", splits=("test",))
    assert ar.captions_en == en.captions  # translated val/test captions carry their English source
    subset = import_coco36(src, images, tmp_path / "sub", langs=["en", "ru"], progress=False)
    assert list(subset.captions) == ["en", "ru"]
    with pytest.raises(ValueError, match="no COCO-36 files for"):
        import_coco36(src, images, tmp_path / "none", langs=["ja"], progress=False)


def _bad_coco36(tmp_path):
    src, images = write_coco36(tmp_path, langs=["en", "fr", "ru"])
    path = src / "triplet" / "coco_vision-en-fr.tsv.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    lines[4] = lines[4].rsplit("\t", 1)[0] + "\t "  # line 5: empty target
    lines.append("train2014/COCO_train2014_999999999999.jpg\ta red square\tun carré rouge")  # line 25
    lines.append(lines[0])  # line 26: duplicates line 1
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with gzip.open(src / "triplet" / "coco_vision-en-xx.tsv.gz", "wt", encoding="utf-8") as f:
        f.write(lines[1] + "\n")
    val = src / "annotations" / "coco" / "translated" / "ru" / "val.json"
    items = json.loads(val.read_text(encoding="utf-8"))
    val.write_text(json.dumps(items + [items[0]], ensure_ascii=False, indent=1), encoding="utf-8")
    return src, images, path, val


def test_coco36_bad_records_stop_with_file_and_line(tmp_path):
    src, images, tsv, val = _bad_coco36(tmp_path)
    with pytest.raises(BadRecordsError) as err:
        import_coco36(src, images, tmp_path / "coco", progress=False)
    message = str(err.value)
    # the duplicated val item (the third) starts on line 2 + 2 * 8 (indent=1: 8 lines per item)
    assert_reported(message, [(tsv, 5, "empty caption"), (tsv, 25, "missing image"),
                              (tsv, 26, "duplicate id", "already at line 1"),
                              (val, 18, "duplicate id", "image_id 13 already at line 2")])
    assert "coco_vision-en-xx.tsv.gz:file 0: unknown language" in message
    assert not (tmp_path / "coco").exists()


def test_coco36_skip_bad(tmp_path):
    src, images, _, _ = _bad_coco36(tmp_path)
    report = import_coco36(src, images, tmp_path / "coco", skip_bad=True, progress=False)
    assert report.bad_counts == {"duplicate id": 2, "empty caption": 1, "missing image": 1, "unknown language": 1}
    assert report.captions["fr"]["train"] == 23 and report.captions["ru"]["val"] == 4
    assert "xx" not in ds.dataset_languages(tmp_path / "coco")


# -------------------------------------------------------------------------------------- bring your own


@pytest.fixture()
def coco(tmp_path):
    src, images = write_coco36(tmp_path, langs=["en", "fr"])
    import_coco36(src, images, tmp_path / "coco", progress=False)
    return tmp_path / "coco"


SWAHILI = [("train2014/COCO_train2014_000000000001.jpg", "mraba mwekundu", "train"),
           ("train2014/COCO_train2014_000000000002.jpg", "mraba wa bluu", ""),
           ("val2014/COCO_val2014_000000000013.jpg", "mraba mwekundu", "val")]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_add_language_from_each_format(coco, tmp_path, fmt):
    table = pa.table({"image_id": [r[0] for r in SWAHILI], "caption": [r[1] for r in SWAHILI],
                      "split": [r[2] for r in SWAHILI]})
    path = tmp_path / f"sw.{fmt}"
    if fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, path)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()), encoding="utf-8")
    else:
        pq.write_table(table, path)
    report = add_language(coco, "sw", path, in_place=True)
    assert report.captions == {"sw": {"train": 2, "val": 1}} and not report.bad
    assert ds.dataset_languages(coco)[-1] == "sw"
    train = ds.read_captions(coco, "sw", splits=("train",), require_english=True)  # sources filled from English
    en = ds.read_captions(coco, "en", splits=("train",))
    assert train.captions_en[0] in en.captions[:2]
    manifest = ds.read_manifest(coco)
    assert manifest["captions"]["sw"] == 3 and "captions/lang=sw/part-0.parquet" in manifest["files"]
    with pytest.raises(ValueError, match="already has language 'sw'"):
        add_language(coco, "sw", path, in_place=True)


def test_add_language_bad_rows(coco, tmp_path, capsys):
    path = tmp_path / "sw.csv"
    path.write_text(
        "image_id,caption,lang\n"
        "train2014/COCO_train2014_000000000001.jpg,mraba mwekundu,sw\n"  # line 2: good
        "train2014/COCO_train2014_000000000077.jpg,mraba,sw\n"  # line 3: no such image
        'train2014/COCO_train2014_000000000002.jpg,"",sw\n'  # line 4: empty caption
        "train2014/COCO_train2014_000000000003.jpg,mraba,xx\n"  # line 5: another language
        "train2014/COCO_train2014_000000000001.jpg,mraba mwekundu,sw\n",  # line 6: duplicate of line 2
        encoding="utf-8")
    before = ds.read_manifest(coco)
    assert main(["data", "add-language", str(coco), "--lang", "sw", "--captions", str(path), "--in-place"]) == 2
    assert_reported(capsys.readouterr().err, [(path, 3, "missing image"), (path, 4, "empty caption"),
                                              (path, 5, "unknown language"), (path, 6, "duplicate id")])
    assert ds.read_manifest(coco) == before and not (coco / "captions" / "lang=sw").exists()
    assert main(["data", "add-language", str(coco), "--lang", "sw", "--captions", str(path), "--skip-bad",
                 "--in-place"]) == 0
    assert "skipped 4 bad record(s)" in capsys.readouterr().out
    assert len(read_all(coco, "sw")) == 1
    assert main(["data", "add-language", str(coco), "--lang", "Not A Code", "--captions", str(path),
                 "--in-place"]) == 2


# ------------------------------------------------------------------------ a user's files are never lost


def _import_cli(src, images, out, *extra):
    return main(["data", "import", "xm3600", "--src", str(src), "--images", str(images), "--out", str(out), *extra])


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_import_into_a_non_empty_folder_needs_overwrite_and_replaces_only_the_earlier_import(tmp_path, capsys):
    src, images = write_xm3600(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")
    for extra in ((), ("--overwrite",)):  # a folder that is no dataset is never written into
        assert _import_cli(src, images, mine, *extra) == 2
        err = capsys.readouterr().err
        assert str(mine) in err and ("--overwrite" in err if not extra else "no dataset manifest" in err)
        assert _tree(mine) == ["notes.txt"]

    out = tmp_path / "xm"
    assert _import_cli(src, images, out) == 0
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    (out / "mine").mkdir()
    (out / "mine" / "a.csv").write_text("x", encoding="utf-8")
    before = (out / "manifest.json").read_text(encoding="utf-8")
    assert _import_cli(src, images, out) == 2  # non-empty: refused, nothing changed
    assert "--overwrite" in capsys.readouterr().err and (out / "manifest.json").read_text(encoding="utf-8") == before
    assert _import_cli(src, images, out, "--overwrite", "--langs", "en,ru") == 0
    assert ds.dataset_languages(out) == ["en", "ru"] and not (out / "captions" / "lang=fr").exists()
    assert (out / "notes.txt").read_text(encoding="utf-8") == "keep me" and (out / "mine" / "a.csv").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary or marker file left
    # a file the earlier import did not write is never replaced, even where the new import would write
    (out / "captions" / "lang=fr").mkdir()
    (out / "captions" / "lang=fr" / "part-0.parquet").write_text("mine", encoding="utf-8")
    assert _import_cli(src, images, out, "--overwrite") == 2
    assert "captions/lang=fr/part-0.parquet, which the earlier import did not write" in capsys.readouterr().err
    assert (out / "captions" / "lang=fr" / "part-0.parquet").read_text(encoding="utf-8") == "mine"
    assert ds.dataset_languages(out) == ["en", "ru"]


def test_an_interrupted_overwrite_is_finished_by_the_next_one(tmp_path, monkeypatch):
    from cll_ray import writer

    src, images = write_xm3600(tmp_path)
    out = tmp_path / "xm"
    import_xm3600(src, images, out, langs=["en", "fr"], progress=False)
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    calls = []
    real_replace = writer.os.replace

    def dies_after_one(a, b):  # killed after the first table moved: no manifest, the marker lists both imports
        calls.append(b)
        if len(calls) > 1:
            raise KeyboardInterrupt
        real_replace(a, b)

    monkeypatch.setattr(writer.os, "replace", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        import_xm3600(src, images, out, langs=["en", "ru"], progress=False, overwrite=True)
    monkeypatch.setattr(writer.os, "replace", real_replace)
    assert not (out / "manifest.json").exists() and (out / writer.REPLACING_FILE).is_file()
    with pytest.raises(ds.DataError, match="manifest not found"):  # a reader sees no half dataset
        ds.read_manifest(out)
    import_xm3600(src, images, out, langs=["en", "ru"], progress=False, overwrite=True)
    assert ds.dataset_languages(out) == ["en", "ru"] and not (out / "captions" / "lang=fr").exists()
    assert len(read_all(out, "ru")) == 24 and (out / "notes.txt").is_file()
    assert not (out / writer.REPLACING_FILE).exists()


SW_CSV = ("image_id,caption,split\n"
          "train2014/COCO_train2014_000000000001.jpg,mraba mwekundu,train\n"
          "val2014/COCO_val2014_000000000013.jpg,mraba wa bluu,val\n")


def test_add_language_writes_a_new_dataset_or_needs_in_place(coco, tmp_path, capsys):
    path = tmp_path / "sw.csv"
    path.write_text(SW_CSV, encoding="utf-8")
    before = _tree(coco), (coco / "manifest.json").read_bytes()
    assert main(["data", "add-language", str(coco), "--lang", "sw", "--captions", str(path)]) == 2
    assert "--out DIR" in (err := capsys.readouterr().err) and "--in-place" in err
    new = tmp_path / "coco-sw"
    assert main(["data", "add-language", str(coco), "--lang", "sw", "--captions", str(path), "--out", str(new)]) == 0
    assert (_tree(coco), (coco / "manifest.json").read_bytes()) == before  # the source is as it was
    assert ds.dataset_languages(new) == ["en", "fr", "sw"] and len(read_all(new, "sw")) == 2
    assert len(read_all(new, "fr")) == len(read_all(coco, "fr"))
    for rel in ("images.parquet", "captions/lang=en/part-0.parquet"):  # unchanged files are shared, not copied
        assert (new / rel).stat().st_ino == (coco / rel).stat().st_ino
    assert (new / "images").resolve() == (coco / "images").resolve()
    assert ds.decode_images(ds.read_images(new), new, 16).shape[0] == ds.read_images(coco).num_rows
    assert ds.read_manifest(new)["derived_from"] == str(coco.absolute())
    # a non-empty --out is refused; adding in place to the new dataset never changes the shared source files
    assert main(["data", "add-language", str(coco), "--lang", "sw", "--captions", str(path), "--out", str(new)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["data", "add-language", str(new), "--lang", "sw", "--captions", str(path), "--in-place",
                 "--overwrite"]) == 0
    assert (_tree(coco), (coco / "manifest.json").read_bytes()) == before


def test_add_language_never_changes_the_synthxm_cache_in_place(coco, tmp_path, monkeypatch, capsys):
    import shutil

    home = tmp_path / "home"
    cached = home / "synthxm" / "tiny-seed0"
    shutil.copytree(coco, cached, symlinks=True)
    monkeypatch.setenv("CLL_RAY_HOME", str(home))
    path = tmp_path / "sw.csv"
    path.write_text(SW_CSV, encoding="utf-8")
    before = _tree(cached), (cached / "manifest.json").read_bytes()
    assert main(["data", "add-language", str(cached), "--lang", "sw", "--captions", str(path), "--in-place"]) == 2
    assert "SynthXM cache" in (err := capsys.readouterr().err) and str(cached) in err
    assert main(["data", "add-language", str(cached), "--lang", "sw", "--captions", str(path),
                 "--out", str(tmp_path / "mine")]) == 0
    assert (_tree(cached), (cached / "manifest.json").read_bytes()) == before


def test_unknown_columns_are_an_error_or_ignored_with_a_warning(coco, tmp_path, capsys):
    path = tmp_path / "sw.csv"
    path.write_text("image_id,caption,en_caption\n"
                    "val2014/COCO_val2014_000000000013.jpg,mraba wa bluu,a blue square\n", encoding="utf-8")
    args = ["data", "add-language", str(coco), "--lang", "sw", "--captions", str(path), "--in-place"]
    before = (coco / "manifest.json").read_bytes()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{path}: unknown column(s) en_caption" in err and "caption_en" in err and "--ignore-columns" in err
    assert (coco / "manifest.json").read_bytes() == before and not (coco / "captions" / "lang=sw").exists()
    assert main([*args, "--ignore-columns"]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "ignored unknown column(s) en_caption" in captured.err
    assert ds.read_captions(coco, "sw", splits=("val",)).captions == ["mraba wa bluu"]


def test_corrupt_coco36_files_are_named_not_a_traceback(tmp_path, capsys):
    src, images = write_coco36(tmp_path, langs=["en", "fr"])
    tsv = src / "triplet" / "coco_vision-en-fr.tsv.gz"
    data = tsv.read_bytes()
    tsv.write_bytes(data[: len(data) // 2])  # truncated download
    out = tmp_path / "coco"
    args = ["data", "import", "coco36", "--src", str(src), "--images", str(images), "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{tsv}: unreadable after line" in err and "gzip" in err
    tsv.write_bytes(b"image\ten\tfr\n")  # not gzip at all
    assert main(args) == 2 and f"{tsv}: unreadable" in capsys.readouterr().err
    tsv.write_bytes(data)
    val = src / "annotations" / "coco" / "translated" / "fr" / "val.json"
    val.write_text(val.read_text(encoding="utf-8")[:-30], encoding="utf-8")
    assert main(args) == 2 and f"{val}:line" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".coco*"))
