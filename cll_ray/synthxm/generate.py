"""Generate the SynthXM dataset in the canonical layout (`cll_ray.layout`).

Steps: (1) sample scenes split by split in the parent process (uniqueness of canonical keys needs a global
view), (2) render PNGs in a process pool in fixed-size chunks (each image is a pure function of its scene,
so the output does not depend on the pool size), (3) write captions for every language while the pool
renders, (4) write Parquet + manifest into a temporary sibling directory and rename it into place.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from ..layout import (
    CAPTIONS_SCHEMA,
    IMAGES_FILE,
    IMAGES_SCHEMA,
    MANIFEST_FILE,
    SPLITS,
    XM3600_LANGUAGES,
    captions_file,
)
from ..writer import sha256_file, write_manifest
from .captions import load_lexicon, scene_parts, template_order
from .render import render_chunk
from .scenes import sample_split, scene_json

GENERATOR_VERSION = "1.0.0"  # bump on any change that alters the bytes written
CHUNK = 512  # images per render task and per Parquet row group; fixed so output never depends on the pool
CAPTIONS_PER_IMAGE = 2
POOL_MIN_IMAGES = 4096  # below this, starting spawn workers (~1 s) costs more than it saves


@dataclass(frozen=True)
class SynthXMSize:
    """Number of images per split."""

    pretrain: int  # English-only images for pretraining the English base model
    train: int  # the train split, shared by all languages (like COCO-36)
    val: int
    test: int

    @property
    def total(self) -> int:
        return self.pretrain + self.train + self.val + self.test


SIZES: dict[str, SynthXMSize] = {
    "tiny": SynthXMSize(pretrain=600, train=160, val=40, test=60),
    "small": SynthXMSize(pretrain=10_000, train=1_000, val=200, test=500),
    "default": SynthXMSize(pretrain=40_000, train=2_000, val=500, test=1_000),
    "large": SynthXMSize(pretrain=100_000, train=10_000, val=1_000, test=3_600),
}


def resolve_size(size: SynthXMSize | str) -> SynthXMSize:
    """A preset name or a SynthXMSize -> SynthXMSize."""
    if isinstance(size, SynthXMSize):
        return size
    if size not in SIZES:
        raise ValueError(f"unknown SynthXM size {size!r}; presets: {sorted(SIZES)}")
    return SIZES[size]


def resolve_languages(languages: list[str] | None) -> list[str]:
    """All 36 XM3600 languages by default; "en" is always included; XM3600 order, no duplicates."""
    if languages is None:
        return list(XM3600_LANGUAGES)
    unknown = sorted(set(languages) - set(XM3600_LANGUAGES))
    if unknown:
        raise ValueError(f"no SynthXM lexicon for {unknown}; known: {' '.join(XM3600_LANGUAGES)}")
    wanted = set(languages) | {"en"}
    return [lang for lang in XM3600_LANGUAGES if lang in wanted]


def sample_scenes(size: SynthXMSize, seed: int) -> dict[str, list[dict]]:
    """Scenes per split. Test is sampled first (so it depends only on seed and test size), then val
    avoiding test keys, then train avoiding both; pretrain may repeat descriptions."""
    rngs = {split: random.Random(f"synthxm:{seed}:{split}") for split in SPLITS}
    test, test_keys = sample_split(rngs["test"], size.test)
    val, val_keys = sample_split(rngs["val"], size.val, avoid=test_keys)
    train, _ = sample_split(rngs["train"], size.train, avoid=test_keys | val_keys)
    pretrain, _ = sample_split(rngs["pretrain"], size.pretrain, unique=False)
    return {"pretrain": pretrain, "train": train, "val": val, "test": test}


def _caption_plan(rows: list[tuple[str, str, dict]], n_templates: int) -> list[tuple]:
    """(image_id, split, caption_index, template, scene parts, English caption) per caption, in row order."""
    en = load_lexicon("en")
    plan = []
    for image_id, split, scene in rows:
        parts = scene_parts(scene)
        for ci, t in enumerate(template_order(scene, n_templates)[:CAPTIONS_PER_IMAGE]):
            plan.append((image_id, split, ci, t, parts, en.caption(*parts, t)))
    return plan


def _captions_table(lang: str, plan: list[tuple]) -> pa.Table:
    """Caption table of one language, with the parallel English caption of the same template."""
    if lang != "en":
        plan = [p for p in plan if p[1] != "pretrain"]  # pretraining is English only
    lex = load_lexicon(lang)
    cols = {
        "image_id": [p[0] for p in plan],
        "split": [p[1] for p in plan],
        "caption_index": [p[2] for p in plan],
        "caption": [p[5] if lang == "en" else lex.caption(*p[4], p[3]) for p in plan],
        "caption_en": [p[5] for p in plan],
    }
    return pa.Table.from_pydict(cols, schema=CAPTIONS_SCHEMA)


def _config(size: SynthXMSize, languages: list[str], seed: int, image_size: int) -> dict:
    cfg = {
        "name": "synthxm",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "image_size": image_size,
        "sizes": asdict(size),
        "languages": languages,
    }
    cfg["config_hash"] = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    return cfg


def read_manifest(dataset_dir) -> dict | None:
    """The manifest of a dataset directory, or None when there is none."""
    path = Path(dataset_dir) / MANIFEST_FILE
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _check_existing(out: Path, cfg: dict, overwrite: bool) -> dict | None:
    """The existing manifest when out holds the same config; raise on a different one (unless overwrite)."""
    old = read_manifest(out)
    complete = old is not None and all((out / rel).exists() for rel in old.get("files", {}))
    if complete and old.get("config_hash") == cfg["config_hash"]:
        return old
    if overwrite:
        return None
    if not complete:
        raise FileExistsError(
            f"{out} exists but holds no complete SynthXM dataset; pass overwrite=True to replace it"
        )
    diff = {k: (old.get(k), cfg[k]) for k in cfg if old.get(k) != cfg[k] and k != "config_hash"}
    raise FileExistsError(
        f"{out} holds a SynthXM dataset with a different config (existing, requested): {diff}; "
        "use another directory or pass overwrite=True"
    )


def generate_synthxm(
    out_dir,
    size: SynthXMSize | str = "default",
    languages: list[str] | None = None,
    seed: int = 0,
    image_size: int = 64,
    progress: bool = True,
    overwrite: bool = False,
    workers: int = 2,
) -> dict:
    """Write the SynthXM dataset to out_dir and return its manifest.

    Args:
        out_dir: dataset directory; written atomically (built in a hidden temporary sibling, then renamed).
            If it already holds a dataset with the same config, that manifest is returned at once.
        size: a preset name from SIZES ("tiny", "small", "default", "large") or a SynthXMSize.
        languages: language codes (default: the 36 XM3600 languages); "en" is always added.
        seed: the dataset seed; same seed + generator version + size -> byte-identical files.
        image_size: side of the square RGB images in pixels.
        progress: show tqdm progress bars.
        overwrite: replace an existing dataset with a different config instead of raising.
        workers: processes that render images (the output does not depend on it); small datasets
            (< POOL_MIN_IMAGES images) are rendered in-process.
    """
    size = resolve_size(size)
    languages = resolve_languages(languages)
    cfg = _config(size, languages, int(seed), int(image_size))
    out = Path(out_dir).absolute()
    if out.exists() and any(out.iterdir()):  # an empty directory counts as absent
        existing = _check_existing(out, cfg, overwrite)
        if existing is not None:
            return existing
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        manifest = _build(tmp, cfg, size, languages, progress, workers)
        return _install(tmp, out, cfg, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build(
    tmp: Path, cfg: dict, size: SynthXMSize, languages: list[str], progress: bool, workers: int
) -> dict:
    # 1. Scenes, with ids in split order so that (split, image_id) order is plain id order.
    scenes = sample_scenes(size, cfg["seed"])
    ordered = [(split, s) for split in SPLITS for s in scenes[split]]
    rows = [(f"sx-{i:06d}", split, s) for i, (split, s) in enumerate(ordered)]
    tasks = [([s for _, _, s in rows[i : i + CHUNK]], cfg["image_size"]) for i in range(0, len(rows), CHUNK)]
    n_proc = min(workers, len(tasks)) if len(rows) >= POOL_MIN_IMAGES else 1
    pool = mp.get_context("spawn").Pool(n_proc) if n_proc > 1 else None
    try:
        # 2. Rendering starts in the background; imap keeps chunk order.
        images = pool.imap(render_chunk, tasks) if pool else map(render_chunk, tasks)
        # 3. Captions meanwhile, in the parent.
        plan = _caption_plan(rows, len(load_lexicon("en").templates))
        files: dict[str, str] = {}
        counts: dict[str, int] = {}
        for lang in tqdm(languages, desc="SynthXM captions", unit="lang", disable=not progress):
            table = _captions_table(lang, plan)
            rel = captions_file(lang)
            (tmp / rel).parent.mkdir(parents=True)
            pq.write_table(table, tmp / rel)
            counts[lang] = table.num_rows
        # 4. Images, one row group per chunk.
        with pq.ParquetWriter(tmp / IMAGES_FILE, IMAGES_SCHEMA) as writer:
            bar = tqdm(total=len(rows), desc="SynthXM images", unit="img", disable=not progress)
            for k, pngs in enumerate(images):
                chunk = rows[k * CHUNK : k * CHUNK + len(pngs)]
                batch = {
                    "image_id": [r[0] for r in chunk],
                    "split": [r[1] for r in chunk],
                    "image": pngs,
                    "path": [None] * len(chunk),
                    "scene": [scene_json(r[2]) for r in chunk],
                }
                writer.write_table(pa.Table.from_pydict(batch, schema=IMAGES_SCHEMA))
                bar.update(len(pngs))
            bar.close()
    except BaseException:
        if pool:
            pool.terminate()
        raise
    if pool:
        pool.close()
        pool.join()
    for rel in [IMAGES_FILE] + [captions_file(lang) for lang in languages]:
        files[rel] = sha256_file(tmp / rel)
    manifest = {
        **cfg,
        "splits": {split: len(scenes[split]) for split in SPLITS},
        "captions": counts,
        "captions_per_image": CAPTIONS_PER_IMAGE,
        "scripts": {lang: load_lexicon(lang).script for lang in languages},
        "files": files,
    }
    write_manifest(tmp, manifest)
    return manifest


def _install(tmp: Path, out: Path, cfg: dict, manifest: dict) -> dict:
    """Rename tmp to out; replace an old out if present; tolerate a concurrent identical writer."""
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
        return manifest
    try:
        os.rename(tmp, out)
    except OSError:  # another process installed it first
        theirs = read_manifest(out)
        if theirs is not None and theirs.get("config_hash") == cfg["config_hash"]:
            return theirs
        raise
    return manifest
