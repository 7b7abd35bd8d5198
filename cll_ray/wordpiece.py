"""MLA's multilingual vocabulary (mla.md §1.2): a BERT-style WordPiece, grown one language at a time.

The authors tokenise non-English text with M-BERT's WordPiece. Here the vocabulary is either M-BERT's, read from a
local directory (``vocab.txt``; ``method.mbert``), or built per language with the `tokenizers` WordPiece trainer on
the language's training captions and appended to the vocabulary so far (unseen tokens get the next ids, in the
language vocabulary's id order; old ids never change). Every sequence is ``[CLS] … [SEP]``, truncated so that
``[SEP]`` (the pooled position) is kept, padded with ``[PAD]``.

``WordPieceVocab`` offers the interface the learner uses of ``ClipBPE`` (size, special ids, encode, token sets,
prefixes of a growth plan, JSON), so growth plans, TEIR's task sets and checkpoints work unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from cll_ray.tokenization import ClipBPE, GrowthStats

PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
SPECIALS = (PAD, UNK, CLS, SEP)  # ids 0-3 of a vocabulary built here (M-BERT's own are 0, 100, 101, 102)
CONTINUATION = "##"


@dataclass
class WordPieceVocab:
    """A WordPiece vocabulary (token → id, dense 0..V-1) with BERT's normalisation switches."""

    vocab: dict[str, int]
    lowercase: bool = True
    strip_accents: bool = False  # kept: accents carry meaning in most of the languages learned here
    _tokenizer: Tokenizer | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if sorted(self.vocab.values()) != list(range(len(self.vocab))):
            raise ValueError("vocabulary ids must be dense 0..V-1")
        missing = [t for t in SPECIALS if t not in self.vocab]
        if missing:
            raise ValueError(f"WordPiece vocabulary lacks the special token(s) {', '.join(missing)}")

    # ---- identity (the names ClipBPE uses: BOS = [CLS], EOS = [SEP], the pooled token) -------------------------
    @property
    def size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return self.vocab[PAD]

    @property
    def bos_id(self) -> int:
        return self.vocab[CLS]

    @property
    def eos_id(self) -> int:
        return self.vocab[SEP]

    @property
    def special_ids(self) -> list[int]:
        return [self.vocab[t] for t in SPECIALS]

    @property
    def merges(self) -> list:
        return []  # WordPiece has none; growth plans count merges for ClipBPE only

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = _configure(
                Tokenizer(models.WordPiece(vocab=dict(self.vocab), unk_token=UNK, max_input_chars_per_word=100)),
                self.lowercase, self.strip_accents, self.bos_id, self.eos_id)
        return self._tokenizer

    # ---- encoding -------------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], context_length: int, pad_id: int | None = None) -> np.ndarray:
        """Token ids (N, context_length): [CLS] … [SEP], truncated so that [SEP] is kept, padded with [PAD]."""
        pad = self.pad_id if pad_id is None else pad_id
        out = np.full((len(texts), context_length), pad, dtype=np.int64)
        for row, enc in enumerate(self.tokenizer.encode_batch(list(texts))):
            ids = enc.ids
            if len(ids) > context_length:
                ids = ids[: context_length - 1] + [self.eos_id]
            out[row, : len(ids)] = ids
        return out

    def token_set(self, texts: Iterable[str]) -> np.ndarray:
        """Sorted distinct ids of ``texts`` without [CLS]/[SEP] and without truncation (TEIR's T_t, §2.2b)."""
        seen: set[int] = set()
        for enc in self.tokenizer.encode_batch(list(texts), add_special_tokens=False):
            seen.update(enc.ids)
        return np.array(sorted(seen), dtype=np.int64)

    def prefix(self, vocab_size: int, num_merges: int = 0) -> WordPieceVocab:
        """The vocabulary this one was grown from (growth only appends tokens)."""
        return WordPieceVocab({t: i for t, i in self.vocab.items() if i < vocab_size}, self.lowercase,
                              self.strip_accents)

    # ---- persistence ----------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str) -> WordPieceVocab:
        data = json.loads(text)
        norm = data.get("normalizer") or {}
        return cls(vocab=dict(data["model"]["vocab"]), lowercase=bool(norm.get("lowercase", True)),
                   strip_accents=bool(norm.get("strip_accents", False)))


def _configure(tok: Tokenizer, lowercase: bool, strip_accents: bool, cls_id: int, sep_id: int) -> Tokenizer:
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=strip_accents, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=CONTINUATION)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", special_tokens=[(CLS, cls_id), (SEP, sep_id)])
    return tok


