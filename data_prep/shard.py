"""Stage ``shard``: documents -> sentences -> train/test split -> N shards balanced by sentence count.

Output is NVIDIA's sharded format: one sentence per line, a blank line between documents, files
``<dataset>_training_<i>.txt`` and ``<dataset>_test_<i>.txt``. Everything streams: documents are
split in worker processes (order preserved) and each goes to the shard with the fewest sentences so
far (greedy balancing, deterministic), so memory does not grow with the corpus.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from bundle.atomic import tmp_name

from .config import ShardConfig
from .manifest import DataPrepError, finished_manifest, invalidate, is_complete, read_json, write_manifest
from .text import make_splitter, train_punkt_params
from .workers import quiet_worker

log = logging.getLogger(__name__)

_split = None  # the worker's sentence splitter, built once per process by _init_worker


def _init_worker(name: str, trained: dict | None, piece_chars: int, parent: int | None = None) -> None:
    global _split
    if parent is not None:  # a pool worker: stops quietly on the pool's SIGTERM (data_prep.workers)
        quiet_worker(parent)
    _split = make_splitter(name, trained, piece_chars)


def _split_batch(docs: list[str]) -> list[list[str]]:
    return [_split(d) for d in docs]


def text_files(text_dir: Path) -> list[Path]:
    """The format stage's outputs, in input order (from its manifest; a glob of plain text from other tools)."""
    text_dir = Path(text_dir)
    m = finished_manifest(text_dir / "manifest.json", "format")
    if m is not None:
        files = [text_dir / f for f in m["files"]]
    elif (text_dir / "parsed").is_dir():
        raise DataPrepError(f"{text_dir}: the format stage did not finish (no manifest.json); re-run "
                            f"`python -m data_prep format`")
    else:  # plain text made by other tools
        files = sorted(text_dir.glob("*.txt"))
    if not files:
        raise DataPrepError(f"{text_dir}: no formatted text (*.txt); run `python -m data_prep format` first")
    return files


def iter_documents(files: list[Path]) -> Iterator[str]:
    for f in files:
        try:
            with open(f, encoding="utf-8", errors="strict") as fh:
                for line in fh:
                    if line.strip():
                        yield line.rstrip("\n")
        except UnicodeDecodeError as e:
            raise DataPrepError(f"{f}: invalid UTF-8 near byte {e.start}; re-run the format stage on its input") from e


def _batches(it: Iterator[str], n: int) -> Iterator[list[str]]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def shard_paths(out_dir: Path, dataset: str, split: str, n: int) -> list[Path]:
    return [Path(out_dir) / f"{dataset}_{split}_{i}.txt" for i in range(n)]


def existing_shards(shard_dir: Path, dataset: str) -> list[Path]:
    """``<dataset>_training_<i>.txt`` / ``<dataset>_test_<i>.txt`` files in ``shard_dir``, sorted."""
    pat = re.compile(rf"{re.escape(dataset)}_(training|test)_\d+\.txt")
    return sorted(p for p in Path(shard_dir).glob(f"{dataset}_*.txt") if pat.fullmatch(p.name))


def interrupted_temps(shard_dir: Path, dataset: str = "*") -> list[Path]:
    """Hidden temporary shards a killed or failed shard run left behind (of any dataset by default)."""
    return sorted(Path(shard_dir).glob(f".{dataset}_*.txt.tmp-*"))


FD_MARGIN = 64
"""File descriptors left for everything but the shards (the inputs, the pool's pipes, logging, the lock)."""


