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
        from open_clip.tokenizer import bytes_to_unicode

        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # as open_clip's SimpleTokenizer
        alphabet = list(bytes_to_unicode().values())
        tokens = alphabet + [a + END_OF_WORD for a in alphabet] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
        return cls(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 1) -> ClipBPE:
    """Train a CLIP-style BPE on ``texts`` (specials first, then the byte alphabet, then merges in learned order)."""
    tok = _new_trainable()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix=END_OF_WORD,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    trained = ClipBPE.from_json(tok.to_str())
    return ClipBPE(vocab=_canonical_vocab(trained), merges=trained.merges)


def _canonical_vocab(trained: ClipBPE) -> dict[str, int]:
    """CLIP's layout: specials, every byte, every byte + "</w>", then merged tokens in merge order.

    The trainer's own ids for single symbols follow a hash order that changes from run to run; this makes a
    trained tokenizer a pure function of its data. Holding every byte in both forms, as CLIP's vocabulary does,
    also means no text is ever out of vocabulary (the trainer only adds the "</w>" forms it saw).
    """
    from open_clip.tokenizer import bytes_to_unicode

    alphabet = list(bytes_to_unicode().values())
    tokens = [BOS_TOKEN, EOS_TOKEN] + alphabet + [a + END_OF_WORD for a in alphabet]
    tokens += ["".join(m) for m in trained.merges]
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
