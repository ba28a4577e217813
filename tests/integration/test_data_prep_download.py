"""The download stage against a local HTTP server: md5 verification, resume after a dropped connection,
retry after a wrong checksum, skipping verified files, --max-files."""

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from data_prep.config import DownloadConfig
from data_prep.download import run_download
from data_prep.manifest import DataPrepError

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