def specials_only(lowercase: bool = True, strip_accents: bool = False) -> WordPieceVocab:
    """The vocabulary before any language: the four specials."""
    return WordPieceVocab({t: i for i, t in enumerate(SPECIALS)}, lowercase, strip_accents)


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True,
                    strip_accents: bool = False) -> WordPieceVocab:
    """A WordPiece on ``texts`` (the `tokenizers` trainer), a pure function of the texts.

    The trainer numbers the ``##c`` forms of characters in the hash order of its word counts, which changes from
    process to process, and breaks ties between equally frequent merges by those numbers. Handing it every
    ``##c`` of the texts, sorted, up front (as special tokens: they get the first ids) makes the merges, and so
    the vocabulary, the same in every process; a growth plan computed by the driver then matches a resumed run.
    Ids: specials, single characters (sorted), then the trainer's other tokens in its order.
    """
    texts = list(texts)
    tok = _configure(Tokenizer(models.WordPiece(unk_token=UNK)), lowercase, strip_accents, 2, 3)
    inner: set[str] = set()
    for text in texts:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)):
            inner.update(word[1:])
    continuations = [CONTINUATION + c for c in sorted(inner)]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS) + continuations,
                                        show_progress=False, continuing_subword_prefix=CONTINUATION)
    tok.train_from_iterator(texts, trainer=trainer)
    trained = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    rest = [t for t, _ in trained if t not in SPECIALS]

    def single(t: str) -> bool:
        return len(t.removeprefix(CONTINUATION)) == 1

    tokens = list(SPECIALS) + sorted(t for t in rest if single(t)) + [t for t in rest if not single(t)]
    return WordPieceVocab({t: i for i, t in enumerate(tokens)}, lowercase, strip_accents)


def grow_wordpiece(current: WordPieceVocab, language: WordPieceVocab, lang: str = "") -> tuple[WordPieceVocab, GrowthStats]:
    """Append ``language``'s tokens missing from ``current`` (in ``language``'s id order); old ids are kept."""
    vocab, overlap = dict(current.vocab), 0
    for token, _ in sorted(language.vocab.items(), key=lambda kv: kv[1]):
        if token in vocab:
            overlap += 1
        else:
            vocab[token] = len(vocab)
    grown = WordPieceVocab(vocab, current.lowercase, current.strip_accents)
    return grown, GrowthStats(lang=lang, old_size=current.size, new_size=grown.size, language_vocab=language.size,
                              num_overlap=overlap, num_unique=grown.size - current.size, merges_added=0)


def no_growth(current, lang: str) -> tuple[object, GrowthStats]:
    """A task that adds nothing to the vocabulary (MLA's English; a fixed M-BERT vocabulary)."""
    return current, GrowthStats(lang=lang, old_size=current.size, new_size=current.size, language_vocab=0,
                                num_overlap=0, num_unique=0, merges_added=0)


def tokenizer_from_json(text: str) -> ClipBPE | WordPieceVocab:
    """A learner's tokenizer from its `tokenizers` JSON: CLIP-style BPE or MLA's WordPiece."""
    kind = json.loads(text).get("model", {}).get("type")
    if kind == "WordPiece":
        return WordPieceVocab.from_json(text)
    if kind == "BPE":
        return ClipBPE.from_json(text)
    raise ValueError(f"tokenizer JSON: model type {kind!r}; expected 'BPE' (CLIP) or 'WordPiece' (MLA)")


def load_mbert(directory: str | Path):
    """A local M-BERT directory's vocabulary and word embeddings (V, 768), through transformers, local files only.

    The directory holds ``vocab.txt`` (one token per line, id = line number) and a ``BertModel`` saved with
    ``save_pretrained`` (config.json + weights). Nothing is downloaded.
    """
    directory = Path(directory).expanduser()
    vocab_file = directory / "vocab.txt"
    if not vocab_file.is_file():
        raise FileNotFoundError(f"method.mbert: {vocab_file} is missing (a local M-BERT directory holds vocab.txt, "
                                "config.json and its weights)")
    vocab: dict[str, int] = {}
    lines = vocab_file.read_text(encoding="utf-8").split("\n")
    for line_no, line in enumerate(lines[:-1] if lines[-1] == "" else lines):
        if line in vocab:
            raise ValueError(f"{vocab_file}: line {line_no + 1}: token {line!r} repeats line {vocab[line] + 1}")
        vocab[line] = line_no
    lowercase, strip = True, None
    config_file = directory / "tokenizer_config.json"
    if config_file.is_file():
        cfg = json.loads(config_file.read_text(encoding="utf-8"))
        lowercase, strip = bool(cfg.get("do_lower_case", True)), cfg.get("strip_accents")
    words = _mbert_word_embeddings(directory)
    if words.shape[0] != len(vocab):
        raise ValueError(f"{directory}: the model has {words.shape[0]} word embeddings but vocab.txt has "
                         f"{len(vocab)} tokens")
    # BERT strips accents when it lowercases unless told otherwise (HF BasicTokenizer)
    return WordPieceVocab(vocab, lowercase, lowercase if strip is None else bool(strip)), words


def _mbert_word_embeddings(directory: Path):
    from transformers import BertModel  # only for this optional path

    try:
        model = BertModel.from_pretrained(str(directory), local_files_only=True)
    except OSError as e:
        raise FileNotFoundError(f"method.mbert: {directory} holds no BertModel saved with save_pretrained "
                                f"(config.json + weights): {e}") from None
    return model.get_input_embeddings().weight.detach().float().clone()
