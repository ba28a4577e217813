"""Stage ``packed``: sharded documents -> long packed token sequences (``bundle.packed_schema``).

Each document is tokenized once (HF ``tokenizers``, ``encode_batch_fast`` over ``chunk_documents``
documents at a time) and packed greedily into ``[CLS] doc [SEP] doc [SEP] ...`` sequences of at most
``max_seq_length`` tokens. Nothing is masked here and no document is stored twice: the loader
(``ort_training.data.packed``) masks each time it reads a sequence, which replaces NVIDIA's
``dupe_factor`` copies. One file per shard, one shard per worker process, the same folders,
manifests and resume rules as the ``hdf5`` stage::

    <out_root>/packed_seq_len_1024/<dataset>/<dataset>_training_<i>.hdf5, <dataset>_test_<i>.hdf5, manifest.json
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bundle import packed_schema
from bundle.atomic import copy_if_changed
from bundle.digest import TOKENIZER_FOLDER_FILES, TOKENIZER_JSON, VOCAB_TXT

from .config import PackedConfig
from .create_hdf5 import find_shards, iter_document_chunks
from .manifest import DataPrepError, file_fingerprint, file_sha256, invalidate, is_complete, read_json, remove_temps, write_manifest
from .tokenizer import LoadedTokenizer, load_tokenizer
from .workers import quiet_worker

log = logging.getLogger(__name__)

TOKENIZER_FLAG = "--tokenizer"
DATA_TOKENIZER = "tokenizer"
"""The data's own copy of its tokenizer, a folder beside the packed files (named relatively by the manifest)."""


def data_dir(cfg: PackedConfig) -> Path:
    """The folder holding the packed files: what the trainer's ``--input_dir`` points at."""
    return packed_schema.packed_data_dir(cfg.out_root, cfg.max_seq_length, cfg.dataset_name)


def _progress_path(cfg: PackedConfig, out_name: str) -> Path:
    return data_dir(cfg) / ".progress" / f"{out_name}.json"


def _expected(cfg: PackedConfig, shard: Path, tok_sha: str) -> dict:
    # Buffer sizes and process counts change memory and speed, not the output: a change does not redo work.
    args = {k: v for k, v in asdict(cfg).items() if k in ("max_seq_length", "lower_case", "dataset_name")}
    return {"shard": file_fingerprint(shard), "tokenizer_sha256": tok_sha, "args": args,
            "format": packed_schema.FORMAT, "format_version": packed_schema.FORMAT_VERSION}


def packed_attrs(tok: LoadedTokenizer, max_seq_length: int) -> packed_schema.PackedAttrs:
    return packed_schema.PackedAttrs(max_seq_length, tok.vocab_size, tok.cls_id, tok.sep_id, tok.pad_id, tok.mask_id,
                                     tok.special_ids)


def sentence_token_starts(sentences: list[str], offsets: list[tuple[int, int]]) -> np.ndarray:
    """Token positions where each sentence of ``" ".join(sentences)`` begins: the first token ending past the
    sentence's first character (a byte-level BPE token may start at the space before it)."""
    if not offsets:
        return np.zeros(0, dtype=np.int64)
    char_starts = np.cumsum([0] + [len(s) + 1 for s in sentences[:-1]])
    ends = np.asarray([e for _, e in offsets], dtype=np.int64)
    starts = np.searchsorted(ends, char_starts, side="right")
    return np.unique(starts[starts < len(offsets)])


def process_shard(task: tuple) -> dict:
    """Worker: one shard -> one packed file (renamed into place only when complete) + its progress record."""
    cfg, shard, tok_sha = task
    out_name = shard.name[:-4] + ".hdf5"
    expected = _expected(cfg, shard, tok_sha)
    if is_complete(_progress_path(cfg, out_name), expected):
        return {"shard": str(shard), "resumed": True}
    t0 = time.perf_counter()
    stats = {"documents": 0, "sequences": 0, "tokens": 0, "text_chars": 0}
    try:
        tok = load_tokenizer(cfg.tokenizer, cfg.lower_case, flag=TOKENIZER_FLAG)
        # Format version 2: the sentence boundaries ride along (packed_schema.SentencePacker; the sequences are the
        # same as without them), read by sentence-level objectives (DEPTH).
        packer = packed_schema.SentencePacker(cfg.max_seq_length, tok.cls_id, tok.sep_id)

        def write(pairs):
            w.write([p[0] for p in pairs], [p[1] for p in pairs])

        with packed_schema.PackedWriter(data_dir(cfg) / out_name, packed_attrs(tok, cfg.max_seq_length),
                                        buffer_tokens=cfg.buffer_tokens, sentences=True) as w:
            for docs in iter_document_chunks(shard, cfg.chunk_documents):
                texts = [" ".join(d) for d in docs]
                stats["text_chars"] += sum(map(len, texts))
                # encode_batch (not _fast): the same ids, plus the character offsets that place sentence starts.
                for doc, enc in zip(docs, tok.tokenizer.encode_batch(texts, add_special_tokens=False)):
                    if enc.ids:
                        stats["documents"] += 1
                        write(packer.add(np.asarray(enc.ids, dtype=np.int32), sentence_token_starts(doc, enc.offsets)))
            write(packer.flush())
            if stats["documents"] == 0:
                raise DataPrepError(f"{shard}: empty shard (no document with tokens); remove it or re-run the shard stage")
        stats["sequences"], stats["tokens"] = w.sequences, w.tokens
    except DataPrepError as e:
        if not cfg.skip_bad:
            raise
        return {"shard": str(shard), "bad": str(e)}
    seconds = time.perf_counter() - t0
    body = dict(expected, file=out_name, seconds=seconds, **stats)
    write_manifest(_progress_path(cfg, out_name), body, [w.path])
    return {"shard": str(shard), "seconds": seconds, **stats}


