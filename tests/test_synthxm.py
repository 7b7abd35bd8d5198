"""SynthXM generator: layout, determinism, captions in 36 languages, scene geometry, caching."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import time
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import cll_ray.synthxm.generate as generate_module
from cll_ray.layout import (
    CAPTIONS_SCHEMA,
    IMAGES_FILE,
    IMAGES_SCHEMA,
    MANIFEST_FILE,
    SPLITS,
    XM3600_LANGUAGES,
    captions_file,
)
from cll_ray.synthxm import (
    SIZES,
    canonical_key,
    format_summary,
    generate_synthxm,
    load_lexicon,
    synthxm_summary,
)
from cll_ray.synthxm.captions import select_form
from cll_ray.synthxm.render import PALETTE
from cll_ray.synthxm.scenes import COLORS, OBJECT_SIZES, PLACES, RELATIONS, SHAPES

TINY = SIZES["tiny"]

# Unicode blocks allowed for the letters of each script (combining marks are not letters, so no need).
SCRIPT_RANGES = {
    "Latin": [(0x41, 0x24F), (0x1E00, 0x1EFF)],
    "Cyrillic": [(0x400, 0x4FF)],
    "Greek": [(0x370, 0x3FF)],
    "Arabic": [(0x600, 0x6FF)],
    "Hebrew": [(0x590, 0x5FF)],
    "Devanagari": [(0x900, 0x97F)],
    "Bengali": [(0x980, 0x9FF)],
    "Telugu": [(0xC00, 0xC7F)],
    "Thai": [(0xE00, 0xE7F)],
    "Han": [(0x4E00, 0x9FFF)],
    "Japanese (Kana+Han)": [(0x3040, 0x30FF), (0x4E00, 0x9FFF)],
    "Hangul": [(0xAC00, 0xD7AF)],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("sx") / "tiny"
    pa.array(["warm-up"])  # pyarrow imports pandas on first list conversion (~1 s without .pyc): not ours
    t = time.time()
    manifest = generate_synthxm(out, "tiny", progress=False)
    return out, manifest, time.time() - t


@pytest.fixture(scope="module")
def tables(tiny):
    out, _, _ = tiny
    images = pq.read_table(out / IMAGES_FILE).to_pylist()
    caps = {lang: pq.read_table(out / captions_file(lang)).to_pylist() for lang in XM3600_LANGUAGES}
    return images, caps


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_tiny_layout_schemas_and_manifest(tiny, tables):
    out, manifest, seconds = tiny
    assert seconds < 3.0, f"tiny generation took {seconds:.2f}s"
    assert pq.read_schema(out / IMAGES_FILE).equals(IMAGES_SCHEMA)
    for lang in XM3600_LANGUAGES:
        assert pq.read_schema(out / captions_file(lang)).equals(CAPTIONS_SCHEMA)
    on_disk = json.loads((out / MANIFEST_FILE).read_text())
    assert on_disk == manifest
    assert manifest["name"] == "synthxm" and manifest["languages"] == XM3600_LANGUAGES
    assert manifest["splits"] == {s: getattr(TINY, s) for s in SPLITS}
    assert set(manifest["files"]) == set(_files(out)) - {MANIFEST_FILE}
    for rel, digest in manifest["files"].items():
        assert _sha(out / rel) == digest, rel
    images, caps = tables
    assert [r["split"] for r in images] == [s for s in SPLITS for _ in range(getattr(TINY, s))]
    assert len({r["image_id"] for r in images}) == len(images)
    assert all(re.fullmatch(r"sx-\d{6}", r["image_id"]) and r["path"] is None for r in images)
    assert {lang: len(rows) for lang, rows in caps.items()} == manifest["captions"]
    im = Image.open(io.BytesIO(images[0]["image"]))
    assert im.format == "PNG" and im.mode == "RGB" and im.size == (64, 64)


def test_deterministic_and_independent_of_pool_size(tiny, tmp_path, monkeypatch):
    out, _, _ = tiny
    again = tmp_path / "again"
    monkeypatch.setattr(generate_module, "POOL_MIN_IMAGES", 0)  # force a real 2-process pool on tiny
    generate_synthxm(again, "tiny", progress=False, workers=2)
    assert _files(again) == _files(out)
    for rel in _files(out):
        assert _sha(again / rel) == _sha(out / rel), rel


def test_every_language_has_parallel_captions(tables):
    images, caps = tables
    shared = [r["image_id"] for r in images if r["split"] != "pretrain"]
    split_rank = {s: i for i, s in enumerate(SPLITS)}
    en = {(c["image_id"], c["caption_index"]): c["caption"] for c in caps["en"]}
    assert {c["split"] for c in caps["en"]} == set(SPLITS)  # English also captions pretrain
    for lang, rows in caps.items():
        keys = [(split_rank[c["split"]], c["image_id"], c["caption_index"]) for c in rows]
        assert keys == sorted(keys), lang
        by_image = defaultdict(list)
        for c in rows:
            assert c["caption"].strip() == c["caption"] and c["caption"], (lang, c)
            assert c["caption_en"] == en[(c["image_id"], c["caption_index"])], (lang, c)
            if lang == "en":
                assert c["caption"] == c["caption_en"]
            by_image[c["image_id"]].append(c)
        if lang != "en":
            assert "pretrain" not in {c["split"] for c in rows}
            assert list(by_image) == shared, lang
        for image_id in shared:
            got = by_image[image_id]
            assert [c["caption_index"] for c in got] == [0, 1], (lang, image_id)
            assert len({c["caption"] for c in got}) == 2, (lang, got)


def test_canonical_keys_unique_and_test_disjoint_from_train(tables):
    images, _ = tables
    keys = defaultdict(list)
    for r in images:
        keys[r["split"]].append(canonical_key(json.loads(r["scene"])))
    for split in ("train", "val", "test"):
        assert len(set(keys[split])) == len(keys[split]), split
    assert not set(keys["test"]) & set(keys["train"])
    assert not set(keys["val"]) & (set(keys["train"]) | set(keys["test"]))
    # "A right of B" and "B left of A" are one description
    a = {
        "objects": [
            {"size": "small", "color": "red", "shape": "star"},
            {"size": "large", "color": "blue", "shape": "ring"},
        ]
    }
    flipped = {"objects": a["objects"][::-1]}
    a["relation"] = {"subject": 0, "object": 1, "relation": "right_of"}
    flipped["relation"] = {"subject": 0, "object": 1, "relation": "left_of"}
    assert canonical_key(a) == canonical_key(flipped)


def test_scene_geometry_is_true(tables):
    images, _ = tables
    counts = defaultdict(int)
    for r in images:
        scene = json.loads(r["scene"])
        objs = scene["objects"]
        counts[len(objs)] += 1
        for o in objs:
            assert o["shape"] in SHAPES and o["color"] in COLORS and o["size"] in OBJECT_SIZES
            col, row = min(int(o["x"] * 3), 2), min(int(o["y"] * 3), 2)
            assert o["place"] == PLACES[3 * row + col]
            assert o["r"] <= o["x"] <= 1 - o["r"] and o["r"] <= o["y"] <= 1 - o["r"]
        for i in range(len(objs)):
            for j in range(i):
                a, b = objs[i], objs[j]
                assert math.dist((a["x"], a["y"]), (b["x"], b["y"])) >= a["r"] + b["r"]  # no overlap
        rel = scene["relation"]
        if len(objs) == 1:
            assert rel is None
            continue
        s, o = objs[rel["subject"]], objs[rel["object"]]
        dx, dy = s["x"] - o["x"], s["y"] - o["y"]  # y grows downwards
        expected = {"left_of": -dx, "right_of": dx, "above": -dy, "below": dy}[rel["relation"]]
        other = abs(dy) if rel["relation"] in ("left_of", "right_of") else abs(dx)
        assert expected > 0 and expected >= other, scene
    assert set(counts) == {1, 2, 3}


def test_rendered_colours_match_scene(tables):
    images, _ = tables
    checked = 0
    for r in images[:300]:
        scene = json.loads(r["scene"])
        arr = np.asarray(Image.open(io.BytesIO(r["image"])), np.int32)
        for o in scene["objects"]:
            if o["size"] != "large" or o["shape"] in ("ring", "cross"):
                continue  # a ring's centre is a hole
            px = arr[int(o["y"] * 64), int(o["x"] * 64)]
            assert np.abs(px - np.array(PALETTE[o["color"]])).max() <= 25, (o, px)
            checked += 1
    assert checked > 50


def test_scripts_and_word_order(tables):
    _, caps = tables
    for lang, rows in caps.items():
        script = load_lexicon(lang).script
        ranges = SCRIPT_RANGES[script]
        letters = {ch for c in rows for ch in c["caption"] if ch.isalpha()}
        bad = {ch for ch in letters if not any(lo <= ord(ch) <= hi for lo, hi in ranges)}
        assert not bad, (lang, script, bad)
    no_spaces = [lang for lang in XM3600_LANGUAGES if not load_lexicon(lang).spaces]
    assert no_spaces == ["ja", "th", "zh"]
    for lang in no_spaces:
        assert not any(" " in c["caption"] for c in caps[lang]), lang
    assert all(re.search("[\u0400-\u04ff]", c["caption"]) for c in caps["ru"])
    assert all(re.search("[\u0600-\u06ff]", c["caption"]) for c in caps["ar"])
    assert any("个" in c["caption"] for c in caps["zh"]) and any("つ" in c["caption"] for c in caps["ja"])
    # adjective after the noun in French / Spanish / Arabic, before it in English / German
    one = ([("small", "red", "circle")], None, "top_left")
    assert "cercle rouge" in load_lexicon("fr").caption(*one, 0)
    assert "círculo rojo pequeño" in load_lexicon("es").caption(*one, 0)
    assert "دائرة حمراء صغيرة" in load_lexicon("ar").caption(*one, 0)
    assert "small red circle" in load_lexicon("en").caption(*one, 0)
    assert "kleiner roter Kreis" in load_lexicon("de").caption(*one, 0)
    # case agreement after prepositions: dative in German, instrumental in Russian
    two = ([("small", "red", "circle"), ("large", "blue", "star")], "above", None)
    assert "über einem großen blauen Stern" in load_lexicon("de").caption(*two, 0)
    assert "над большой синей звездой" in load_lexicon("ru").caption(*two, 0)


def test_every_lexicon_renders_every_combination():
    descs = [(z, c, s) for z in OBJECT_SIZES for c in COLORS for s in SHAPES]
    n_templates = len(load_lexicon("en").templates)
    for lang in XM3600_LANGUAGES:
        lex = load_lexicon(lang)
        assert "hand" in lex.data["source"] and lex.script in SCRIPT_RANGES
        assert len(lex.templates) == n_templates >= 2, lang
        numbers = {int(k): str(v) for k, v in lex.data["numbers"].items()}
        for t in range(n_templates):
            caps = [lex.caption([d], None, p, t) for d in descs for p in PLACES]
            for rel in RELATIONS:
                caps += [lex.caption([descs[0], d], rel, None, t) for d in descs[1:]]
                caps += [lex.caption([d, descs[0]], rel, None, t) for d in descs[1:]]
                three = [lex.caption([descs[1], descs[2], d], rel, None, t) for d in descs[3:]]
                assert all(numbers[3] in c for c in three), (lang, t, three[0])
                caps += three
            assert all(c and "{" not in c and "}" not in c and "  " not in c for c in caps), lang
            assert all(numbers[2] in lex.caption(descs[:2], rel, None, t) for rel in RELATIONS), (lang, t)
        # different templates give different sentences; different scenes different captions
        assert lex.caption(descs[:2], "above", None, 0) != lex.caption(descs[:2], "above", None, 1)
        assert lex.caption(descs[:2], "above", None, 0) != lex.caption(descs[:2], "below", None, 0)


def test_select_form_prefers_case_over_gender():
    entry = {"m": "kleiner", "f": "kleine", "dat": "kleinen", "dat.f": "kleinen-f", "g": "x"}
    assert select_form(entry, frozenset(), "m") == "kleiner"
    assert select_form(entry, frozenset({"dat"}), "m") == "kleinen"
    assert select_form(entry, frozenset({"dat"}), "f") == "kleinen-f"
    assert select_form("plain", frozenset({"gen"}), "m") == "plain"
    with pytest.raises(KeyError):
        select_form({"m": "a"}, frozenset(), "f")


def test_rerun_is_cached_and_config_changes_are_guarded(tiny, tmp_path):
    out, manifest, _ = tiny
    mtimes = {rel: (out / rel).stat().st_mtime_ns for rel in _files(out)}
    t = time.time()
    assert generate_synthxm(out, "tiny", progress=False) == manifest
    assert time.time() - t < 0.5
    assert {rel: (out / rel).stat().st_mtime_ns for rel in _files(out)} == mtimes
    with pytest.raises(FileExistsError, match="different config"):
        generate_synthxm(out, "tiny", seed=1, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("not a dataset")
    with pytest.raises(FileExistsError, match="no complete SynthXM dataset"):
        generate_synthxm(tmp_path / "junk", "tiny", progress=False)
    # overwrite replaces a dataset with another config (an empty directory counts as absent)
    other = tmp_path / "other"
    other.mkdir()
    generate_synthxm(other, "tiny", languages=["fr"], progress=False, workers=1)
    assert (other / captions_file("en")).exists() and not (other / captions_file("de")).exists()
    m = generate_synthxm(other, "tiny", languages=["de"], seed=3, progress=False, overwrite=True, workers=1)
    assert m["seed"] == 3 and m["languages"] == ["de", "en"]
    assert not (other / captions_file("fr")).exists() and (other / captions_file("de")).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_summary(tiny):
    out, _, _ = tiny
    rows = synthxm_summary(out)
    assert [r["lang"] for r in rows] == XM3600_LANGUAGES
    n_shared = TINY.train + TINY.val + TINY.test
    for r in rows:
        assert r["images"] == n_shared and r["captions"] == 2 * n_shared and r["captions_per_image"] == 2.0
        assert r["distinct_tokens"] > 10 and 0.0 <= r["overlap_with_en"] <= 1.0
    by = {r["lang"]: r for r in rows}
    assert by["en"]["overlap_with_en"] == 1.0
    assert by["ru"]["script"] == "Cyrillic" and by["zh"]["overlap_with_en"] < 0.05
    table = format_summary(rows)
    assert table.splitlines()[0].split() == list(rows[0]) and len(table.splitlines()) == 2 + len(rows)
