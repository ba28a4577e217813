"""What both halves agree on about the files they exchange: a file's sha256 (recorded by data_prep, compared
by the trainer), which file defines a tokenizer, and the special-token names a masked-LM tokenizer uses."""

from __future__ import annotations

import hashlib
from pathlib import Path

TOKENIZER_JSON = "tokenizer.json"
VOCAB_TXT = "vocab.txt"
ROLE_TOKENS = {"cls": ("[CLS]", "<s>"), "sep": ("[SEP]", "</s>"), "pad": ("[PAD]", "<pad>"), "mask": ("[MASK]", "<mask>"),
               "unk": ("[UNK]", "<unk>")}
"""What a masked-LM tokenizer must have, by role: BERT's name or RoBERTa/ModernBERT-style BPE's (unk optional)."""


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


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