def _tokenizer_copies(tok: LoadedTokenizer, out: Path) -> dict[Path, Path]:
    """source -> copy in OUT/tokenizer/: a Hugging Face folder's tokenizer files under their names, else the one file
    given as vocab.txt or tokenizer.json (so the copy also loads as a folder)."""
    folder = out / DATA_TOKENIZER
    if tok.folder is None:
        return {tok.source: folder / (VOCAB_TXT if tok.vocab_txt is not None else TOKENIZER_JSON)}
    return {tok.folder / name: folder / name for name in TOKENIZER_FOLDER_FILES if (tok.folder / name).is_file()}


def _relative_copy(path: Path, copies: dict[Path, Path], out: Path) -> str:
    """Where the manifest says a tokenizer file is: its copy in the data folder, relative to it (as the HDF5's vocab.txt),
    so a job that mounts only this folder (a cloud job, another machine) still has the tokenizer the ids came from."""
    copy = {src.resolve(): c for src, c in copies.items()}.get(Path(path).resolve())
    return str(copy.relative_to(out)) if copy else str(path)


def _copy_tokenizer(tok: LoadedTokenizer, out: Path) -> dict[Path, Path]:
    """Copy the tokenizer into OUT/tokenizer/ (rewritten only when its bytes differ; files of an earlier, other
    tokenizer removed). Returns source -> copy."""
    copies = _tokenizer_copies(tok, out)
    for src, copy in copies.items():
        copy_if_changed(src, copy)
    for stale in (out / DATA_TOKENIZER).iterdir():
        if stale.is_file() and stale not in copies.values() and not stale.name.startswith("."):
            stale.unlink()
    return copies


def run_packed(cfg: PackedConfig) -> Path:
    """Build the packed files of every shard; returns the folder holding them (and its manifest)."""
    tok = load_tokenizer(cfg.tokenizer, cfg.lower_case, flag=TOKENIZER_FLAG)  # refused here, before any worker
    shards = find_shards(cfg.shard_dir, cfg.dataset_name)
    out = data_dir(cfg)
    # Being (re)built: the manifest goes first, so a kill cannot leave an old manifest over a mix of files.
    invalidate(out / "manifest.json")
    remove_temps(out)
    tasks = [(cfg, s, tok.sha256) for s in shards]
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # set before forking, or tokenizers deadlocks
    results = []
    if cfg.processes > 1 and len(tasks) > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(min(cfg.processes, len(tasks)), maxtasksperchild=1,
                                         initializer=quiet_worker, initargs=(os.getpid(),)) as pool:
            for r in tqdm(pool.imap_unordered(process_shard, tasks), total=len(tasks), desc="packed", unit="shard"):
                results.append(r)
    else:
        for t in tqdm(tasks, desc="packed", unit="shard"):
            results.append(process_shard(t))
    bad = [r for r in results if "bad" in r]
    for b in bad:
        log.warning("packed: BAD SHARD %s: %s", b["shard"], b["bad"])
    per_file = {}
    for s in shards:
        name = s.name[:-4] + ".hdf5"
        progress = _progress_path(cfg, name)
        if is_complete(progress, _expected(cfg, s, tok.sha256)):
            m = read_json(progress)
            per_file[name] = {k: m[k] for k in ("documents", "sequences", "tokens", "text_chars")}
    # The trainer reads every *.hdf5 under --input_dir: drop files of shards that are gone or now bad.
    for old in out.glob("*.hdf5"):
        if old.name not in per_file:
            log.warning("packed: removing %s (not built from the current shards)", old)
            old.unlink()
    totals = {k: sum(v[k] for v in per_file.values()) for k in ("documents", "sequences", "tokens", "text_chars")}
    disk = sum((out / n).stat().st_size for n in per_file)
    tokenizer = _copy_tokenizer(tok, out)
    # vocab_file / vocab_sha256 for a WordPiece vocab.txt: the keys the trainer already adopts for its export.
    vt = tok.wordpiece_vocab
    wordpiece = {"vocab_file": _relative_copy(vt, tokenizer, out), "vocab_sha256": file_sha256(vt)} if vt else {}
    body = {"stage": "packed", "format": packed_schema.FORMAT, "format_version": packed_schema.FORMAT_VERSION,
            "objective": "mlm", "max_seq_length": cfg.max_seq_length, "args": asdict(cfg),
            "tokenizer": {"file": _relative_copy(tok.source, tokenizer, out), "sha256": tok.sha256, "kind": tok.kind,
                          "vocab_size": tok.vocab_size, "folder": DATA_TOKENIZER if tok.folder else None,
                          "source": str(tok.source)},
            **wordpiece, **totals, "disk_bytes": disk,
            "fill": totals["tokens"] / max(1, totals["sequences"] * cfg.max_seq_length),
            "per_file": per_file,
            "training_files": sorted(n for n in per_file if "_training_" in n),
            "test_files": sorted(n for n in per_file if "_test_" in n),
            "bad_shards": [{"shard": b["shard"], "error": b["bad"]} for b in bad]}
    write_manifest(out / "manifest.json", body, [out / n for n in per_file] + list(tokenizer.values()))
    log.info("packed: %s: %d sequences, %d tokens (%.0f%% of %d-token slots) from %d documents in %d files, %d bytes",
             out, totals["sequences"], totals["tokens"], 100 * body["fill"], cfg.max_seq_length, totals["documents"],
             len(per_file), disk)
    return out
