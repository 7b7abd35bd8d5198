"""Export a run's multilingual model after task N as a folder that open_clip loads on its own.

The folder holds:

- ``open_clip_config.json`` + ``open_clip_model.safetensors``: the whole CLIP (the base model's frozen image tower
  and text transformer, the learned token embedding of the grown vocabulary), loadable with
  ``open_clip.create_model_and_transforms("local-dir:<folder>")``. The text config has the grown ``vocab_size``,
  ``pool_type="eos"`` and the EOS id: open_clip's default argmax pooling breaks once ids grow past EOS (§1.3);
- ``tokenizer.json``: the grown tokenizer as a `tokenizers` JSON, with padding and truncation to the context
  length already set, so ``Tokenizer.from_file(...).encode_batch(texts)`` gives the model's input ids;
- ``cll_ray_export.json``: what was exported (run, method, task, languages, vocabulary, scores);
- ``README.md``: a model card with the languages and their test scores after that task.

Methods whose student is the text tower with a learned token embedding (CLL-CLIP, TEIR, oEWC, ER, DER, LwF,
joint) export as above. ``mla`` models export the base CLIP untouched (English's path, as above with CLIP's own
tokenizer) plus the language acquisition encoder: ``mla_encoder.safetensors`` (the multilingual table, the
linear map, every learned language's acquirers) and ``mla_tokenizer.json`` (its WordPiece); ``cll_ray.exported``
routes a query by its language. Other methods (per-language LoRA/adapters, a fine-tuned tower) are refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from cll_ray.base_model import BaseModel
from cll_ray.checkpoint import CHECKPOINT_FILE, load_checkpoint, task_checkpoint_name
from cll_ray.io import atomic_dir, check_replaceable
from cll_ray.model import build_clip, model_config
from cll_ray.tokenization import ClipBPE
from cll_ray.wordpiece import WordPieceVocab, tokenizer_from_json

EXPORT_FORMAT = "cll-ray-export/1"
EXPORT_INFO = "cll_ray_export.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
MLA_WEIGHTS_FILE = "mla_encoder.safetensors"
MLA_TOKENIZER_FILE = "mla_tokenizer.json"
# method kinds whose learned state is the token embedding alone (what the open_clip folder holds)
EMBEDDING_ONLY_KINDS = ("cll_clip", "oewc", "er", "der", "lwf", "joint")
CARD_METRICS = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")


def resolve_method(run_dir: Path, method: str | None) -> str:
    methods = sorted(p.parent.name for p in run_dir.glob("*/checkpoints"))
    if not methods:
        raise FileNotFoundError(f"{run_dir}: no <method>/checkpoints/ folder; not a cll-ray run directory")
    if method is None:
        if len(methods) > 1:
            raise ValueError(f"{run_dir}: several methods ({', '.join(methods)}); pick one with --method")
        return methods[0]
    if method not in methods:
        raise ValueError(f"{run_dir}: no method {method!r}; it has {', '.join(methods)}")
    return method


def read_results(run_dir: Path, method: str) -> list[dict]:
    path = run_dir / method / "results.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def exported_tokenizer(tokenizer: ClipBPE | WordPieceVocab, context_length: int) -> Tokenizer:
    """The tokenizer with the student's input convention: BOS ... EOS (MLA: [CLS] ... [SEP]), truncated to keep
    EOS, padded with id 0 (CLIP) or [PAD] (MLA)."""
    tok = Tokenizer.from_str(tokenizer.to_json())
    tok.enable_truncation(max_length=context_length)  # counts BOS/EOS, so EOS is kept as ClipBPE.encode does
    pad_id = getattr(tokenizer, "pad_id", 0)
    pad_token = next(t for t, i in tokenizer.vocab.items() if i == pad_id)
    tok.enable_padding(length=context_length, pad_id=pad_id, pad_token=pad_token)
    return tok


def mla_encoder_weights(method_state: dict, embedding: torch.Tensor) -> dict[str, torch.Tensor]:
    """The acquisition encoder as flat tensors: ``table``, ``input_map.*``, ``acquirers.<lang>.<layer>.*``."""
    weights = {"table": embedding, **{f"input_map.{k}": v for k, v in method_state["input_map"].items()}}
    for layer, site in enumerate(method_state["sites"]):
        weights.update({f"acquirers.{k.split('.', 1)[0]}.{layer}.{k.split('.', 1)[1]}": v for k, v in site.items()})
    return weights


def model_card(info: dict, row: dict | None) -> str:
    """README.md: what the model is, how to load it, and its scores per language after the exported task."""
    langs = info["languages"]
    lines = [
        f"# CLL-CLIP multilingual CLIP ({info['method']}, after task {info['task']}: {info['lang']})", "",
        f"A CLIP ({info['arch']}) whose text tower learned {len(langs)} language(s) one after another with "
        f"cll-ray ({info['method']}): {', '.join(langs)}. " + (
            "English keeps the base CLIP's own path; the other languages go through MLA's language acquisition "
            "encoder (mla_encoder.safetensors, mla_tokenizer.json: a multilingual token table, a linear map, "
            "per-language acquirers in the frozen tower), chosen by the text's language." if "mla" in info else
            "Only the token embedding was trained; the image tower, the text transformer and the projection are "
            "the base model's."), "",
        f"- vocabulary: {info['vocab_size']} tokens ({info['base_vocab_size']} in the base model), "
        f"EOS id {info['eos_id']}, context length {info['context_length']}",
        f"- base model fingerprint: `{info['base_fingerprint'][:16]}`", f"- run: `{info['run_dir']}`", "",
        "## Use", "", "With PATH this folder:", "", "```python", "import open_clip, torch", "from tokenizers import Tokenizer", "",
        'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:PATH")',
        'tok = Tokenizer.from_file("PATH/tokenizer.json")',
        'ids = torch.tensor([e.ids for e in tok.encode_batch(["un chat sur un canapé"])])',
        "text_features = model.encode_text(ids, normalize=True)", "```", "",
        "or `cll-ray embed --model PATH --lang fr \"un chat\"` and "
        "`cll-ray search --model PATH --images FOLDER \"un chat\"`.", "",
    ]
    if row is None:
        lines.append("No test scores: the run's results.jsonl has no row for this task.")
        return "\n".join(lines) + "\n"
    scores, zero = row["scores"], row.get("zero_shot", {})
    lines += ["## Test retrieval after this task (Recall@K, %)", "",
              "| lang | " + " | ".join(CARD_METRICS) + " | zero-shot t2i_r1 |",
              "|---" * (len(CARD_METRICS) + 2) + "|"]
    zs = zero.get("t2i_r1", [])
    for j, lang in enumerate(row["languages"]):
        zero_cell = f"{zs[j]:.1f}" if j < len(zs) else "–"
        lines.append(f"| {lang} | " + " | ".join(f"{scores[m][j]:.1f}" for m in CARD_METRICS) + f" | {zero_cell} |")
    cl = row.get("cl", {}).get("t2i_r1", {})
    if cl:
        lines += ["", "Continual-learning summary (t2i R@1): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in cl.items() if isinstance(v, (int, float)))]
    return "\n".join(lines) + "\n"


def _languages(records: list[dict], cfg) -> list[str]:
    """The languages the model knows: each task's (a joint task's are the run's order)."""
    joint = [r for r in records if r["lang"] == "joint"]
    return list(cfg.run.languages) if joint else [r["lang"] for r in records]


