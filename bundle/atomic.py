"""Write-then-rename: a reader (or a resumed run) sees a finished file or folder, or none at all.

One helper for every output of the bundle: checkpoints, exports, manifests, metrics, summaries,
downloads. The temporary name is hidden (leading dot) and carries the pid, so two writers never
share one and output globs never match it; `clean_stale_temps` removes those a killed run left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

TMP_MARK = ".tmp-"


def tmp_name(path: Path) -> Path:
    """The hidden name `path` is written under before the rename."""
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; it replaces `path` only if the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def copy_if_changed(src: str | os.PathLike, dest: str | os.PathLike) -> bool:
    """Copy `src` to `dest` atomically unless `dest` already holds the same bytes, so a rerun leaves finished outputs
    (and their times) untouched. Returns whether it wrote."""
    src, dest = Path(src), Path(dest)
    data = src.read_bytes()
    if dest.is_file() and dest.read_bytes() == data:
        return False
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)
    return True


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """A matplotlib figure laid out, written atomically as PNG, and closed (charts beside the metrics)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary folder beside `final`; it replaces `final` only if the block completes."""
    final = Path(final)
    tmp = tmp_name(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if final.exists():
            # Rename the old one aside first: between the two renames a reader sees one or the other.
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clean_stale_temps(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Remove temporaries (files or folders) that killed writers left in `folder`; returns them.
    Only those whose writer process is gone: a live pid is another run still writing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.rglob(".*") if recursive else folder.glob(".*"):
        name = p.name
        for mark in (TMP_MARK, ".old-"):
            if mark in name:
                pid = name.rsplit(mark, 1)[1]
                if pid.isdigit() and not _alive(int(pid)):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
                    removed.append(p)
                break
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers from an earlier, interrupted block of this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_file(path: Path) -> None:
    if path.is_file():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
