"""Stage ``vocab`` (train or adopt a tokenizer), the one tokenizer loader of the later stages
(``load_tokenizer``: a WordPiece vocab.txt, a Hugging Face tokenizer.json or tokenizer folder) and the
fast batch tokenizer of stage ``hdf5``.

Tokenization is HF ``tokenizers`` (Rust) WordPiece with BERT's normalizer/pre-tokenizer. BERT's
pre-tokenizer splits on whitespace first, so a sentence's ids are the concatenation of the ids of its
whitespace-separated words (for text cleaned by ``text.clean_text``, which the format stage applies
and ``WordTokenizer`` re-applies). ``WordTokenizer`` therefore encodes each *distinct* word once
(a bounded cache) and expands with numpy: about 3x faster than ``encode_batch`` on sentences,
because per-input overhead, not WordPiece, dominates there.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from bundle.atomic import atomic_path, atomic_write_text, tmp_name
from bundle.digest import ROLE_TOKENS as BUNDLE_ROLE_TOKENS
from bundle.digest import TOKENIZER_JSON, VOCAB_TXT, VocabError, read_vocab, tokenizer_file

from .config import VocabConfig
from .manifest import ConfigError, DataPrepError, file_sha256, finished_manifest, invalidate, is_complete, read_json, remove_temps, write_manifest
from .text import clean_text

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
ROLE_TOKENS = {role: names for role, names in BUNDLE_ROLE_TOKENS.items() if role != "unk"}
BYTE_LEVEL_SYMBOLS = 256
"""A byte-level BPE starts from one symbol per byte value: its vocabulary cannot be smaller than these + the specials."""
MIN_BPE_VOCAB = BYTE_LEVEL_SYMBOLS + len(SPECIAL_TOKENS)
"""261: the smallest --vocab-size a byte-level BPE can have (the tokenizers trainer silently returns this many)."""
"""The roles a masked-LM tokenizer must have (bundle.digest.ROLE_TOKENS less the optional unk)."""
HF_TOKENIZER_FILES = (TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json")
"""A Hugging Face tokenizer folder's files that ``PreTrainedTokenizerFast`` / AutoTokenizer read."""


@dataclass(frozen=True)
class LoadedTokenizer:
    """A tokenizer with the ids masked-LM data needs, whatever file it came from."""

    tokenizer: Any
    """A ``tokenizers.Tokenizer`` (padding and truncation off)."""
    kind: str
    """Its model: WordPiece, BPE, Unigram, WordLevel."""
    source: Path
    """The file that defines it: a vocab.txt or a tokenizer.json."""
    sha256: str
    vocab_size: int
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    special_ids: tuple[int, ...]
    """Ids never masked and never drawn as random replacements."""
    folder: Path | None
    """The Hugging Face tokenizer folder it was loaded from (what an export copies), if any."""

    @property
    def vocab_txt(self) -> Path | None:
        """The WordPiece vocab.txt, for the NVIDIA HDF5 path and BERT exports; None for tokenizer.json."""
        return self.source if self.source.suffix != ".json" else None

    @property
    def wordpiece_vocab(self) -> Path | None:
        """A WordPiece vocab.txt that gives these ids: the source, or the one beside a WordPiece tokenizer.json
        in its folder (the vocab stage writes both). What a BERT export's tokenizer is built from."""
        if self.vocab_txt is not None:
            return self.vocab_txt
        beside = self.source.parent / VOCAB_TXT
        return beside if self.kind == "WordPiece" and beside.is_file() else None


def _resolve_tokenizer_file(path: Path, flag: str, prefer: str = TOKENIZER_JSON) -> Path:
    """The defining file of ``path``: itself, or a folder's tokenizer.json / vocab.txt (``prefer`` first)."""
    if path.is_dir():
        found = tokenizer_file(path, prefer)
        if found is None:
            raise DataPrepError(f"{flag} {path}: a folder with neither {TOKENIZER_JSON} (a Hugging Face tokenizer) nor "
                                f"{VOCAB_TXT} (a WordPiece vocabulary)")
        return found
    if not path.exists():
        raise DataPrepError(f"{flag} {path}: no such file or folder; pass a WordPiece vocab.txt, a tokenizer.json or "
                            f"a Hugging Face tokenizer folder (train one with `python -m data_prep vocab`)")
    return path


