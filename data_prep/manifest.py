"""Manifests: with the atomic writes of ``bundle.atomic``, what makes every stage resumable.

A stage writes each output under a temporary name and renames it when complete (``bundle.atomic``,
the one write-then-rename helper of the tree), then writes a JSON manifest *last* (as
mosaicml/streaming and NVIDIA LDDL do). A finished output is one whose manifest exists and whose
recorded arguments match; anything else is rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from bundle.atomic import TMP_MARK, atomic_write_text
from bundle.digest import file_sha256  # noqa: F401 -- the digest manifests record, defined once in bundle/
from bundle.layout import MANIFEST_VERSION, outputs_intact


class DataPrepError(RuntimeError):
    """A user-facing error: bad input file, bad argument. The message says what to do."""


class ConfigError(DataPrepError, ValueError):
    """A setting out of range, raised by a config's ``__post_init__``: a usage error (exit 2) from the CLI,
    a DataPrepError for library callers."""


def write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def file_fingerprint(path: Path) -> dict:
    """Cheap identity of an input (size + mtime): enough to notice a changed input on resume."""
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_complete(manifest_path: Path, expected: dict) -> bool:
    """True if the manifest exists, was written by this version, and records ``expected`` for each key,
    and every output file it lists still exists with the recorded size."""
    m = read_json(manifest_path)
    if not m:
        return False
    want = _jsonable(expected)
    if any(m.get(k) != v for k, v in want.items()):
        return False
    return outputs_intact(manifest_path, m)


def finished_manifest(manifest_path: Path, stage: str) -> dict | None:
    """A previous stage's manifest for its reader: None if there is none, an error if its outputs
    are missing or changed since (a reader must not trust a folder that no longer matches it)."""
    manifest_path = Path(manifest_path)
    if not manifest_path.exists():
        return None
    if not is_complete(manifest_path, {"stage": stage}):
        raise DataPrepError(f"{manifest_path}: the files it lists are missing or changed since; re-run "
                            f"`python -m data_prep {stage}`")
    return read_json(manifest_path)


def invalidate(manifest_path: Path) -> None:
    """Remove a stage's manifest before its first output is replaced. The manifest is written last,
    so "manifest present" then means "outputs complete": a run killed in between leaves none."""
    Path(manifest_path).unlink(missing_ok=True)


def write_manifest(manifest_path: Path, body: dict, outputs: list[Path] = ()) -> dict:
    base = Path(manifest_path).parent
    body = dict(body)
    body["manifest_version"] = MANIFEST_VERSION
    body["output_sizes"] = {os.path.relpath(p, base): Path(p).stat().st_size for p in outputs}
    write_json_atomic(manifest_path, body)
    return body


def remove_temps(folder: Path) -> list[Path]:
    """Remove the hidden ``bundle.atomic`` temporaries in a folder a stage is about to (re)build.

    Not ``bundle.atomic.clean_stale_temps``: that keeps files whose writer pid still exists, and the pool
    workers of a SIGKILLed run linger as zombies (pid present) where nothing reaps orphans, e.g. a container
    without an init; the fault-injection test found their temporaries surviving every later run. A stage
    owns its folders while it runs (the CLI holds ``RunLock`` on the work dir), so what is there is stale."""
    removed = []
    for p in Path(folder).glob(".*"):
        if TMP_MARK in p.name or ".old-" in p.name:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed
