"""Stage ``download``: PubMed baseline/update files (and PMC OA bundles, a Wikipedia dump) over HTTPS.

Parallel (one connection per file), resumable (an interrupted file continues from its ``.part``
with an HTTP ``Range`` request), verified, and idempotent (a file that verifies is skipped).
Verification: PubMed files against their published ``<name>.md5``, the Wikipedia dump against its
``md5sums`` list (a file the list lacks is an error, not accepted unverified); PMC OA bundles have no
published checksum, so they are checked for format and size only: gzip + tar headers (an HTML error
page is not a bundle) and the announced ``Content-Length``. Every file also has a size cap
(``--max-file-gb``) against an endless response. A failed file stays as ``<name>.part`` and is not
taken for finished. Only ``urllib`` from the standard library: the job is a few GETs.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from .config import DownloadConfig
from .manifest import DataPrepError, write_json_atomic


@dataclass(frozen=True)
class RemoteDataset:
    base_url: str
    pattern: str
    """Regex over the index page's links that selects the data files."""
    md5: str
    """'per-file' (<name>.md5 beside each file), 'md5sums:<file>' (one list), or 'none'."""


DATASETS: dict[str, list[RemoteDataset]] = {
    "pubmed-baseline": [RemoteDataset("https://ftp.ncbi.nlm.nih.gov/pubmed/baseline/",
                                      r"pubmed\d+n\d+\.xml\.gz", "per-file")],
    "pubmed-updates": [RemoteDataset("https://ftp.ncbi.nlm.nih.gov/pubmed/updatefiles/",
                                     r"pubmed\d+n\d+\.xml\.gz", "per-file")],
    "pmc-oa": [RemoteDataset("https://ftp.ncbi.nlm.nih.gov/pub/pmc/oa_bulk/oa_comm/xml/",
                             r"oa_comm_xml\.[A-Za-z0-9_.-]+\.tar\.gz", "none")],
    "wikipedia": [RemoteDataset("https://dumps.wikimedia.org/enwiki/latest/",
                                r"enwiki-latest-pages-articles\.xml\.bz2", "md5sums:enwiki-latest-md5sums.txt")],
}
DATASETS["pubmed"] = DATASETS["pubmed-baseline"] + DATASETS["pubmed-updates"]

_USER_AGENT = "ort-bert-pretraining-data-prep/0.1"
_MD5_RE = re.compile(r"\b([0-9a-fA-F]{32})\b")


def _get(url: str, timeout: float, headers: Optional[dict] = None):
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, **(headers or {})})
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (https/http URLs from our table or the user)


def list_remote(ds: RemoteDataset, timeout: float) -> list[str]:
    """Data file names linked from the dataset's index page, sorted (PubMed names sort by date)."""
    try:
        with _get(ds.base_url, timeout) as r:
            page = r.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as e:
        raise DataPrepError(f"cannot list {ds.base_url}: {e}; check the network or pass --base-url") from e
    names = sorted(set(re.findall(rf'href="(?:[^"]*/)?({ds.pattern})"', page)))
    if not names:
        raise DataPrepError(f"{ds.base_url}: the index lists no files matching {ds.pattern}")
    return names