def _is_json(path: Path) -> bool:
    if path.suffix == ".json":
        return True
    with open(path, "rb") as fh:
        return fh.read(64).lstrip().startswith(b"{")


def load_tokenizer(path: str | Path, lower_case: bool = True, flag: str = "--vocab-file") -> LoadedTokenizer:
    """The one loader for every stage after ``vocab``: a WordPiece vocab.txt (``lower_case`` applies), a
    tokenizer.json, or a folder holding either (tokenizer.json first: it is the whole definition).

    Every refusal is a ``DataPrepError`` naming ``flag`` and the file: one line from the CLI, exit 2."""
    given = Path(path)
    source = _resolve_tokenizer_file(given, flag)
    folder = given if given.is_dir() else None
    if not _is_json(source):
        try:
            vocab = load_vocab(source)
            check_has_words(vocab, source)
        except DataPrepError as e:
            raise DataPrepError(f"{flag}: {e}") from None
        tok = build_tokenizer(source, lower_case)
        # Bracketed entries ([PAD], [unused12]) never occur in text: never masked, never random replacements.
        special = [i for t, i in vocab.items() if t.startswith("[") and t.endswith("]")]
        ids = {role: vocab[names[0]] for role, names in ROLE_TOKENS.items()}
        return LoadedTokenizer(tok, "WordPiece", source, file_sha256(source), max(vocab.values()) + 1, ids["cls"],
                               ids["sep"], ids["pad"], ids["mask"], tuple(sorted(special)), folder)
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(source))
    except Exception as e:  # noqa: BLE001 -- the Rust loader raises a bare Exception for any malformed file
        raise DataPrepError(f"{flag} {source}: not a Hugging Face tokenizer.json ({str(e).splitlines()[0][:200]})") from None
    tok.no_padding()
    tok.no_truncation()
    ids, missing = {}, []
    for role, names in ROLE_TOKENS.items():
        found = [i for i in map(tok.token_to_id, names) if i is not None]
        if found:
            ids[role] = found[0]
        else:
            missing.append(" or ".join(names))
    if missing:
        raise DataPrepError(f"{flag} {source}: the tokenizer lacks {', '.join(missing)}; masked-LM data needs a "
                            f"[CLS]/<s>, [SEP]/</s>, [PAD]/<pad> and [MASK]/<mask> token")
    special = {i for i, t in tok.get_added_tokens_decoder().items() if getattr(t, "special", True)} | set(ids.values())
    unk = [i for i in map(tok.token_to_id, ("[UNK]", "<unk>")) if i is not None]
    vocab_size = max(tok.get_vocab(with_added_tokens=True).values()) + 1
    kind = type(tok.model).__name__
    return LoadedTokenizer(tok, kind, source, file_sha256(source), vocab_size, ids["cls"], ids["sep"], ids["pad"],
                           ids["mask"], tuple(sorted(special | set(unk))), folder)


def wordpiece_vocab_file(path: str | Path, flag: str = "--vocab-file") -> Path:
    """The vocab.txt behind ``path`` (a vocab.txt, or a folder holding one), for NVIDIA's HDF5 instances.
    Anything else is refused in one line: that stage needs WordPiece, see the message."""
    source = _resolve_tokenizer_file(Path(path), flag, prefer=VOCAB_TXT)
    if not _is_json(source):
        return source
    kind = load_tokenizer(source, flag=flag).kind
    raise DataPrepError(f"{flag} {source}: a {kind} tokenizer.json, but the hdf5 stage needs a WordPiece vocab.txt "
                        f"(its word cache and whole-word masking follow BERT's pre-tokenizer and ## pieces, and "
                        f"NVIDIA's recipe is WordPiece); pass a vocab.txt, or use `python -m data_prep packed`, "
                        f"which takes any tokenizer")