def check_open_files(num_shards: int, num_test_shards: int) -> None:
    """The stage writes every shard at once, one open file each: more shards than the process may open files stopped
    with an OSError traceback after creating hundreds of temporaries (and --num-shards 100000000 spun creating them)."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    n = num_shards + num_test_shards
    if soft != resource.RLIM_INFINITY and n > soft - FD_MARGIN:
        raise DataPrepError(f"--num-shards {num_shards} (+ --num-test-shards {num_test_shards}): the shard stage keeps "
                            f"every shard open while it writes, and this process may open {soft} files (ulimit -n) of "
                            f"which {FD_MARGIN} are kept for the rest; lower --num-shards to at most "
                            f"{max(soft - FD_MARGIN - num_test_shards, 1)} or raise ulimit -n")


def run_shard(cfg: ShardConfig) -> dict:
    if cfg.num_shards < 1 or cfg.num_test_shards < 0:
        raise DataPrepError("--num-shards must be >= 1 and --num-test-shards >= 0")
    if not 0.0 <= cfg.test_fraction < 1.0:
        raise DataPrepError(f"--test-fraction {cfg.test_fraction}: must be in [0, 1)")
    check_open_files(cfg.num_shards, cfg.num_test_shards if cfg.test_fraction > 0 else 0)  # before any file is touched
    files = text_files(cfg.text_dir)
    out_dir = Path(cfg.out_dir)
    manifest_path = out_dir / "manifest.json"
    src = read_json(Path(cfg.text_dir) / "manifest.json") or {}
    expected = {"stage": "shard", "config": {k: v for k, v in asdict(cfg).items() if k != "processes"},
                "text_sizes": src.get("output_sizes") or {str(f): f.stat().st_size for f in files}}
    if is_complete(manifest_path, expected):
        log.info("shard: %s is complete (manifest matches); skipping", out_dir)
        return read_json(manifest_path)
    # From here on the folder is being rebuilt: no manifest, and no shards of an earlier run that a
    # kill could leave mixed with new ones (or, with fewer --num-shards now, left over).
    invalidate(manifest_path)
    for old in existing_shards(out_dir, cfg.dataset_name) + interrupted_temps(out_dir, cfg.dataset_name):
        old.unlink()

    trained = None
    if cfg.splitter == "punkt-trained":
        log.info("shard: training Punkt on the corpus (first 20 MB)")
        trained = train_punkt_params(iter_documents(files), piece_chars=cfg.piece_chars)

    n_test = cfg.num_test_shards if cfg.test_fraction > 0 else 0
    splits = {"training": shard_paths(out_dir, cfg.dataset_name, "training", cfg.num_shards),
              "test": shard_paths(out_dir, cfg.dataset_name, "test", n_test)}
    counts = {s: [{"documents": 0, "sentences": 0} for _ in p] for s, p in splits.items()}
    heaps = {s: [(0, i) for i in range(len(p))] for s, p in splits.items()}
    rng = np.random.default_rng(cfg.seed)
    dropped = 0
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with contextlib.ExitStack() as stack:
        # Written under bundle.atomic's temporary names and renamed together at the end (not one atomic_path
        # each): a kill between the renames leaves the rest as temporaries, which marks the folder unfinished.
        handles = {s: [stack.enter_context(open(tmp_name(p), "w", encoding="utf-8")) for p in ps]
                   for s, ps in splits.items()}
        if cfg.processes > 1:
            import multiprocessing as mp
            pool = stack.enter_context(mp.get_context("fork").Pool(cfg.processes, _init_worker,
                                                                   (cfg.splitter, trained, cfg.piece_chars, os.getpid())))
            results = pool.imap(_split_batch, _batches(iter_documents(files), 256))
        else:
            _init_worker(cfg.splitter, trained, cfg.piece_chars)
            results = map(_split_batch, _batches(iter_documents(files), 256))
        for batch in tqdm(results, desc="shard: split sentences", unit="batch"):
            # One draw per document, in input order, whatever the process count: deterministic.
            is_test = rng.random(len(batch)) < cfg.test_fraction
            for sents, test in zip(batch, is_test):
                if len(sents) < cfg.min_sentences:
                    dropped += 1
                    continue
                split = "test" if test and n_test else "training"
                n_sent, i = heapq.heappop(heaps[split])
                handles[split][i].write("\n".join(sents) + "\n\n")
                heapq.heappush(heaps[split], (n_sent + len(sents), i))
                counts[split][i]["documents"] += 1
                counts[split][i]["sentences"] += len(sents)
    outputs = []
    for s, ps in splits.items():
        for i, p in enumerate(ps):
            if counts[s][i]["documents"] == 0:  # fewer documents than shards: no empty files downstream
                os.unlink(tmp_name(p))
                p.unlink(missing_ok=True)
                log.warning("shard: %s would be empty (too few documents); not written", p.name)
                continue
            os.replace(tmp_name(p), p)
            outputs.append(p)
        splits[s] = [p for p in ps if p in outputs]
    total_docs = sum(c["documents"] for cs in counts.values() for c in cs)
    if total_docs == 0:
        raise DataPrepError(f"{cfg.text_dir}: no documents with >= {cfg.min_sentences} sentences")
    body = dict(expected, counts=counts, dropped_short_documents=dropped,
                files={s: [p.name for p in ps] for s, ps in splits.items()})
    log.info("shard: %d documents -> %d training + %d test shards in %s (sentences per training shard: %s)",
             total_docs, len(splits["training"]), len(splits["test"]), out_dir,
             [c["sentences"] for c in counts["training"]])
    return write_manifest(manifest_path, body, outputs)
