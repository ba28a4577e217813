"""The download stage against a local HTTP server: md5 verification, resume after a dropped connection,
retry after a wrong checksum, skipping verified files, --max-files; format checks where no checksum is
published (PMC OA), Wikipedia's checksum list, the size cap (issue 10 #8); a PMC OA bundle end to end (#7)."""

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from data_prep.config import DownloadConfig
from data_prep.download import run_download
from data_prep.manifest import DataPrepError

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

ASSETS = Path(__file__).parents[1] / "assets" / "pubmed"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files
        self.drop_once: set[str] = set()  # names whose first full GET dies half-way
        self.corrupt_once: set[str] = set()  # names served with flipped bytes the first time
        self.log: list[tuple[str, str]] = []
        self.root = "/"  # the folder that holds the files; anything else is 404
        self.endless: set[str] = set()  # names answered with a body that never ends (no Content-Length)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        srv = self.server
        if not self.path.startswith(srv.root) or "/" in self.path[len(srv.root):]:
            return self._send(404, b"")
        name = self.path.rsplit("/", 1)[-1]
        if self.path.endswith("/"):
            body = "".join(f'<a href="{n}">{n}</a>\n' for n in srv.files).encode()
            return self._send(200, body)
        if name in srv.endless:
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"\x1f\x8b" + b"\0" * 65534)
            except OSError:  # the client hung up
                return
        if name not in srv.files:
            return self._send(404, b"")
        data = srv.files[name]
        rng = self.headers.get("Range")
        srv.log.append((name, rng or ""))
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if name in srv.corrupt_once and not rng:
            srv.corrupt_once.discard(name)
            data = bytes(b ^ 0xFF for b in data[:10]) + data[10:]
        if name in srv.drop_once and not rng:
            srv.drop_once.discard(name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # drop the connection mid-body
            return
        if start:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def _send(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    a = ASSETS / "pubmed20n0014_sample.xml.gz"
    files = {}
    for i in range(3):
        data = a.read_bytes() + bytes([i])  # three distinct real-sized files
        name = f"pubmed25n000{i + 1}.xml.gz"
        files[name] = data
        files[name + ".md5"] = f"MD5({name})= {hashlib.md5(data).hexdigest()}\n".encode()
    srv = _Server(files)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _cfg(srv, out, **kw):
    return DownloadConfig(dataset="pubmed-baseline", out_dir=out, base_url=f"http://127.0.0.1:{srv.server_port}/",
                          workers=2, retries=3, timeout_s=10, **kw)


def test_download_verify_resume_and_skip(server, tmp_path):
    server.drop_once.add("pubmed25n0002.xml.gz")
    server.corrupt_once.add("pubmed25n0003.xml.gz")
    s = run_download(_cfg(server, tmp_path))
    assert s["counts"] == {"downloaded": 3, "skipped": 0, "failed": 0}
    out = tmp_path / "pubmed-baseline"
    for name in ("pubmed25n0001.xml.gz", "pubmed25n0002.xml.gz", "pubmed25n0003.xml.gz"):
        assert (out / name).read_bytes() == server.files[name]
    assert not list(out.glob("*.part"))
    # The dropped file resumed with a Range request rather than starting over.
    assert any(n == "pubmed25n0002.xml.gz" and r.startswith("bytes=") and r != "bytes=0-" for n, r in server.log)
    # Verified files are skipped on a second run.
    server.log.clear()
    s = run_download(_cfg(server, tmp_path))
    assert s["counts"]["skipped"] == 3 and not [n for n, _ in server.log if not n.endswith(".md5")]


def test_max_files_and_persistent_checksum_failure(server, tmp_path):
    s = run_download(_cfg(server, tmp_path, max_files=1))
    assert list(s["files"]) == ["pubmed25n0001.xml.gz"]
    server.files["pubmed25n0002.xml.gz.md5"] = b"MD5(pubmed25n0002.xml.gz)= " + b"0" * 32 + b"\n"
    with pytest.raises(DataPrepError, match=r"pubmed25n0002.xml.gz.*md5 mismatch"):
        run_download(_cfg(server, tmp_path / "b"))
    assert not (tmp_path / "b" / "pubmed-baseline" / "pubmed25n0002.xml.gz").exists()
    assert (tmp_path / "b" / "pubmed-baseline" / "pubmed25n0003.xml.gz").exists()  # the others still finished


def test_base_url_may_be_the_parent_folder_or_the_files_folder(server, tmp_path):
    """NCBI's layout is <mirror>/pubmed/baseline/<files>; either folder works as --base-url."""
    server.root = "/pubmed/baseline/"
    for i, base in enumerate(("pubmed", "pubmed/baseline/")):
        s = run_download(DownloadConfig(dataset="pubmed-baseline", out_dir=tmp_path / str(i), max_files=1, workers=1,
                                        base_url=f"http://127.0.0.1:{server.server_port}/{base}", timeout_s=10))
        assert s["counts"]["downloaded"] == 1
    with pytest.raises(DataPrepError, match="cannot list"):
        run_download(DownloadConfig(dataset="pubmed-baseline", out_dir=tmp_path / "x",
                                    base_url=f"http://127.0.0.1:{server.server_port}/elsewhere", timeout_s=10))


PMC = "oa_comm_xml.PMC000xxxxxx.baseline.2024-06-18.tar.gz"


def _pmc_bundle() -> bytes:
    import io
    import tarfile

    from data_prep.corpora.pubmed import bundled_pmc_files

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for f in bundled_pmc_files()[:3]:
            tar.add(f, arcname=f"PMC000xxxxxx/{f.name}")
    return buf.getvalue()


def _only(server, files: dict[str, bytes]):
    server.files.clear()
    server.files.update(files)


def test_pmc_oa_error_page_is_refused_then_the_bundle_goes_end_to_end(server, tmp_path):
    from data_prep.config import FormatConfig
    from data_prep.formatting import run_format

    _only(server, {PMC: b"<!DOCTYPE html><html><body>503 Service Unavailable</body></html>"})
    cfg = DownloadConfig(dataset="pmc-oa", out_dir=tmp_path, base_url=f"http://127.0.0.1:{server.server_port}/",
                         workers=1, timeout_s=10)
    with pytest.raises(DataPrepError, match=r"not a gzip file: it starts with '<!DOCTYPE html>.*HTML page"):
        run_download(cfg)
    out = tmp_path / "pmc-oa"
    assert not (out / PMC).exists() and (out / (PMC + ".part")).exists()  # not taken for finished; .part kept
    server.files[PMC] = _pmc_bundle()
    assert run_download(cfg)["counts"]["downloaded"] == 1  # the error page in the .part is discarded, not resumed
    assert (out / PMC).read_bytes() == server.files[PMC]
    assert run_download(cfg)["counts"]["skipped"] == 1
    s = run_format(FormatConfig(corpus="pmc", inputs=[out], out_dir=tmp_path / "text"))
    assert s["documents"] == 3 and s["files"] == ["oa_comm_xml.PMC000xxxxxx.baseline.2024-06-18.txt"]


def test_wikipedia_needs_its_checksum_list_and_an_entry_in_it(server, tmp_path):
    import bz2

    dump = bz2.compress(b"<mediawiki></mediawiki>")
    name = "enwiki-latest-pages-articles.xml.bz2"
    _only(server, {name: dump})
    cfg = DownloadConfig(dataset="wikipedia", out_dir=tmp_path, base_url=f"http://127.0.0.1:{server.server_port}/",
                         workers=1, timeout_s=10)
    with pytest.raises(DataPrepError, match=r"cannot fetch the checksum list .*enwiki-latest-md5sums.txt \(HTTP Error 404"):
        run_download(cfg)
    server.files["enwiki-latest-md5sums.txt"] = f"{hashlib.md5(b'x').hexdigest()}  enwiki-latest-other.xml.bz2\n".encode()
    with pytest.raises(DataPrepError, match=r"enwiki-latest-pages-articles.xml.bz2 is not in .*md5sums.txt .*cannot be verified"):
        run_download(cfg)
    assert not (tmp_path / "wikipedia" / name).exists()
    server.files["enwiki-latest-md5sums.txt"] += f"{hashlib.md5(dump).hexdigest()}  {name}\n".encode()
    assert run_download(cfg)["counts"]["downloaded"] == 1


def test_endless_body_stops_at_the_size_cap(server, tmp_path):
    _only(server, {PMC: b""})
    server.endless.add(PMC)
    cfg = DownloadConfig(dataset="pmc-oa", out_dir=tmp_path, base_url=f"http://127.0.0.1:{server.server_port}/",
                         workers=1, timeout_s=10, max_file_gb=0.002)
    with pytest.raises(DataPrepError, match=r"more than 0.002 GB and still sending; stopped .*--max-file-gb"):
        run_download(cfg)
    part = tmp_path / "pmc-oa" / (PMC + ".part")
    assert 2_000_000 < part.stat().st_size <= 2_000_000 + (1 << 20) and not (tmp_path / "pmc-oa" / PMC).exists()