def load_vocab(path: Path) -> dict[str, int]:
    """Read a ``vocab.txt`` (``bundle.digest.read_vocab``: the rule the export's BertTokenizerFast shares; ambiguous
    lines are refused naming the line) and check BERT's special tokens."""
    path = Path(path)
    try:
        tokens = read_vocab(path)
    except FileNotFoundError as e:
        raise DataPrepError(f"vocab file {path} does not exist; train one with `python -m data_prep vocab` "
                            f"or pass --vocab-file") from e
    except VocabError as e:
        raise DataPrepError(f"vocab file {e}") from None
    vocab = {t: i for i, t in enumerate(tokens)}
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise DataPrepError(f"vocab file {path} lacks the special tokens {missing}; a BERT vocabulary needs "
                            f"all of {list(SPECIAL_TOKENS)} (one token per line)")
    return vocab


def vocab_hash(path: Path) -> str:
    return file_sha256(path)


def build_tokenizer(vocab_file: Path, lower_case: bool):
    """A ``tokenizers.Tokenizer`` equivalent to BERT's (basic + WordPiece), cased or uncased."""
    from tokenizers import BertWordPieceTokenizer

    load_vocab(vocab_file)  # clear error before the Rust loader's
    # strip_accents follows lowercase, exactly as Google's BERT does for cased/uncased.
    return BertWordPieceTokenizer(str(vocab_file), lowercase=lower_case)._tokenizer


class WordTokenizer:
    """Sentences -> one flat int32 id array + per-sentence lengths, encoding each distinct word once.

    For ASCII words BERT's normalizer is just lower-casing and its pre-tokenizer splits runs of
    letters/digits from single punctuation characters, so those words are split here by a regex and
    each distinct piece is run through the Rust WordPiece model alone (cached). Non-ASCII words take
    the full Rust pipeline (accent stripping, CJK, Unicode punctuation). Both give identical ids
    (tested against ``encode_batch``), except that literal "[MASK]"-like text in a sentence stays text
    (as in Google's ``FullTokenizer``) instead of becoming a special token. The split path is 3-4x
    faster because it skips the full pipeline's per-input overhead, which dominates on short inputs.
    """

    _ASCII_PIECES = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9]")

    def __init__(self, vocab_file: Path, lower_case: bool, cache_pieces: int = 50_000, cache_words: int = 150_000):
        self.tok = build_tokenizer(vocab_file, lower_case)
        self.model = self.tok.model
        self.lower_case = lower_case
        self.pieces: dict[str, tuple[int, ...]] = {}
        self.words: dict[str, tuple[int, ...]] = {}
        # Both caches are bounded (cleared when full) so memory does not grow with the shard.
        self.cache_pieces = cache_pieces
        self.cache_words = cache_words

    def _piece_ids(self, piece: str) -> tuple[int, ...]:
        ids = self.pieces.get(piece)
        if ids is None:
            if len(self.pieces) >= self.cache_pieces:
                self.pieces.clear()
            ids = self.pieces[piece] = tuple(t.id for t in self.model.tokenize(piece))
        return ids

    def _word_ids(self, words: list[str]) -> list[tuple[int, ...]]:
        cache = self.words
        if len(cache) + len(words) > self.cache_words:
            cache.clear()
        out = list(map(cache.get, words))
        other = []
        split, piece_ids, lower = self._ASCII_PIECES.findall, self._piece_ids, self.lower_case
        for i, w in enumerate(words):
            if out[i] is not None:
                continue
            if w.isascii():
                ps = split(w.lower() if lower else w)
                out[i] = cache[w] = piece_ids(ps[0]) if len(ps) == 1 else tuple(chain.from_iterable(map(piece_ids, ps)))
            else:
                other.append(i)
        if other:
            encs = self.tok.encode_batch_fast([words[i] for i in other], add_special_tokens=False)
            for i, enc in zip(other, encs):
                out[i] = cache[words[i]] = tuple(enc.ids)
        return out

    def encode(self, sentences: list[str]) -> tuple[np.ndarray, np.ndarray]:
        words_per_sent = np.fromiter(map(len, map(str.split, sentences)), dtype=np.int64, count=len(sentences))
        all_words = " ".join(sentences).split()
        uniq = list(dict.fromkeys(all_words))
        index = {w: i for i, w in enumerate(uniq)}
        idx = np.fromiter(map(index.__getitem__, all_words), dtype=np.int64, count=len(all_words))
        pieces = self._word_ids(uniq)
        lens = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
        flat_pieces = np.fromiter(chain.from_iterable(pieces), dtype=np.int32, count=int(lens.sum()))
        starts = np.zeros(len(lens), dtype=np.int64)
        np.cumsum(lens[:-1], out=starts[1:])
        wl = lens[idx]
        total = int(wl.sum())
        out_start = np.cumsum(wl) - wl
        gather = np.repeat(starts[idx] - out_start, wl) + np.arange(total)
        ids = flat_pieces[gather]
        # Tokens per sentence: sum the word lengths over each sentence's run of words.
        word_end = np.cumsum(words_per_sent)
        tok_cum = np.concatenate([[0], np.cumsum(wl)])
        sent_lens = tok_cum[word_end] - tok_cum[word_end - words_per_sent]
        return ids, sent_lens


