"""CLIP-style byte-level BPE tokenizers, and growing them one language at a time (method.md §1.4).

Every tokenizer here is a `tokenizers.Tokenizer` with CLIP's normalizer (NFC, whitespace collapse, lowercase),
CLIP's pre-tokenizer regex followed by byte-level mapping, a BPE model with the ``</w>`` end-of-word suffix, and
``<|startoftext|> … <|endoftext|>`` around every sequence. Growth appends a language's unseen tokens in that
language tokenizer's id order and its unseen merges after all existing merges, so CLIP's (then earlier tasks')
merges keep priority.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# CLIP's pre-tokenizer (HF CLIPConverter): contractions, letter runs, single digits, punctuation runs.
CLIP_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
END_OF_WORD = "</w>"


def _configure(tok: Tokenizer, bos_id: int, eos_id: int) -> Tokenizer:
    """Attach CLIP's normalizer, pre-tokenizer, decoder and BOS/EOS post-processor."""
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(
        (EOS_TOKEN, eos_id), (BOS_TOKEN, bos_id), trim_offsets=False, add_prefix_space=False
    )
    return tok


def _bpe(vocab: dict[str, int], merges: list[tuple[str, str]]) -> models.BPE:
    return models.BPE(
        vocab=vocab,
        merges=merges,
        continuing_subword_prefix="",
        end_of_word_suffix=END_OF_WORD,
        unk_token=EOS_TOKEN,  # CLIP: UNK = PAD = EOS; byte-level BPE never needs it in practice
        fuse_unk=False,
    )


def _new_trainable() -> Tokenizer:
    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix=END_OF_WORD, unk_token=EOS_TOKEN))
    return _configure(tok, 0, 1)


@dataclass
class ClipBPE:
    """A CLIP-style BPE vocabulary: ``vocab`` (token → id, ids 0..V-1 dense) and ordered ``merges``."""

    vocab: dict[str, int]
    merges: list[tuple[str, str]]

    def __post_init__(self) -> None:
        ids = sorted(self.vocab.values())
        if ids != list(range(len(ids))):
            raise ValueError("vocabulary ids must be dense 0..V-1")
        for special in (BOS_TOKEN, EOS_TOKEN):
            if special not in self.vocab:
                raise ValueError(f"vocabulary lacks the special token {special}")
        self._tokenizer: Tokenizer | None = None

    # ---- identity -------------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self.vocab)

    @property
    def bos_id(self) -> int:
        return self.vocab[BOS_TOKEN]

    @property
    def eos_id(self) -> int:
        return self.vocab[EOS_TOKEN]

    @property
    def special_ids(self) -> list[int]:
        return [self.bos_id, self.eos_id]

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = _configure(Tokenizer(_bpe(dict(self.vocab), list(self.merges))), self.bos_id, self.eos_id)
        return self._tokenizer

    # ---- encoding -------------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], context_length: int, pad_id: int = 0) -> np.ndarray:
        """Token ids (N, context_length) with BOS … EOS, truncated so that EOS is kept, padded with ``pad_id``."""
        out = np.full((len(texts), context_length), pad_id, dtype=np.int64)
        for row, enc in enumerate(self.tokenizer.encode_batch(list(texts))):
            ids = enc.ids
            if len(ids) > context_length:  # keep BOS … EOS, as CLIP's truncation does
                ids = ids[: context_length - 1] + [self.eos_id]
            out[row, : len(ids)] = ids
        return out

    def token_set(self, texts: Iterable[str]) -> np.ndarray:
        """Sorted distinct ids of ``texts`` without BOS/EOS and without truncation (the task set T_t, §2.2b)."""
        seen: set[int] = set()
        for enc in self.tokenizer.encode_batch(list(texts), add_special_tokens=False):
            seen.update(enc.ids)
        return np.array(sorted(seen), dtype=np.int64)

    def prefix(self, vocab_size: int, num_merges: int) -> ClipBPE:
        """The tokenizer this one was grown from: growth only appends tokens and merges, so it is a prefix."""
        vocab = {t: i for t, i in self.vocab.items() if i < vocab_size}
        return ClipBPE(vocab=vocab, merges=self.merges[:num_merges])

    # ---- persistence ----------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The full `tokenizers` JSON (loadable with ``tokenizers.Tokenizer.from_str``)."""
        return self.tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str) -> ClipBPE:
        model = json.loads(text)["model"]
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return cls(vocab=dict(model["vocab"]), merges=merges)

    @classmethod
    def from_clip_bpe_file(cls, path: str | None = None) -> ClipBPE:
        """OpenAI CLIP's 49,408-token vocabulary from the BPE merges file that open_clip's wheel ships."""
        if path is None:
            from open_clip.tokenizer import default_bpe

            path = default_bpe()
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # as open_clip's SimpleTokenizer
        alphabet = _alphabet()
        tokens = alphabet + [a + END_OF_WORD for a in alphabet] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
        return cls(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)


# The language rule's batches (the reference's ``batch_iterator``): a final partial batch is never seen.
REFERENCE_BATCH = 64
# Bumped whenever what ``train_bpe`` returns for the same input changes (it keys the tokenizer cache).
TRAINING_RULE_VERSION = 2


def _alphabet() -> list[str]:
    """The 256 byte symbols in CLIP's order, which is also code-point order (the trainer's alphabet order)."""
    from open_clip.tokenizer import bytes_to_unicode

    return list(bytes_to_unicode().values())


