"""Stage ``hdf5``: sharded sentences -> masked-LM / next-sentence HDF5 for every phase in one pass.

One task per shard (processes work on different shards). A task reads its shard in chunks of
``chunk_documents`` documents, tokenizes each chunk once (shared by all phases), and streams each
phase's instances into that phase's file, so a worker's memory does not grow with the shard.
Output layout is NVIDIA's::

    <out_root>/hdf5_lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5/
        <dataset>/<dataset>_training_<i>.hdf5, <dataset>_test_<i>.hdf5, manifest.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from bundle import layout
from bundle.atomic import copy_if_changed

from .config import Hdf5Config, PhaseConfig
from .hdf5_writer import Hdf5InstanceWriter
from .instances import MaskingConfig, SpecialIds, build_instances
from .manifest import DataPrepError, file_fingerprint, finished_manifest, invalidate, is_complete, read_json, remove_temps, write_manifest
from .shard import existing_shards, interrupted_temps
from .tokenizer import WordTokenizer, check_has_words, clean_sentences, load_vocab, vocab_hash, wordpiece_vocab_file
from .workers import quiet_worker

log = logging.getLogger(__name__)


def phase_dir_name(cfg: Hdf5Config, phase: PhaseConfig) -> str:
    """The phase's folder under ``out_root``: the naming rule lives in ``bundle.layout`` (NVIDIA's name)."""
    return layout.hdf5_dir_name(lower_case=cfg.lower_case, max_seq_length=phase.max_seq_length,
                                max_predictions_per_seq=phase.max_predictions_per_seq,
                                masked_lm_prob=cfg.masked_lm_prob, random_seed=cfg.random_seed,
                                dupe_factor=cfg.dupe_factor, whole_word_mask=cfg.whole_word_mask,
                                objective=cfg.objective)


def phase_data_dir(cfg: Hdf5Config, phase: PhaseConfig) -> Path:
    """The folder holding the ``.hdf5`` files: what the trainer's ``--input_dir`` points at."""
    return Path(cfg.out_root) / phase_dir_name(cfg, phase) / cfg.dataset_name


DATA_VOCAB = "vocab.txt"
"""The data's own copy of its vocab, beside the HDF5 files (the manifest's vocab_file, relative to the folder)."""


def find_shards(shard_dir: Path, dataset: str) -> list[Path]:
    """The shard stage's outputs: from its manifest if there is one (and it still matches the files),
    else the ``<dataset>_{training,test}_<i>.txt`` files (shards made by other tools)."""
    shard_dir = Path(shard_dir)
    m = finished_manifest(shard_dir / "manifest.json", "shard")
    if m is not None:
        files = [shard_dir / f for split in ("training", "test") for f in m["files"].get(split, [])]
    elif interrupted_temps(shard_dir, dataset):
        raise DataPrepError(f"{shard_dir}: an interrupted shard run left hidden temporary files "
                            f"(.{dataset}_*.txt.tmp-*) and no manifest.json; re-run `python -m data_prep shard`")
    else:
        files = existing_shards(shard_dir, dataset)
    if not files:
        raise DataPrepError(f"{shard_dir}: no {dataset}_training_<i>.txt shards; run `python -m data_prep shard` "
                            f"first or check --dataset-name")
    return files


def iter_document_chunks(path: Path, chunk_documents: int) -> Iterator[list[list[str]]]:
    """Documents (lists of sentences; blank line = document break), ``chunk_documents`` at a time."""
    chunk: list[list[str]] = []
    doc: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            for line in f:
                line = line.strip()
                if line:
                    doc.append(line)
                    continue
                if doc:
                    chunk.append(doc)
                    doc = []
                    if len(chunk) >= chunk_documents:
                        yield chunk
                        chunk = []
        if doc:
            chunk.append(doc)
        if chunk:
            yield chunk
    except UnicodeDecodeError as e:
        raise DataPrepError(f"{path}: invalid UTF-8 near byte {e.start}; re-create the shard or pass --skip-bad") from e


def _vocab_arrays(vocab: dict[str, int], path: Path | str = "vocab.txt") -> tuple[SpecialIds, np.ndarray, np.ndarray]:
    check_has_words(vocab, path)
    special = SpecialIds.from_vocab(vocab)
    size = max(vocab.values()) + 1
    is_subword = np.zeros(size, dtype=bool)
    replace = []
    for tok, i in vocab.items():
        if tok.startswith("##"):
            is_subword[i] = True
        if not (tok.startswith("[") and tok.endswith("]")):  # no [PAD]/[CLS]/[unused12] as random words
            replace.append(i)
    return special, is_subword, np.asarray(sorted(replace), dtype=np.int32)