def md5_of(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 (integrity check against NCBI's published md5, not security)
    with open(path, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    return h.hexdigest()


def expected_md5(ds: RemoteDataset, name: str, timeout: float, md5sums: dict) -> Optional[str]:
    """The published checksum; None only where none is published (then the format is checked instead)."""
    if ds.md5 == "per-file":
        with _get(ds.base_url + name + ".md5", timeout) as r:
            m = _MD5_RE.search(r.read().decode("ascii", "replace"))
        if not m:
            raise DataPrepError(f"{ds.base_url}{name}.md5 holds no md5 checksum")
        return m.group(1).lower()
    if ds.md5.startswith("md5sums:"):
        if name not in md5sums:
            raise DataPrepError(f"{name} is not in {ds.base_url}{ds.md5.split(':', 1)[1]} ({len(md5sums)} entries), so "
                                f"it cannot be verified; not downloaded. The dump may be mid-publication: retry later")
        return md5sums[name]
    return None


def read_md5sums(ds: RemoteDataset, timeout: float) -> dict[str, str]:
    url = ds.base_url + ds.md5.split(":", 1)[1]
    try:
        with _get(url, timeout) as r:
            text = r.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DataPrepError(f"cannot fetch the checksum list {url} ({e}); without it nothing can be verified. Check "
                            f"the network or --base-url (the list must sit beside the files)") from e
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and _MD5_RE.fullmatch(parts[0]):
            sums[parts[1].lstrip("*")] = parts[0].lower()
    if not sums:
        raise DataPrepError(f"{url} lists no md5 checksums")
    return sums


_MAGIC = {".gz": (b"\x1f\x8b", "gzip"), ".tgz": (b"\x1f\x8b", "gzip"), ".bz2": (b"BZh", "bzip2")}


def format_problem(path: Path, name: str) -> Optional[str]:
    """Why ``path`` is not what ``name`` promises (gzip / bzip2 magic; a tar header inside a .tar.gz), or None.
    The check for files without a published checksum, and the test of a ``.part`` before it is resumed."""
    magic = next((m for suf, m in _MAGIC.items() if name.endswith(suf)), None)
    if magic is None:
        return None
    with open(path, "rb") as f:
        head = f.read(512)
    if not head.startswith(magic[0]):
        shown = head[:40].decode("utf-8", "replace").replace("\n", " ")
        hint = " (an HTML page: the server sent an error page instead of the file)" if b"<" in head[:64] else ""
        return f"not a {magic[1]} file: it starts with {shown!r}{hint}"
    if name.endswith((".tar.gz", ".tgz")):
        import gzip
        import tarfile
        try:
            with gzip.open(path, "rb") as g:
                tarfile.TarInfo.frombuf(g.read(512), "utf-8", "surrogateescape")
        except (OSError, EOFError, tarfile.TarError) as e:
            return f"a gzip file but not a tar archive ({e})"
    return None


class _TooBig(DataPrepError):
    """Over the size cap: not retried (the same response would come again)."""


def fetch(url: str, dest: Path, md5: Optional[str], retries: int = 3, timeout: float = 60.0,
          max_bytes: Optional[int] = None) -> str:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming after dropped connections; verify it (md5 if
    given, else format) before the rename. Returns 'skipped' (already verified) or 'downloaded'; raises
    DataPrepError after ``retries`` failures, keeping the ``.part``."""
    if dest.exists():
        if md5 is not None and md5_of(dest) == md5 or md5 is None and format_problem(dest, dest.name) is None:
            return "skipped"
        dest.rename(dest.with_name(dest.name + ".part"))  # an earlier, unverified copy: check / resume it below
    part = dest.with_name(dest.name + ".part")
    if part.exists() and part.stat().st_size and (problem := format_problem(part, dest.name)):
        logging.getLogger(__name__).warning("%s: discarding %s, %s", url, part, problem)
        part.unlink()
    last_err = ""
    for attempt in range(1, retries + 1):
        have = part.stat().st_size if part.exists() else 0
        try:
            headers = {"Range": f"bytes={have}-"} if have else {}
            with _get(url, timeout, headers) as r:
                if have and r.status != 206:  # server ignored the Range: start over
                    have = 0
                expect = int(r.headers.get("Content-Length") or -1)
                got_bytes = 0
                with open(part, "ab" if have else "wb") as f:
                    while b := r.read(1 << 20):
                        f.write(b)
                        got_bytes += len(b)
                        if max_bytes is not None and have + got_bytes > max_bytes:
                            raise _TooBig(f"{url}: more than {max_bytes / 1e9:g} GB and still sending; stopped (kept "
                                          f"{part}). If the file really is that large, raise --max-file-gb and re-run")
            if 0 <= got_bytes < expect:
                raise OSError(f"connection closed after {got_bytes} of {expect} bytes")
            if md5 is None and (problem := format_problem(part, dest.name)):
                raise DataPrepError(f"{url}: the download is {problem}; no checksum is published for it, so its "
                                    f"format is what is checked. Kept as {part} (a re-run discards and fetches again)")
            if md5 is not None and (got := md5_of(part)) != md5:
                part.unlink()
                last_err = f"md5 mismatch (got {got}, expected {md5})"
                logging.getLogger(__name__).warning("%s: %s; attempt %d/%d", url, last_err, attempt, retries)
                continue
            os.replace(part, dest)
            return "downloaded"
        except DataPrepError:
            raise  # over the size cap, or not the promised format: the same response would come again
        except urllib.error.HTTPError as e:
            if e.code == 416:  # asked for bytes past the end: the .part is complete or bad; restart
                part.unlink(missing_ok=True)
            last_err = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            last_err = str(e) or type(e).__name__
        logging.getLogger(__name__).warning("%s: %s; attempt %d/%d", url, last_err, attempt, retries)
        time.sleep(min(0.2 * attempt, 2.0))
    raise DataPrepError(f"{url}: failed after {retries} attempts ({last_err}); re-run to resume from {part}")


def _mirror(ds: RemoteDataset, base_url: str, timeout: float) -> tuple[RemoteDataset, list[str]]:
    """``--base-url`` may name a mirror of the parent folder (``.../pubmed`` holding ``baseline/`` and
    ``updatefiles/``, as on NCBI) or the folder holding the files itself: try the first, then the second."""
    base = base_url.rstrip("/") + "/"
    sub = ds.base_url.rstrip("/").rsplit("/", 1)[-1]
    errors = []
    for url in (base + sub + "/", base):
        cand = RemoteDataset(url, ds.pattern, ds.md5)
        try:
            return cand, list_remote(cand, timeout)
        except DataPrepError as e:
            errors.append(str(e))
    raise DataPrepError("; ".join(errors))


def run_download(cfg: DownloadConfig) -> dict:
    """Fetch the dataset's files into ``out_dir/<dataset>/``; returns a summary (also written as JSON)."""
    if cfg.dataset not in DATASETS:
        raise DataPrepError(f"unknown dataset {cfg.dataset!r}; choose one of {sorted(DATASETS)}")
    log = logging.getLogger(__name__)
    out = Path(cfg.out_dir) / cfg.dataset
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for ds in DATASETS[cfg.dataset]:
        if cfg.base_url:
            ds, names = _mirror(ds, cfg.base_url, cfg.timeout_s)
        else:
            names = list_remote(ds, cfg.timeout_s)
        md5sums = read_md5sums(ds, cfg.timeout_s) if ds.md5.startswith("md5sums:") else {}
        jobs.extend((ds, n, md5sums) for n in names)
    if cfg.max_files is not None:
        jobs = jobs[: cfg.max_files]

    def one(job):
        ds, name, md5sums = job
        try:
            md5 = expected_md5(ds, name, cfg.timeout_s, md5sums)
            return name, fetch(ds.base_url + name, out / name, md5, cfg.retries, cfg.timeout_s,
                               int(cfg.max_file_gb * 1e9)), None
        except (DataPrepError, urllib.error.URLError, OSError) as e:
            return name, "failed", str(e)

    results = {}
    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        for name, status, err in tqdm(pool.map(one, jobs), total=len(jobs), desc=f"download {cfg.dataset}", unit="file"):
            results[name] = {"status": status, **({"error": err} if err else {})}
    summary = {"dataset": cfg.dataset, "out_dir": str(out), "files": results,
               "counts": {s: sum(1 for r in results.values() if r["status"] == s)
                          for s in ("downloaded", "skipped", "failed")}}
    write_json_atomic(out / "download_summary.json", summary)
    log.info("download: %s", summary["counts"])
    failed = {n: r["error"] for n, r in results.items() if r["status"] == "failed"}
    if failed:
        raise DataPrepError("download failed for: " + "; ".join(f"{n}: {e}" for n, e in failed.items())
                            + " (re-run to resume)")
    return summary