def clean_sentences(sentences: list[str]) -> list[str]:
    """Re-apply ``clean_text`` so whitespace splitting matches BERT's pre-tokenizer on any shard."""
    return [s if s.isascii() and s.isprintable() else clean_text(s) for s in sentences]


def _training_shards(shard_dir: Path) -> list[Path]:
    """The shard stage's training shards (its manifest, checked); a glob for shards from other tools."""
    m = finished_manifest(shard_dir / "manifest.json", "shard")
    if m is not None:
        return [shard_dir / f for f in m["files"]["training"]]
    from .shard import interrupted_temps  # shard imports the text stack; load it only here

    if interrupted_temps(shard_dir):
        raise DataPrepError(f"{shard_dir}: an interrupted shard run left hidden temporary files and no "
                            f"manifest.json; re-run `python -m data_prep shard`")
    return sorted(shard_dir.glob("*training*.txt"))


def _is_punctuation(c: str) -> bool:
    """BERT's rule: the pre-tokenizer makes each punctuation character a word of its own."""
    cp = ord(c)
    return 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126 or unicodedata.category(c).startswith("P")


def _alphabet(files: list[Path], normalizer, limit: int) -> list[str]:
    """The ``limit`` most frequent characters after BERT's normalizer, ties broken by the character.
    (Counted per distinct raw character, so the Python cost is one C-level count per line.)"""
    raw: Counter = Counter()
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                raw.update(line)
    counts: Counter = Counter()
    for c, n in raw.items():
        for d in normalizer.normalize_str(c):
            if not d.isspace():
                counts[d] += n
    return sorted(sorted(counts, key=lambda c: (-counts[c], c))[:limit])


def train_wordpiece(files: list[Path], vocab_size: int, lower_case: bool, min_frequency: int,
                    limit_alphabet: int = 1000) -> list[str]:
    """HF ``tokenizers``' WordPiece trainer, made deterministic; returns the tokens in id order.

    The Rust trainer numbers the ``##c`` continuation characters in hash-map order, which changes every
    run, and breaks ties between equally frequent merges by those numbers, so the vocabulary itself
    (not only its order) varied run to run; its alphabet cut-off also drops tied characters at random.
    Here the alphabet is chosen beforehand (frequency, then character) and every ``##c`` that can occur
    (a non-punctuation character of the alphabet) is numbered up front, as a reserved token, in sorted
    order: every id and so every tie-break is a function of the inputs."""
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=lower_case)
    alphabet = _alphabet(files, tok._tokenizer.normalizer, limit_alphabet)
    continuation = ["##" + c for c in alphabet if not _is_punctuation(c)]
    tok.train([str(f) for f in files], vocab_size=vocab_size, min_frequency=min_frequency,
              special_tokens=list(SPECIAL_TOKENS) + continuation, initial_alphabet=alphabet,
              limit_alphabet=len(alphabet), wordpieces_prefix="##", show_progress=False)
    vocab = tok.get_vocab()
    return sorted(vocab, key=vocab.__getitem__)