def export_model(run_dir: str | Path, out: str | Path, task: int | None = None, method: str | None = None) -> dict:
    """Write the model after ``task`` (1-based; default the last checkpointed) to ``out``; returns its info."""
    run_dir = Path(run_dir).expanduser().resolve()
    check_replaceable(out, EXPORT_INFO, "an exported model")  # an earlier export is replaced, nothing else
    method = resolve_method(run_dir, method)
    folders = sorted((run_dir / method / "checkpoints").glob(f"task*/{CHECKPOINT_FILE}"))
    if not folders and (run_dir / "orders").is_dir():
        raise ValueError(f"{run_dir}: a run of several task orders (--orders) compares methods; export the model "
                         "of a run with one order (cll-ray run --order ...)")
    if not folders:
        raise FileNotFoundError(f"{run_dir / method / 'checkpoints'}: no task checkpoint yet")
    task = task or len(folders)
    matches = [f for f in folders if f.parent.name.startswith(task_checkpoint_name(task - 1, ""))]
    if task < 1 or not matches:
        raise ValueError(f"{run_dir}: no checkpoint of task {task}; it has "
                         f"{', '.join(f.parent.name for f in folders)} (task N is 1-based)")
    state = load_checkpoint(matches[0])
    base = BaseModel.load(run_dir / "base")
    if state["base_fingerprint"] != base.fingerprint:
        raise ValueError(f"{matches[0]}: trained from another base model than {run_dir / 'base'}")
    kind = state["config"].method.kind
    if kind not in (*EMBEDDING_ONLY_KINDS, "mla", "mla_joint"):
        raise ValueError(f"{matches[0]}: method kind {kind!r} learns more than a token embedding (per-language "
                         f"modules or the tower); export supports {', '.join(EMBEDDING_ONLY_KINDS)}, mla, mla_joint")
    learner = state["learner"]
    mla = kind in ("mla", "mla_joint")
    learned = tokenizer_from_json(learner["tokenizer"])
    # 1. the base CLIP with the grown, learned token embedding; for MLA the base CLIP itself (English's path)
    tokenizer = base.tokenizer if mla else learned
    clip = build_clip(base.arch, tokenizer.size, tokenizer.eos_id)
    clip.load_state_dict(base.clip.state_dict() if mla else
                         dict(base.clip.state_dict(), **{"token_embedding.weight": learner["embedding"]["weight"]}))
    records = learner["tasks"]
    rows = {r["task"]: r for r in read_results(run_dir, method)}
    info = {
        "format": EXPORT_FORMAT, "run_dir": str(run_dir), "method": method, "task": task,
        "lang": records[-1]["lang"], "languages": _languages(records, state["config"]), "arch": base.arch,
        "vocab_size": learned.size, "base_vocab_size": base.tokenizer.size, "eos_id": tokenizer.eos_id,
        "context_length": base.context_length, "base_fingerprint": base.fingerprint,
        "scores": (rows.get(task - 1) or {}).get("scores"),
    }
    if mla:
        acquired = list(learner["method"].get("languages", []))  # languages with acquirers (not English)
        down = learner["method"]["sites"][0][f"{acquired[0]}.down.weight"] if acquired else None
        info["mla"] = {"languages": acquired, "sep_id": learned.eos_id, "pad_id": learned.pad_id,
                       "embedding_dim": int(learner["embedding"]["weight"].shape[1]),
                       "acquirer_width": 0 if down is None else int(down.shape[0])}
    cfg = getattr(base.clip.visual, "preprocess_cfg", {}) or {}
    preprocess = {"mean": list(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                  "std": list(cfg.get("std", open_clip.OPENAI_DATASET_STD)), "interpolation": "bicubic"}
    # 2. written to a temporary folder, renamed into place once complete
    with atomic_dir(out) as tmp:
        save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(tmp / WEIGHTS_FILE))
        (tmp / WEIGHTS_FILE).chmod(0o644)  # safetensors writes it private; the export is an ordinary folder
        config = {"model_cfg": model_config(base.arch, tokenizer.size, tokenizer.eos_id), "preprocess_cfg": preprocess}
        (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        exported_tokenizer(tokenizer, base.context_length).save(str(tmp / "tokenizer.json"))
        if mla:
            save_file({k: v.contiguous() for k, v in mla_encoder_weights(learner["method"],
                                                                           learner["embedding"]["weight"]).items()},
                      str(tmp / MLA_WEIGHTS_FILE))
            (tmp / MLA_WEIGHTS_FILE).chmod(0o644)
            exported_tokenizer(learned, base.context_length).save(str(tmp / MLA_TOKENIZER_FILE))
        (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
        (tmp / "README.md").write_text(model_card(info, rows.get(task - 1)), encoding="utf-8")
    return info
