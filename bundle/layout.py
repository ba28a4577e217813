"""data_prep's work dir, defined once: how its data folders are named, and which of them are finished.

data_prep writes one folder per format and phase under its work dir (``--work-dir``, or ``--out-root``
for the ``hdf5`` / ``packed`` stages), each holding ``<dataset>/`` with the files and a ``manifest.json``
written last::

    <work>/hdf5_lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5/<dataset>/
    <work>/packed_seq_len_1024/<dataset>/

The ``hdf5`` name is NVIDIA's (byte for byte, so their scripts and ours read the same folders) plus
``_whole_word_mask`` / ``_mlm_only`` for what NVIDIA's scripts cannot make; the ``packed`` name is
``packed_seq_len_<L>`` (``bundle.packed_schema`` re-exports that rule with its format). data_prep names folders with these functions; everything else
(scripts, tests, a user) *finds* them by reading the manifests (``finished_data_dirs``, ``find_data_dir``)
instead of parsing names back with globs::

    python -m bundle.layout data-dir --work-dir W --format hdf5 --seq-len 128   # the trainer's --input_dir
    python -m bundle.layout data-dir --work-dir W --phase 2                      # the longest sequence length
    python -m bundle.layout data-dir --work-dir W --list                         # every finished folder, JSON

Exit 2 with one line naming what exists when nothing (or more than one folder) matches.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

# Standard library only (no numpy, no h5py): a host's plain python3 answers the CLI (docker/test_image.sh).

MANIFEST_NAME = "manifest.json"
"""Written last into every finished data_prep folder: present and intact means complete."""
MANIFEST_VERSION = 1
"""data_prep's manifest layout version; a manifest of another version is not trusted."""

Format = Literal["hdf5", "packed"]
FORMATS: tuple[str, ...] = ("hdf5", "packed")
"""The data_prep stages that write training data (a manifest's ``stage``)."""


class LayoutError(LookupError):
    """No (or more than one) finished data folder matches; the message names what exists."""


# --- naming: what data_prep calls a folder -------------------------------------------------------------------

def hdf5_dir_name(*, lower_case: bool, max_seq_length: int, max_predictions_per_seq: int, masked_lm_prob: float,
                  random_seed: int, dupe_factor: int, whole_word_mask: bool = False, objective: str = "nsp") -> str:
    """The folder (under the work dir) of one phase's NVIDIA-schema HDF5, e.g.
    ``hdf5_lower_case_1_seq_len_128_max_pred_20_masked_lm_prob_0.15_random_seed_12345_dupe_factor_5``."""
    name = (f"hdf5_lower_case_{int(lower_case)}_seq_len_{max_seq_length}"
            f"_max_pred_{max_predictions_per_seq}_masked_lm_prob_{masked_lm_prob}"
            f"_random_seed_{random_seed}_dupe_factor_{dupe_factor}")
    # NVIDIA's name, plus markers for what its scripts cannot make (so two kinds never share a folder).
    return name + ("_whole_word_mask" if whole_word_mask else "") + ("_mlm_only" if objective == "mlm" else "")


def hdf5_data_dir(out_root: str | os.PathLike, dataset_name: str, **name_fields) -> Path:
    """What a trainer's ``--input_dir`` points at: ``<out_root>/<hdf5_dir_name(...)>/<dataset>/``."""
    return Path(out_root) / hdf5_dir_name(**name_fields) / dataset_name


def packed_dir_name(max_seq_length: int) -> str:
    """The folder (under the work dir) of one sequence length's packed token files (bundle.packed_schema's
    format; ``packed_schema.packed_dir_name`` is this function)."""
    return f"packed_seq_len_{int(max_seq_length)}"


def packed_data_dir(out_root: str | os.PathLike, max_seq_length: int, dataset_name: str) -> Path:
    """What a trainer's ``--input_dir`` points at: ``<out_root>/packed_seq_len_<L>/<dataset>/``."""
    return Path(out_root) / packed_dir_name(max_seq_length) / dataset_name


# --- finding: which folders are finished -----------------------------------------------------------------------

def outputs_intact(manifest_path: str | os.PathLike, manifest: dict) -> bool:
    """The manifest is of this version and every file it lists is there with its recorded size."""
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        return False
    base = Path(manifest_path).parent
    for rel, size in (manifest.get("output_sizes") or {}).items():
        p = base / rel
        if not p.exists() or p.stat().st_size != size:
            return False
    return True


@dataclass(frozen=True)
class DataDir:
    """One finished data folder, as its manifest describes it."""

    path: str
    """The folder holding the files: a trainer's --input_dir."""
    format: str
    """hdf5 (NVIDIA's schema, masked at data-prep time) or packed (token sequences, masked at load time)."""
    max_seq_length: int
    max_predictions_per_seq: Optional[int]
    """hdf5 only; None for packed."""
    objective: str
    """nsp or mlm."""
    dataset: str
    training_files: int
    test_files: int


def _read(manifest_path: Path) -> dict | None:
    try:
        m = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("stage") in FORMATS and outputs_intact(manifest_path, m) else None


def _describe(folder: Path, m: dict) -> DataDir:
    hdf5 = m["stage"] == "hdf5"
    seq = m["phase"]["max_seq_length"] if hdf5 else m["max_seq_length"]
    return DataDir(path=str(folder), format=m["stage"], max_seq_length=int(seq),
                   max_predictions_per_seq=int(m["phase"]["max_predictions_per_seq"]) if hdf5 else None,
                   objective=m.get("objective", "nsp"), dataset=(m.get("args") or {}).get("dataset_name", folder.name),
                   training_files=len(m.get("training_files", [])), test_files=len(m.get("test_files", [])))