def _shard_seed(cfg: Hdf5Config, shard: Path, phase: PhaseConfig) -> np.random.SeedSequence:
    # Keyed by shard name (not task order), so output is identical for any --processes.
    return np.random.SeedSequence([cfg.random_seed, zlib.crc32(shard.name.encode()), phase.max_seq_length,
                                   phase.max_predictions_per_seq])


def _progress_path(cfg: Hdf5Config, phase: PhaseConfig, out_name: str) -> Path:
    return phase_data_dir(cfg, phase) / ".progress" / f"{out_name}.json"


def _expected(cfg: Hdf5Config, phase: PhaseConfig, shard: Path, vhash: str) -> dict:
    args = {k: v for k, v in asdict(cfg).items() if k not in ("processes", "skip_bad", "phases", "out_root",
                                                                "shard_dir", "vocab_file")}
    return {"shard": file_fingerprint(shard), "vocab_sha256": vhash, "args": args, "phase": asdict(phase)}


def process_shard(task: tuple) -> dict:
    """Worker: all phases' HDF5 files for one shard. Returns per-phase results (or the error)."""
    cfg, shard, vhash = task
    out_name = shard.name[:-4] + ".hdf5"
    todo = [p for p in cfg.phases if not is_complete(_progress_path(cfg, p, out_name), _expected(cfg, p, shard, vhash))]
    if not todo:
        return {"shard": str(shard), "resumed": True}
    t0 = time.perf_counter()
    try:
        vocab = load_vocab(cfg.vocab_file)
        special, is_subword, replace_ids = _vocab_arrays(vocab, cfg.vocab_file)
        wt = WordTokenizer(cfg.vocab_file, cfg.lower_case)
        mcfgs = [MaskingConfig(p.max_seq_length, p.max_predictions_per_seq, cfg.masked_lm_prob, cfg.short_seq_prob,
                               cfg.whole_word_mask) for p in todo]
        rngs = [np.random.default_rng(_shard_seed(cfg, shard, p)) for p in todo]
        stats = [{"instances": 0, "random_next": 0, "masked": 0} for _ in todo]
        n_docs = n_chars = 0
        # The writers rename their files into place only if the whole shard finished.
        with contextlib.ExitStack() as stack:
            writers = [stack.enter_context(Hdf5InstanceWriter(phase_data_dir(cfg, p) / out_name, p.max_seq_length,
                                                              p.max_predictions_per_seq)) for p in todo]
            for docs in iter_document_chunks(shard, cfg.chunk_documents):
                sents = clean_sentences([s for d in docs for s in d])
                n_chars += sum(map(len, sents))
                tokens, sent_lens = wt.encode(sents)
                doc_sents = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
                # Sentences with no tokens (e.g. only characters the vocab drops) would make empty segments.
                if (sent_lens == 0).any():
                    keep = sent_lens > 0
                    doc_id = np.repeat(np.arange(len(docs)), doc_sents)
                    doc_sents = np.bincount(doc_id[keep], minlength=len(docs))
                    sent_lens = sent_lens[keep]
                doc_sents = doc_sents[doc_sents > 0]
                n_docs += len(doc_sents)
                for w, m, rng, st in zip(writers, mcfgs, rngs, stats):
                    for batch in build_instances(tokens, sent_lens, doc_sents, m, cfg.dupe_factor, special,
                                                 replace_ids, rng, is_subword, objective=cfg.objective):
                        w.write(batch)
                        st["instances"] += len(batch["next_sentence_labels"])
                        st["random_next"] += int(batch["next_sentence_labels"].sum())
                        st["masked"] += int((batch["masked_lm_positions"] > 0).sum())
            if n_docs == 0:
                raise DataPrepError(f"{shard}: empty shard (no documents); remove it or re-run the shard stage")
    except DataPrepError as e:
        if not cfg.skip_bad:
            raise
        return {"shard": str(shard), "bad": str(e)}
    seconds = time.perf_counter() - t0
    results = {}
    for p, w, st in zip(todo, writers, stats):
        body = dict(_expected(cfg, p, shard, vhash), file=out_name, documents=n_docs, text_chars=n_chars,
                    seconds=seconds, **st)
        write_manifest(_progress_path(cfg, p, out_name), body, [w.path])
        results[phase_dir_name(cfg, p)] = st
    return {"shard": str(shard), "documents": n_docs, "text_chars": n_chars, "seconds": seconds, "phases": results}


