"""Per-language statistics of a written SynthXM (or any canonical-layout) dataset."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..layout import captions_file
from .captions import load_lexicon
from .generate import read_manifest

# CLIP's pre-tokenizer: lowercase, then this regex (open_clip SimpleTokenizer / HF CLIPTokenizer).
CLIP_PRETOKENIZE = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
SHARED_SPLITS = ("train", "val", "test")


def _pretokenizer():
    from tokenizers import Regex
    from tokenizers.pre_tokenizers import Split

    return Split(Regex(CLIP_PRETOKENIZE), behavior="removed", invert=True)


def distinct_pretokens(captions) -> set[str]:
    """Distinct CLIP pre-tokens of a collection of captions."""
    split = _pretokenizer()
    out: set[str] = set()
    for text in captions:
        out.update(tok for tok, _ in split.pre_tokenize_str(text.lower()))
    return out


def synthxm_summary(dataset_dir) -> list[dict]:
    """One row per language: lang, script, images, captions, captions_per_image (over the shared
    train/val/test splits, so English's pretrain rows are not counted), distinct_tokens (distinct CLIP
    pre-tokens of the train captions) and overlap_with_en (share of those also among English's)."""
    root = Path(dataset_dir)
    manifest = read_manifest(root) or {}
    languages = manifest.get("languages") or sorted(
        p.name.split("=", 1)[1] for p in (root / "captions").glob("lang=*")
    )
    scripts = manifest.get("scripts", {})
    tables = {}
    for lang in languages:
        t = pq.read_table(root / captions_file(lang), columns=["image_id", "split", "caption"])
        tables[lang] = t.filter(pc.is_in(t["split"], value_set=pa.array(SHARED_SPLITS, pa.string())))
    train_tokens = {
        lang: distinct_pretokens(t.filter(pc.equal(t["split"], "train"))["caption"].to_pylist())
        for lang, t in tables.items()
    }
    en_tokens = train_tokens.get("en", set())
    rows = []
    for lang, t in tables.items():
        n_img = len(pc.unique(t["image_id"]))
        toks = train_tokens[lang]
        script = scripts.get(lang)
        if script is None:
            try:
                script = load_lexicon(lang).script
            except FileNotFoundError:
                script = "?"
        rows.append(
            {
                "lang": lang,
                "script": script,
                "images": n_img,
                "captions": t.num_rows,
                "captions_per_image": round(t.num_rows / max(n_img, 1), 3),
                "distinct_tokens": len(toks),
                "overlap_with_en": round(len(toks & en_tokens) / max(len(toks), 1), 3),
            }
        )
    return rows


def format_summary(rows: list[dict]) -> str:
    """A plain-text, column-aligned table of `synthxm_summary` rows."""
    if not rows:
        return "(no languages)"
    cols = list(rows[0])
    cells = [[str(c) for c in cols]] + [
        [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    numeric = [all(isinstance(r[c], (int, float)) for r in rows) for c in cols]
    lines = []
    for k, row in enumerate(cells):
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(row, widths, numeric)]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