def _candidates(work_dir: Path) -> list[Path]:
    """``<work>/<format folder>/<dataset>/``: the depth at which data_prep writes its data folders."""
    return sorted(p for p in work_dir.glob("*/*") if p.is_dir())


def finished_data_dirs(work_dir: str | os.PathLike) -> list[DataDir]:
    """Every finished hdf5 / packed folder under ``work_dir`` (manifest present, of this version, its files
    intact), ordered by format, sequence length and path."""
    out = []
    for folder in _candidates(Path(work_dir)):
        m = _read(folder / MANIFEST_NAME)
        if m is not None:
            out.append(_describe(folder, m))
    return sorted(out, key=lambda d: (d.format, d.max_seq_length, d.path))


def unfinished_data_dirs(work_dir: str | os.PathLike) -> list[Path]:
    """Folders data_prep started (``.hdf5`` files or progress records) whose manifest is missing or stale."""
    return [f for f in _candidates(Path(work_dir)) if _read(f / MANIFEST_NAME) is None
            and ((f / ".progress").is_dir() or any(f.glob("*.hdf5")) or (f / MANIFEST_NAME).exists())]


def select(dirs: list[DataDir], *, format: str | None = None, seq_len: int | None = None, phase: int | None = None,
           max_pred: int | None = None, objective: str | None = None, dataset: str | None = None) -> list[DataDir]:
    """The folders matching every given filter. ``phase`` 1 is the shortest sequence length among the
    folders left by the other filters, ``phase`` 2 the longest (NVIDIA's two-phase recipe)."""
    out = [d for d in dirs if (format is None or d.format == format) and (seq_len is None or d.max_seq_length == seq_len)
           and (max_pred is None or d.max_predictions_per_seq == max_pred)
           and (objective is None or d.objective == objective) and (dataset is None or d.dataset == dataset)]
    if phase is not None and out:
        lengths = sorted({d.max_seq_length for d in out})
        if phase == 2 and len(lengths) < 2:
            return []
        want = lengths[0] if phase == 1 else lengths[-1]
        out = [d for d in out if d.max_seq_length == want]
    return out


def _show(d: DataDir) -> str:
    pred = f"/{d.max_predictions_per_seq}" if d.max_predictions_per_seq is not None else ""
    return f"{d.format} {d.objective} seq {d.max_seq_length}{pred} {d.path}"


def find_data_dir(work_dir: str | os.PathLike, **filters) -> Path:
    """The one finished data folder matching ``filters`` (see ``select``); a LayoutError naming what exists
    when there is none or more than one."""
    work_dir = Path(work_dir)
    every = finished_data_dirs(work_dir)
    hits = select(every, **filters)
    if len(hits) == 1:
        return Path(hits[0].path)
    asked = " ".join(f"{k.replace('_', '-')} {v}" for k, v in filters.items() if v is not None) or "any"
    if hits:
        raise LayoutError(f"{len(hits)} finished data folders under {work_dir} match {asked}: "
                          f"{'; '.join(map(_show, hits))}; narrow with --max-pred / --objective / --dataset, "
                          f"or remove the stale one")
    there = "; ".join(map(_show, every)) or "none"
    started = unfinished_data_dirs(work_dir)
    tail = f"; unfinished (re-run data_prep): {', '.join(map(str, started))}" if started else ""
    hint = "" if every else f" (build them with `python -m data_prep all --work-dir {work_dir}`)"
    raise LayoutError(f"no finished data folder under {work_dir} matches {asked}; finished: {there}{hint}{tail}")


# --- the command line -----------------------------------------------------------------------------------------

@dataclass
class DataDirQuery:
    """``python -m bundle.layout data-dir``: which finished data folder a script wants."""

    work_dir: Path = Path("data")
    """data_prep's --work-dir (or the --out-root of its hdf5 / packed stage)."""
    format: Optional[Format] = None
    """hdf5 (NVIDIA's schema) or packed (masked at load time); any when left out."""
    seq_len: Optional[int] = None
    """Tokens per sequence (the folder's max_seq_length)."""
    phase: Optional[Literal[1, 2]] = None
    """1: the shortest sequence length among the matching folders; 2: the longest."""
    max_pred: Optional[int] = None
    """hdf5 only: masked positions per sequence (max_predictions_per_seq)."""
    objective: Optional[Literal["nsp", "mlm"]] = None
    """nsp (BERT's pairs) or mlm (masked-LM only)."""
    dataset: Optional[str] = None
    """data_prep's --dataset-name (the sub-folder holding the files)."""
    list: bool = False
    """Print every matching finished folder as a JSON list (may be empty) instead of exactly one path."""

    def filters(self) -> dict:
        return {"format": self.format, "seq_len": self.seq_len, "phase": self.phase, "max_pred": self.max_pred,
                "objective": self.objective, "dataset": self.dataset}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from bundle import cli as bundle_cli

    parser = argparse.ArgumentParser(prog="python -m bundle.layout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data-dir", help="print the finished data folder a trainer's --input_dir takes",
                       description=DataDirQuery.__doc__)
    bundle_cli.add_arguments(p, DataDirQuery, dash=True, required={"work_dir"})
    ns = vars(parser.parse_args(argv))
    ns.pop("command")
    try:
        q = bundle_cli.from_dict(DataDirQuery, ns, source="data-dir")
    except ValueError as e:
        p.error(str(e))
    if q.list:
        print(json.dumps([asdict(d) for d in select(finished_data_dirs(q.work_dir), **q.filters())], indent=2))
        return 0
    try:
        print(find_data_dir(q.work_dir, **q.filters()))
    except LayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