def run_hdf5(cfg: Hdf5Config) -> dict[str, Path]:
    """Build every phase; returns {phase folder name: folder with the .hdf5 files}."""
    vocab_path = wordpiece_vocab_file(cfg.vocab_file)  # a folder holding a vocab.txt is fine; BPE is refused here
    if vocab_path != Path(cfg.vocab_file):
        cfg = dataclasses.replace(cfg, vocab_file=vocab_path)
    vocab = load_vocab(vocab_path)
    n_upper = sum(1 for t in vocab if t != t.lower() and not t.startswith("["))
    if cfg.lower_case and n_upper > len(vocab) // 20:
        log.warning("hdf5: %s looks cased (%d tokens with capitals) but --lower-case is on; pass "
                    "--no-lower-case if it is a cased vocabulary", vocab_path, n_upper)
    elif not cfg.lower_case and n_upper == 0:
        log.warning("hdf5: %s has no capitalised tokens but --no-lower-case is set; capitals will become [UNK] "
                    "or split oddly", vocab_path)
    _vocab_arrays(vocab, vocab_path)  # phase and argument ranges were checked by Hdf5Config itself
    shards = find_shards(cfg.shard_dir, cfg.dataset_name)
    vhash = vocab_hash(vocab_path)
    for p in cfg.phases:
        # The folder is being (re)built: its manifest goes first, so a kill cannot leave an old manifest
        # over a mix of old and new files; half-written files of a killed run are dead weight.
        invalidate(phase_data_dir(cfg, p) / "manifest.json")
        remove_temps(phase_data_dir(cfg, p))
    tasks = [(cfg, s, vhash) for s in shards]
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # set before forking, or tokenizers deadlocks
    results = []
    if cfg.processes > 1 and len(tasks) > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(min(cfg.processes, len(tasks)), maxtasksperchild=1, initializer=quiet_worker,
                                         initargs=(os.getpid(),)) as pool:
            for r in tqdm(pool.imap_unordered(process_shard, tasks), total=len(tasks), desc="hdf5", unit="shard"):
                results.append(r)
    else:
        for t in tqdm(tasks, desc="hdf5", unit="shard"):
            results.append(process_shard(t))
    bad = [r for r in results if "bad" in r]
    for b in bad:
        log.warning("hdf5: BAD SHARD %s: %s", b["shard"], b["bad"])
    out = {}
    for p in cfg.phases:
        data_dir = phase_data_dir(cfg, p)
        per_file = {}
        for s in shards:
            name = s.name[:-4] + ".hdf5"
            if is_complete(_progress_path(cfg, p, name), _expected(cfg, p, s, vhash)):
                m = read_json(_progress_path(cfg, p, name))
                per_file[name] = {k: m[k] for k in ("instances", "random_next", "masked", "documents", "text_chars")}
        # The trainer reads every *.hdf5 under --input_dir: drop files of shards that are gone or now bad.
        for old in data_dir.glob("*.hdf5"):
            if old.name not in per_file:
                log.warning("hdf5: removing %s (not built from the current shards)", old)
                old.unlink()
        # The tokenizer travels with the data (a cloud job mounts this folder, not the prep machine's disk):
        # a copy next to the HDF5, named relatively by the manifest.
        # Rewritten only when it differs, so a rerun leaves finished outputs untouched.
        copy_if_changed(vocab_path, data_dir / DATA_VOCAB)
        # "objective" at the top level: what a trainer checks before it trains (NSP head or MLM only).
        body = {"stage": "hdf5", "objective": cfg.objective, "args": asdict(cfg) | {"phases": None}, "phase": asdict(p),
                "vocab_sha256": vhash, "vocab_source": str(vocab_path),
                "vocab_file": DATA_VOCAB, "per_file": per_file,
                "instances": sum(v["instances"] for v in per_file.values()),
                "training_files": sorted(n for n in per_file if "_training_" in n),
                "test_files": sorted(n for n in per_file if "_test_" in n),
                "bad_shards": [{"shard": b["shard"], "error": b["bad"]} for b in bad]}
        write_manifest(data_dir / "manifest.json", body, [data_dir / n for n in per_file] + [data_dir / DATA_VOCAB])
        log.info("hdf5: %s: %d instances in %d files", data_dir, body["instances"], len(per_file))
        out[phase_dir_name(cfg, p)] = data_dir
    return out