def reference_lines(texts: Iterable[str], batch_size: int = REFERENCE_BATCH) -> list[str]:
    """The lines the reference trains a language's BPE on: whole batches of ``batch_size``, the rest dropped."""
    lines = list(texts)
    return lines[: len(lines) - len(lines) % batch_size]


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 1, *, base: bool = False,
              batch_lines: int = REFERENCE_BATCH) -> ClipBPE:
    """Train a CLIP-style BPE on ``texts``: specials, then single symbols, then merged tokens in merge order.

    The language rule (default; continual tasks, joint training) is the reference's ``train_new_from_iterator``
    on CLIP's tokenizer (method.md §1.4): no initial alphabet (transformers passes one only to a plain
    ``ByteLevel`` pre-tokenizer, and CLIP's is a ``Sequence``), so ``vocab_size`` = 2 specials + the byte
    symbols seen (both forms) + the merged tokens; and only whole batches of ``batch_lines`` (64) lines are fed. ``base=True`` is
    the rule the shipped English base was trained with (``pretrain``): all 256 bytes counted against the size,
    every line used, and every byte in both forms in the vocabulary, so the base tokenizer alone has no OOV.
    """
    lines = list(texts) if base else reference_lines(texts, batch_lines)
    tok = _new_trainable()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if base else [],
        end_of_word_suffix=END_OF_WORD,
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    trained = ClipBPE.from_json(tok.to_str())
    return ClipBPE(vocab=_canonical_vocab(trained, every_byte=base), merges=trained.merges)


def _canonical_vocab(trained: ClipBPE, every_byte: bool) -> dict[str, int]:
    """The trainer's vocabulary with its ids made a pure function of the data: specials, the byte symbols in
    CLIP's order, the same with "</w>", then merged tokens in merge order (first occurrence).

    The trainer numbers the "</w>" forms in the hash order of the words (it changes from process to process);
    the rest already follows this layout. ``every_byte`` adds the bytes the data lacks, in both forms (CLIP's
    layout). Growth appends only tokens the current vocabulary lacks, in this order; every vocabulary grown
    from CLIP or the shipped base holds all byte symbols, so the appended tokens are the merged ones in merge
    order, as in the reference.
    """
    alphabet = _alphabet()
    singles = alphabet + [a + END_OF_WORD for a in alphabet]
    if not every_byte:
        singles = [t for t in singles if t in trained.vocab]
    tokens = [BOS_TOKEN, EOS_TOKEN] + singles + ["".join(m) for m in trained.merges]
    vocab: dict[str, int] = {}
    for token in tokens + sorted(set(trained.vocab) - set(tokens)):
        vocab.setdefault(token, len(vocab))
    return vocab


@dataclass(frozen=True)
class GrowthStats:
    """What one language added to the vocabulary (the reference's ``combine_tokenizers_info.json``)."""

    lang: str
    old_size: int
    new_size: int
    language_vocab: int
    num_overlap: int
    num_unique: int
    merges_added: int

    @property
    def overlap_ratio(self) -> float:
        return self.num_overlap / max(self.language_vocab, 1)


def grow(current: ClipBPE, language: ClipBPE, lang: str = "") -> tuple[ClipBPE, GrowthStats]:
    """Combine ``current`` with a language tokenizer (reference ``combine_tokenizers``, new_merges_first=False).

    1. Tokens of ``language`` not in ``current`` get the next free ids, in ``language``'s own id order.
    2. ``language``'s merges not already present are appended after every existing merge.
    """
    vocab = dict(current.vocab)
    overlap = 0
    for token, _ in sorted(language.vocab.items(), key=lambda kv: kv[1]):
        if token in vocab:
            overlap += 1
        else:
            vocab[token] = len(vocab)
    existing = set(current.merges)
    added = [m for m in language.merges if m not in existing]
    grown = ClipBPE(vocab=vocab, merges=list(current.merges) + added)
    stats = GrowthStats(
        lang=lang,
        old_size=current.size,
        new_size=grown.size,
        language_vocab=language.size,
        num_overlap=overlap,
        num_unique=grown.size - current.size,
        merges_added=len(added),
    )
    return grown, stats


def training_key(texts: Sequence[str], vocab_size: int, batch_lines: int = REFERENCE_BATCH) -> str:
    """What a language BPE is a function of: the exact lines, the size, the training rule and the trainer."""
    import hashlib

    import tokenizers

    lines = hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode("utf-8")).hexdigest()
    payload = {"captions": lines, "vocab_size": int(vocab_size), "rule": TRAINING_RULE_VERSION,
               "tokenizers": tokenizers.__version__}
    if batch_lines != REFERENCE_BATCH:  # the reference's 64 keeps the keys tokenizers were cached under
        payload["batch_lines"] = int(batch_lines)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def train_bpe_cached(texts: Sequence[str], vocab_size: int, cache_dir: str | Path | None,
                     batch_lines: int = REFERENCE_BATCH) -> ClipBPE:
    """``train_bpe`` (language rule), trained once per (captions, size, rule) and reused from ``cache_dir``.

    The trainer breaks ties between equally frequent pairs in hash order, which changes from process to
    process, so the same captions can give another merge order in another run. The first tokenizer trained
    for a key is kept (``<cache_dir>/<key>.json``, written atomically) and every later run, resumed run and
    task order reuses it byte for byte. A language's BPE does not depend on the tokenizer it is grown into,
    so one language has one BPE in every task order.
    """
    if cache_dir is None:
        return train_bpe(texts, vocab_size, batch_lines=batch_lines)
    path = Path(cache_dir) / f"{training_key(texts, vocab_size, batch_lines)}.json"
    if not path.exists():
        _publish_once(path, train_bpe(texts, vocab_size, batch_lines=batch_lines).to_json())
    try:  # always the stored one: of two processes that trained at once, the first to publish wins for both
        return ClipBPE.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a tokenizer this cache wrote ({e}); delete the file to retrain") from e


def _publish_once(path: Path, text: str) -> None:
    """Write ``path`` atomically unless it exists: a hard link never replaces a file another process wrote."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: replace (a rename is still atomic)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