def looks_like_identifier(token: str) -> bool:
    """A vocabulary piece that is mostly digits (3 or more, at least half its characters): record numbers, dates,
    phone numbers or ids of a clinical corpus. Single digits stay, so every number still tokenizes, digit by digit."""
    core = token[2:] if token.startswith("##") else token
    digits = sum(c.isdigit() for c in core)
    return digits >= 3 and 2 * digits >= len(core)


def write_vocab(out_dir: Path, tokens: list[str], lower_case: bool) -> Path:
    """``vocab.txt`` and the matching ``tokenizer.json`` (built from vocab.txt alone, so the trainer's
    reserved ``##c`` entries are plain vocabulary there, not special tokens), each written atomically."""
    from tokenizers import BertWordPieceTokenizer

    vocab_path = Path(out_dir) / "vocab.txt"
    atomic_write_text(vocab_path, "".join(t + "\n" for t in tokens))
    tok = BertWordPieceTokenizer(str(vocab_path), lowercase=lower_case)
    atomic_write_text(Path(out_dir) / "tokenizer.json", tok.to_str(pretty=True))
    return vocab_path


def train_bpe(files: list[Path], vocab_size: int, lower_case: bool, min_frequency: int):
    """A byte-level BPE (RoBERTa's and ModernBERT's kind) trained on ``files``, with BERT's special tokens
    first (so [PAD] is id 0, as NVIDIA's padding assumes) and BERT's ``[CLS] A [SEP] (B [SEP])`` template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    if lower_case:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([str(f) for f in files], trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return tok


def write_tokenizer_folder(out_dir: Path, tok) -> Path:
    """``tokenizer.json`` + ``tokenizer_config.json`` (+ ``special_tokens_map.json`` on transformers 4): a folder that
    ``PreTrainedTokenizerFast`` / AutoTokenizer load with [CLS] [SEP] [PAD] [MASK] [UNK] set, so an export can
    carry it as it is. Written by ``save_pretrained`` into a hidden temporary folder, then renamed file by file."""
    from transformers import PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]")
    tmp = tmp_name(out_dir / "hf_tokenizer")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        fast.save_pretrained(str(tmp))
        for name in HF_TOKENIZER_FILES:
            if not (tmp / name).is_file():  # transformers 5 keeps the special tokens in tokenizer_config.json only
                (out_dir / name).unlink(missing_ok=True)
                continue
            with atomic_path(out_dir / name) as t:
                shutil.copyfile(tmp / name, t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def check_vocab_settings(cfg: VocabConfig) -> None:
    """Settings the vocab stage cannot honour, refused before any work (the CLI's usage error, exit 2): a byte-level
    BPE smaller than its byte alphabet + specials (the trainer would give MIN_BPE_VOCAB tokens and say nothing)."""
    if cfg.tokenizer_type == "bpe" and cfg.vocab_file is None and cfg.vocab_size < MIN_BPE_VOCAB:
        raise ConfigError(f"--vocab-size {cfg.vocab_size}: a byte-level BPE (--tokenizer-type bpe) has at least "
                          f"{MIN_BPE_VOCAB} tokens ({BYTE_LEVEL_SYMBOLS} byte symbols + {len(SPECIAL_TOKENS)} special "
                          f"tokens); pass --vocab-size {MIN_BPE_VOCAB} or more (e.g. 30000 or 50265 as RoBERTa)")


def check_adopted_kind(cfg: VocabConfig, adopted: LoadedTokenizer) -> None:
    """--tokenizer-type bpe names the kind the user wants; an adopted file of another kind is refused, not taken
    silently (the default --tokenizer-type wordpiece adopts any kind: it only picks what is trained)."""
    if cfg.tokenizer_type == "bpe" and adopted.kind != "BPE":
        raise DataPrepError(f"--vocab-file {cfg.vocab_file}: a {adopted.kind} vocabulary, but --tokenizer-type bpe was "
                            f"asked for; drop --tokenizer-type to adopt it as it is, or pass a byte-level BPE "
                            f"tokenizer.json / folder (or drop --vocab-file to train a BPE)")


def run_vocab(cfg: VocabConfig) -> dict:
    """Adopt ``cfg.vocab_file`` (vocab.txt, tokenizer.json or tokenizer folder) or train a tokenizer on the
    training shards: WordPiece (deterministically; the default, as NVIDIA's recipe) or byte-level BPE."""
    check_vocab_settings(cfg)
    out_dir = Path(cfg.out_dir)
    vocab_path = out_dir / VOCAB_TXT
    manifest_path = out_dir / "manifest.json"
    # A killed run's .vocab.txt.tmp-<pid>, and earlier versions' tempfile folders (.tmp-<random>).
    remove_temps(out_dir)
    adopted = load_tokenizer(cfg.vocab_file, cfg.lower_case) if cfg.vocab_file is not None else None
    if adopted is not None:
        check_adopted_kind(cfg, adopted)
    if adopted is not None and adopted.vocab_txt is None and adopted.wordpiece_vocab is not None:
        # A BERT folder (vocab.txt beside a WordPiece tokenizer.json): adopt its vocab.txt, as the hdf5 stage needs.
        adopted = load_tokenizer(adopted.wordpiece_vocab, cfg.lower_case)
    if adopted is not None and adopted.vocab_txt is None:
        return _adopt_tokenizer_json(cfg, adopted, manifest_path)
    if adopted is None and cfg.tokenizer_type == "bpe":
        return _train_bpe(cfg, manifest_path)
    if adopted is not None:
        expected = {"stage": "vocab", "source": "file", "source_sha256": adopted.sha256}
        if is_complete(manifest_path, expected):
            return read_json(manifest_path)
        invalidate(manifest_path)
        _remove_other_kind(out_dir, keep=(VOCAB_TXT,))
        with atomic_path(vocab_path) as tmp:
            shutil.copyfile(adopted.source, tmp)
    else:
        files = _training_shards(Path(cfg.shard_dir))
        if not files:
            raise DataPrepError(f"{cfg.shard_dir}: no *training*.txt shards; run `python -m data_prep shard` first")
        sig = _shards_signature(files)
        params = {k: v for k, v in asdict(cfg).items() if k in ("vocab_size", "lower_case", "min_frequency")}
        if cfg.drop_identifier_pieces:  # recorded only when set: vocabularies made before the option keep their manifest
            params["drop_identifier_pieces"] = True
        expected = {"stage": "vocab", "source": "trained", "trainer": "deterministic-1", "shards": sig, "params": params}
        if is_complete(manifest_path, expected):
            log.info("vocab: %s is complete (manifest matches); skipping", vocab_path)
            return read_json(manifest_path)
        invalidate(manifest_path)
        log.info("vocab: training WordPiece (size %d, %s) on %d shards", cfg.vocab_size,
                 "uncased" if cfg.lower_case else "cased", len(files))
        tokens = train_wordpiece(files, cfg.vocab_size, cfg.lower_case, cfg.min_frequency)
        if cfg.drop_identifier_pieces:
            kept = [t for t in tokens if not looks_like_identifier(t)]
            log.info("vocab: --drop-identifier-pieces removed %d digit-heavy pieces (record numbers, dates, ids)",
                     len(tokens) - len(kept))
            tokens = kept
        _remove_other_kind(out_dir, keep=(VOCAB_TXT, TOKENIZER_JSON))
        write_vocab(out_dir, tokens, cfg.lower_case)
    vocab = load_vocab(vocab_path)
    check_has_words(vocab, vocab_path)
    n = len(vocab)
    body = dict(expected, vocab_size=n, vocab_sha256=vocab_hash(vocab_path), lower_case=cfg.lower_case)
    log.info("vocab: %s (%d tokens)", vocab_path, n)
    return write_manifest(manifest_path, body, [vocab_path])


def _shards_signature(files: list[Path]) -> str:
    return hashlib.sha256(repr([(f.name, f.stat().st_size) for f in files]).encode()).hexdigest()


def _remove_other_kind(out_dir: Path, keep: tuple[str, ...]) -> None:
    """A folder switching kind (WordPiece <-> BPE) must not keep the other kind's files: a later stage
    reading the folder would take a stale vocab.txt or tokenizer.json."""
    for name in (VOCAB_TXT, *HF_TOKENIZER_FILES):
        if name not in keep:
            (out_dir / name).unlink(missing_ok=True)


def _tokenizer_manifest(cfg: VocabConfig, expected: dict, manifest_path: Path) -> dict:
    out_dir = Path(cfg.out_dir)
    lt = load_tokenizer(out_dir, cfg.lower_case)
    outputs = [out_dir / n for n in HF_TOKENIZER_FILES if (out_dir / n).is_file()]
    body = dict(expected, tokenizer_kind=lt.kind, vocab_size=lt.vocab_size, tokenizer_file=str(lt.source),
                tokenizer_sha256=lt.sha256, lower_case=cfg.lower_case)
    log.info("vocab: %s (%s, %d tokens)", out_dir, lt.kind, lt.vocab_size)
    return write_manifest(manifest_path, body, outputs)


def _adopt_tokenizer_json(cfg: VocabConfig, adopted: LoadedTokenizer, manifest_path: Path) -> dict:
    """Copy a tokenizer.json (and its folder's tokenizer_config.json / special_tokens_map.json) into out_dir."""
    out_dir = Path(cfg.out_dir)
    expected = {"stage": "vocab", "source": "file", "source_sha256": adopted.sha256}
    if is_complete(manifest_path, expected):
        return read_json(manifest_path)
    invalidate(manifest_path)
    _remove_other_kind(out_dir, keep=HF_TOKENIZER_FILES)
    src_dir = adopted.source.parent
    for name in HF_TOKENIZER_FILES:
        src = adopted.source if name == TOKENIZER_JSON else src_dir / name
        if src.is_file():
            with atomic_path(out_dir / name) as tmp:
                shutil.copyfile(src, tmp)
    return _tokenizer_manifest(cfg, expected, manifest_path)


def _train_bpe(cfg: VocabConfig, manifest_path: Path) -> dict:
    files = _training_shards(Path(cfg.shard_dir))
    if not files:
        raise DataPrepError(f"{cfg.shard_dir}: no *training*.txt shards; run `python -m data_prep shard` first")
    params = {k: v for k, v in asdict(cfg).items() if k in ("vocab_size", "lower_case", "min_frequency", "tokenizer_type")}
    expected = {"stage": "vocab", "source": "trained", "trainer": "bpe-1", "shards": _shards_signature(files),
                "params": params}
    if is_complete(manifest_path, expected):
        log.info("vocab: %s is complete (manifest matches); skipping", cfg.out_dir)
        return read_json(manifest_path)
    invalidate(manifest_path)
    log.info("vocab: training byte-level BPE (size %d, %s) on %d shards", cfg.vocab_size,
             "uncased" if cfg.lower_case else "cased", len(files))
    tok = train_bpe(files, cfg.vocab_size, cfg.lower_case, cfg.min_frequency)
    _remove_other_kind(Path(cfg.out_dir), keep=HF_TOKENIZER_FILES)
    write_tokenizer_folder(Path(cfg.out_dir), tok)
    return _tokenizer_manifest(cfg, expected, manifest_path)


def vocab_output(cfg: VocabConfig, manifest: dict) -> Path:
    """What the vocab stage made, for the next stage's --vocab-file: vocab.txt, or the tokenizer folder."""
    return Path(cfg.out_dir) / VOCAB_TXT if "tokenizer_kind" not in manifest else Path(cfg.out_dir)


def check_has_words(vocab: dict[str, int], path: Path) -> None:
    """A vocabulary of only bracketed tokens ([PAD], [unused1], ...) cannot tokenize text or supply the random
    replacement words of masking."""
    if not any(not (t.startswith("[") and t.endswith("]")) for t in vocab):
        raise DataPrepError(f"vocab file {path} holds only special tokens ({len(vocab)} lines like "
                            f"{list(vocab)[:5]}); it needs word pieces: pass a real vocab.txt, or train one on more "
                            f"text (the shards gave none) with a larger --vocab-size")
