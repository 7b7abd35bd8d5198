"""Small fixture files in the real XM3600 and COCO-36 formats, in Latin, Cyrillic, Han and Arabic script."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from PIL import Image, ImageDraw

LANGS = ["en", "fr", "ru", "zh", "ar"]
COLORS = {  # rgb, then the word in each language
    "red": ((220, 30, 30), "rouge", "красный", "红色", "أحمر"),
    "blue": ((30, 60, 220), "bleu", "синий", "蓝色", "أزرق"),
    "green": ((30, 170, 60), "vert", "зелёный", "绿色", "أخضر"),
    "yellow": ((230, 210, 30), "jaune", "жёлтый", "黄色", "أصفر"),
    "black": ((15, 15, 15), "noir", "чёрный", "黑色", "أسود"),
    "white": ((245, 245, 245), "blanc", "белый", "白色", "أبيض"),
}
SHAPES = {"square": ("carré", "квадрат", "正方形", "مربع"), "circle": ("cercle", "круг", "圆形", "دائرة")}


def captions(color: str, shape: str) -> dict[str, list[str]]:
    """Two captions per language for a coloured shape."""
    _, fr_c, ru_c, zh_c, ar_c = COLORS[color]
    fr_s, ru_s, zh_s, ar_s = SHAPES[shape]
    return {
        "en": [f"a {color} {shape}", f"a photo of a {color} {shape} on grey"],
        "fr": [f"un {fr_s} {fr_c}", f"une photo d'un {fr_s} {fr_c} sur gris"],
        "ru": [f"{ru_c} {ru_s}", f"фото: {ru_c} {ru_s} на сером фоне"],
        "zh": [f"一个{zh_c}的{zh_s}", f"灰色背景上的{zh_c}{zh_s}"],
        "ar": [f"{ar_s} {ar_c}", f"صورة {ar_s} {ar_c} على خلفية رمادية"],
    }


def scenes(n: int) -> list[tuple[str, str]]:
    return [(c, s) for s in SHAPES for c in COLORS][:n]


def draw(path: Path, color: str, shape: str, size: int = 80) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size + 16, size), (128, 128, 128))  # not square: exercises resize + crop
    box = (20, 12, size - 4, size - 12)
    d = ImageDraw.Draw(img)
    (d.rectangle if shape == "square" else d.ellipse)(box, fill=COLORS[color][0])
    img.save(path, format="JPEG", quality=90)


def write_xm3600(root: Path, n: int = 12) -> tuple[Path, Path]:
    """``captions.jsonl`` (one record per image, the real XM3600 format) and an images folder of ``<key>.jpg``."""
    images = root / "images"
    lines = []
    for i, (color, shape) in enumerate(scenes(n)):
        key = f"{i:04x}9f3e1c0a{i:04x}"
        draw(images / f"{key}.jpg", color, shape)
        record = {"image/key": key, "image/locale": LANGS[i % len(LANGS)]}
        for lang, caps in captions(color, shape).items():
            record[lang] = {"caption": caps, "caption/tokenized": [c.lower() for c in caps]}
        lines.append(json.dumps(record, ensure_ascii=False))
    src = root / "captions.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return src, images


COCO_SPLITS = {"train": (0, 12), "val": (12, 14), "test": (14, 16)}
COCO_SCENES = [(c, s) for s in SHAPES for c in COLORS] + [("red", "square"), ("blue", "circle"),
                                                          ("green", "square"), ("black", "circle")]


def coco_rel(i: int, split: str) -> str:
    folder = "train2014" if split == "train" else "val2014"
    return f"{folder}/COCO_{folder}_{i + 1:012d}.jpg"


def write_coco36(root: Path, langs=LANGS) -> tuple[Path, Path]:
    """``triplet/coco_vision-en-{lang}.tsv.gz`` + ``annotations/coco/translated/{lang}/{val,test}.json`` and images."""
    src, images = root / "coco36", root / "coco-images"
    all_scenes = COCO_SCENES
    for split, (lo, hi) in COCO_SPLITS.items():
        for i in range(lo, hi):
            draw(images / coco_rel(i, split), *all_scenes[i])
    for lang in langs:
        if lang != "en":
            lines = []
            for i in range(*COCO_SPLITS["train"]):
                caps = captions(*all_scenes[i])
                lines += [f"{coco_rel(i, 'train')}\t{en}\t{tgt}" for en, tgt in zip(caps["en"], caps[lang])]
            path = src / "triplet" / f"coco_vision-en-{lang}.tsv.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(path, "wt", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        for split in ("val", "test"):
            items = [{"image": coco_rel(i, split), "image_id": i + 1, "caption": captions(*all_scenes[i])[lang]}
                     for i in range(*COCO_SPLITS[split])]
            path = src / "annotations" / "coco" / "translated" / lang / f"{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(items, ensure_ascii=False, indent=1), encoding="utf-8")
    return src, images


def write_captions_csv(path: Path, lang: str) -> Path:
    """A bring-your-own caption file for the COCO-36 fixture images: image_id, caption, caption_en, split."""
    import csv

    all_scenes = COCO_SCENES
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "caption", "caption_en", "split"])
        for split, (lo, hi) in COCO_SPLITS.items():
            for i in range(lo, hi):
                caps = captions(*all_scenes[i])
                writer.writerows([coco_rel(i, split), c, e, split] for c, e in zip(caps[lang], caps["en"]))
    return path


def write_demo(root: Path) -> None:
    """Everything docs/real-data.md's demo needs under ``root``."""
    write_coco36(root)
    write_xm3600(root / "xm")
    write_captions_csv(root / "ar.csv", "ar")


RELOAD = """
import json, sys
import numpy as np
from cll_ray.exported import ExportedModel
np.save(sys.argv[2], ExportedModel(sys.argv[1], device="cpu").encode_text(json.loads(sys.argv[3]), normalize=False))
"""


def reload_embeddings(model_dir: Path, texts: list[str], scratch: Path):
    """Raw text embeddings of an exported model, computed in a fresh Python process (open_clip + tokenizers)."""
    import subprocess
    import sys

    import numpy as np

    out = scratch / "reloaded.npy"
    subprocess.run([sys.executable, "-c", RELOAD, str(model_dir), str(out), json.dumps(texts)], check=True)
    return np.load(out)
