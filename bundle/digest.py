"""What both halves agree on about the files they exchange: a file's sha256 (recorded by data_prep, compared
by the trainer), which files an input folder holds (``list_files``), which file defines a tokenizer, how a WordPiece vocab.txt is read (``read_vocab``), and the
special-token names a masked-LM tokenizer uses."""

from __future__ import annotations

import codecs
import hashlib
import os
import unicodedata
from pathlib import Path
from typing import Callable

TOKENIZER_JSON = "tokenizer.json"
VOCAB_TXT = "vocab.txt"
TOKENIZER_FOLDER_FILES = (TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", VOCAB_TXT,
                          "vocab.json", "merges.txt")
"""What a Hugging Face tokenizer folder holds (save_pretrained), and all that data_prep copies of one: a model folder
given as the tokenizer keeps its weights and config to itself."""
ROLE_TOKENS = {"cls": ("[CLS]", "<s>"), "sep": ("[SEP]", "</s>"), "pad": ("[PAD]", "<pad>"), "mask": ("[MASK]", "<mask>"),
               "unk": ("[UNK]", "<unk>")}
"""What a masked-LM tokenizer must have, by role: BERT's name or RoBERTa/ModernBERT-style BPE's (unk optional)."""


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def list_files(root: str | Path, keep: Callable[[str], bool] = lambda name: True,
               prune: Callable[[Path], bool] = lambda folder: False) -> list[Path]:
    """The files under ``root`` whose name ``keep`` accepts, sorted: the one listing rule of data_prep's ``--input``
    folders and the trainer's ``--input_dir``.

    Symbolic links are followed alike, to files and to folders (each real folder is walked once, so a link to a
    parent cannot loop, and a file reached by two paths is listed once, under its first path in sorted order).
    Hidden names (a leading dot: temporaries, .progress/, .git/) are skipped, and so are folders ``prune`` rejects.
    A dangling link that ``keep`` accepts is a ``FileNotFoundError`` naming it, not a silently missing file."""
    root = Path(root)
    walked: set[str] = set()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        folder = Path(dirpath)
        real = os.path.realpath(folder)
        if real in walked or (folder != root and prune(folder)):
            dirnames[:] = []
            continue
        walked.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith(".") or not keep(name):
                continue
            path = folder / name
            if not path.exists():
                raise FileNotFoundError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; remove "
                                        f"the link or restore its target")
            found.append(path)
    listed: set[str] = set()
    out = []
    for path in sorted(found):
        real = os.path.realpath(path)
        if real not in listed:
            listed.add(real)
            out.append(path)
    return out


def tokenizer_file(path: str | Path, prefer: str = TOKENIZER_JSON) -> Path | None:
    """The file that defines the tokenizer at ``path``: itself, or a folder's tokenizer.json / vocab.txt
    (``prefer`` first); None when a folder holds neither."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in (prefer, VOCAB_TXT if prefer == TOKENIZER_JSON else TOKENIZER_JSON):
        if (path / name).is_file():
            return path / name
    return None


class VocabError(ValueError):
    """A vocab.txt line that the loaders of the bundle would read differently (or not at all)."""


def _vocab_problem(token: str) -> str | None:
    if token == "":
        return "is empty"
    if token != token.strip():
        return f"has surrounding whitespace in {token!r}"
    bad = sorted({ascii(c) for c in token if c.isspace() or unicodedata.category(c) == "Cc"})
    return f"has whitespace or control characters {bad} in {token!r}" if bad else None


def read_vocab(path: str | Path) -> list[str]:
    """The tokens of a WordPiece vocab.txt in id order (one per line, id = line number - 1), read by the one rule
    that data_prep's Rust tokenizer and the export's / fine-tuning's BertTokenizerFast must share.

    Lines are split on "\\n" only (a "\\r\\n" ending is accepted: both loaders drop the "\\r"). Refused, naming the
    file and line: a UTF-8 byte-order mark (the first token would read as "\\ufeff[PAD]"), invalid UTF-8, an empty
    line, a token with whitespace or control characters (the Rust loader trims trailing whitespace, BertTokenizer
    keeps it, Python's line splitting breaks at \\x85 or \\u2028: ids would differ), and a duplicate token (one
    of its two ids could never be produced)."""
    path = Path(path)
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raise VocabError(f"{path}: line 1 starts with a UTF-8 byte-order mark; save the file without one "
                         f"(e.g. sed -i '1s/^\\xEF\\xBB\\xBF//' {path})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise VocabError(f"{path}: line {line}: not UTF-8 ({e.reason}); a vocab.txt is UTF-8, one token per line") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline
    tokens: list[str] = []
    first: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        token = line[:-1] if line.endswith("\r") else line
        problem = _vocab_problem(token)
        if problem is None and token in first:
            problem = f"repeats {token!r} of line {first[token]}"
        if problem:
            raise VocabError(f"{path}: line {n} {problem}; each line of a vocab.txt must be exactly one token, each "
                             f"token once (data_prep and BertTokenizerFast would otherwise give different ids)")
        first[token] = n
        tokens.append(token)
    return tokens


REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json")


def refuse_remote_code(folder: str | Path) -> None:
    """A Hugging Face folder whose config or tokenizer_config names custom code (`auto_map`) is refused: the
    bundle never runs code from a model folder (transformers would ask on a terminal, and `y` runs it)."""
    import json

    for name in REMOTE_CODE_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # unreadable: the loader that reads it names the file
        if isinstance(content, dict) and "auto_map" in content:
            raise ValueError(f"{path}: names custom code (auto_map: {sorted(content['auto_map'])}), which this bundle never "
                             "runs; use a folder of a standard architecture (BERT, ModernBERT) or remove auto_map")
