"""Issue 15, the input-facing failure classes, by fault injection through the real CLI (`python -m data_prep`):
inputs that reach into themselves or outside (1), vocab bytes two loaders would read differently (2), the
environment saying no (7: a full disk on a real tmpfs, a read-only folder, a file in the way), and size (8).
Each asserts the exit code, one line naming the file or flag, no traceback, and that earlier stages' outputs are
intact. docs/refused_inputs.md lists these refusals."""

from __future__ import annotations

import codecs
import contextlib
import gzip
import json
import subprocess
from pathlib import Path

import h5py
import pytest
from cli_runs import notes_corpus, run_data_prep as _run

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

ROOT = Path(__file__).parents[2]
ASSETS = ROOT / "tests" / "assets" / "pubmed"
VOCAB = ASSETS / "bert-base-uncased-vocab.txt"
PHASE = ["--max-seq-lengths", "64", "--max-predictions", "10", "--dupe-factor", "1", "--processes", "1"]


def _error_line(p: subprocess.CompletedProcess) -> str:
    """The run's one error line; no traceback and no HDF5 destructor noise anywhere in stderr."""
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr, p.stderr[-3000:]
    lines = [x for x in p.stderr.splitlines() if "error:" in x]
    assert len(lines) == 1, p.stderr[-3000:]
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file() and f.name != ".lock"}



@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """A finished shard folder (format + shard) for the stages under test; each test checks it is left unchanged."""
    w = tmp_path_factory.mktemp("earlier_stages")
    _run("format", "--input", ASSETS / "pubmed20n0014_sample.xml.gz", "--out-dir", w / "text")
    _run("shard", "--text-dir", w / "text", "--out-dir", w / "shards", "--num-shards", "1", "--test-fraction", "0",
         "--splitter", "blingfire")
    return w / "shards"


@contextlib.contextmanager
def _tmpfs(where: Path, size: str, *options: str):
    """A real small (or read-only) file system; skipped, with the reason, where mounting is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    opts = ",".join((f"size={size}",) + options)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(p.stderr or p.stdout).strip()[:200]}); a disk-full test needs one")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


# --- class 1: inputs that reach into themselves or outside -----------------------------------------------------

def test_a_work_dir_inside_the_input_folder_is_never_read_back(tmp_path):
    corpus = tmp_path / "notes"
    notes_corpus(corpus)
    w = corpus / "work"
    args = ["all", "--corpus", "text", "--input", corpus, "--work-dir", w, "--vocab-file", VOCAB, "--num-shards", "1",
            "--test-fraction", "0.2", "--splitter", "blingfire", *PHASE]
    _run(*args)
    first = json.loads((w / "text" / "manifest.json").read_text())
    p = _run(*args)  # the rerun sees text/, shards/ (test shards too) and vocab/vocab.txt under its --input
    again = json.loads((w / "text" / "manifest.json").read_text())
    assert again["documents"] == first["documents"] == 60 and again["files"] == first["files"]
    (warning,) = [x for x in p.stderr.splitlines() if "leaving out" in x]
    assert str(w / "shards") in warning and str(w / "text") in warning

    before = _snapshot(w / "text")
    p = _run("all", "--corpus", "text", "--input", w / "shards", "--work-dir", w, "--vocab-file", VOCAB, check=False)
    assert p.returncode == 2
    assert f"--input {w / 'shards'}: inside {w / 'shards'}, an output folder of this run" in _error_line(p)
    assert _snapshot(w / "text") == before


def test_folder_and_file_symlinks_are_followed_alike_and_loops_end(tmp_path):
    real = tmp_path / "real"
    notes_corpus(real / "a", files=1)
    notes_corpus(real / "b", files=2)
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "folder_link").symlink_to(real / "a")  # a folder symlink: skipped by rglob before, followed now
    (inp / "file_link.txt").symlink_to(real / "b" / "notes_1.txt")
    (inp / "loop").symlink_to(inp)  # a link to its own parent: walked once, no endless listing
    p = _run("format", "--corpus", "text", "--input", inp, "--out-dir", tmp_path / "text")
    assert "(60 documents)" in p.stdout, p.stdout
    m = json.loads((tmp_path / "text" / "manifest.json").read_text())
    assert sorted(v["input"] for v in m["per_file"].values()) == [str(inp / "file_link.txt"),
                                                                    str(inp / "folder_link" / "notes_0.txt")]

    (inp / "dangling.txt").symlink_to(tmp_path / "gone.txt")
    p = _run("format", "--corpus", "text", "--input", inp, "--out-dir", tmp_path / "text", check=False)
    assert p.returncode == 2
    assert f"{inp / 'dangling.txt'}: a symbolic link to {tmp_path / 'gone.txt'}, which does not exist" in _error_line(p)


def test_trainer_listing_follows_folder_links_and_refuses_hdf5_links_outside_input_dir(tmp_path, shards):
    """The trainer's --input_dir listing uses the same rule; an HDF5 external link or virtual dataset that reads a file
    outside --input_dir is refused naming that file (found through h5py's link API, never followed)."""
    from ort_training.data.hdf5 import DataError, list_hdf5_files

    w = tmp_path / "w"
    _run("hdf5", "--shard-dir", shards, "--vocab-file", VOCAB, "--out-dir", w, *PHASE)
    (src,) = [f for f in w.rglob("*.hdf5") if not f.name.startswith(".")]
    linked = tmp_path / "linked_input"
    linked.mkdir()
    (linked / "phase").symlink_to(src.parent, target_is_directory=True)
    assert list_hdf5_files(linked) == [linked / "phase" / src.name]

    outside = tmp_path / "elsewhere" / "secret.hdf5"
    outside.parent.mkdir()
    outside.write_bytes(src.read_bytes())
    for kind in ("external", "virtual"):
        d = tmp_path / kind
        d.mkdir()
        with h5py.File(src, "r") as s, h5py.File(d / "pubmed_training_0.hdf5", "w") as f:
            for k in s:
                if k != "input_ids":
                    f[k] = s[k][:]
                elif kind == "external":
                    f[k] = h5py.ExternalLink(str(outside), "input_ids")
                else:
                    layout = h5py.VirtualLayout(shape=s[k].shape, dtype=s[k].dtype)
                    layout[:] = h5py.VirtualSource(str(outside), "input_ids", shape=s[k].shape)
                    f.create_virtual_dataset(k, layout)
        with pytest.raises(DataError, match=f"dataset 'input_ids' is .*{outside}, outside {d}"):
            list_hdf5_files(d)
        (d / "secret.hdf5").write_bytes(src.read_bytes())  # the same link to a file inside --input_dir is fine
        with h5py.File(d / "pubmed_training_0.hdf5", "a") as f:
            del f["input_ids"]
            f["input_ids"] = h5py.ExternalLink("secret.hdf5", "input_ids")
        assert len(list_hdf5_files(d)) == 1


# --- class 2: vocab lines that data_prep and BertTokenizerFast would read differently -----------------------------

def _vocab_variant(tmp_path: Path, kind: str) -> Path:
    tokens = VOCAB.read_text(encoding="utf-8").split("\n")[:-1]
    if kind == "space":
        tokens[2000] = f" {tokens[2000]} "
    elif kind == "empty":
        tokens[2000] = ""
    elif kind == "duplicate":
        tokens[2000] = tokens[1500]
    body = ("\r\n" if kind == "crlf" else "\n").join(tokens) + ("\r\n" if kind == "crlf" else "\n")
    path = tmp_path / f"vocab_{kind}.txt"
    path.write_bytes((codecs.BOM_UTF8 if kind == "bom" else b"") + body.encode("utf-8"))
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("bom", "line 1 starts with a UTF-8 byte-order mark"),
    ("space", "line 2001 has surrounding whitespace in ' "),
    ("empty", "line 2001 is empty"),
    ("duplicate", "line 2001 repeats"),
])
def test_ambiguous_vocab_lines_are_refused_by_data_prep_and_the_export_alike(tmp_path, shards, kind, message):
    from ort_training.export import load_tokenizer

    before = _snapshot(shards)
    vocab = _vocab_variant(tmp_path, kind)
    p = _run("hdf5", "--shard-dir", shards, "--vocab-file", vocab, "--out-dir", tmp_path / "out", *PHASE, check=False)
    assert p.returncode == 2
    line = _error_line(p)
    assert str(vocab) in line and message in line, line
    assert _snapshot(shards) == before and not list((tmp_path / "out").rglob("*.hdf5"))
    with pytest.raises(ValueError, match=message.replace("'", ".")):  # fine-tuning and the export load it here
        load_tokenizer(vocab)


def test_crlf_vocab_gives_the_same_ids_in_data_prep_and_the_export(tmp_path):
    from data_prep.tokenizer import load_tokenizer as data_prep_tokenizer
    from ort_training.export import load_tokenizer, tokenizer_size

    vocab = _vocab_variant(tmp_path, "crlf")
    text = "The patients received i.v. doxorubicin; tumour response was assessed."
    assert data_prep_tokenizer(vocab).tokenizer.encode(text).ids == load_tokenizer(vocab)(text)["input_ids"]
    assert tokenizer_size(vocab) == 30522


# --- class 7: the environment says no -----------------------------------------------------------------------------

def test_full_disk_while_writing_hdf5_is_one_line_and_leaves_nothing_half_written(tmp_path, shards):
    """Before: 24 h5py destructor tracebacks, then a segfault (exit 139). Now: exit 2, one line naming the file."""
    before = _snapshot(shards)
    with _tmpfs(tmp_path / "small", "256k") as small:
        p = _run("hdf5", "--shard-dir", shards, "--vocab-file", VOCAB, "--out-dir", small, "--max-seq-lengths", "128",
                 "--max-predictions", "20", "--processes", "1", check=False)
        assert p.returncode == 2, p.stderr[-2000:]
        line = _error_line(p)
        assert line.startswith("error: no space left on device while writing ") and str(small) in line, line
        assert not [f for f in small.rglob("*") if f.is_file() and f.name != ".lock"]  # no temporary left behind
    assert _snapshot(shards) == before


def test_read_only_output_folder_and_a_file_in_the_way_are_one_line(tmp_path, shards):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    p = _run("hdf5", "--shard-dir", shards, "--vocab-file", VOCAB, "--out-dir", blocker, *PHASE, check=False)
    assert p.returncode == 2 and f"--out-dir {blocker}: is a file, not a folder" in _error_line(p)
    p = _run("all", "--input", ASSETS / "update_sample.xml", "--vocab-file", VOCAB, "--work-dir", blocker / "w", check=False)
    assert p.returncode == 2 and f"--work-dir {blocker / 'w'}: is inside {blocker}, which is a file" in _error_line(p)
    (tmp_path / "w2").mkdir()
    (tmp_path / "w2" / "shards").write_text("a file where a stage folder goes")
    p = _run("all", "--input", ASSETS / "update_sample.xml", "--vocab-file", VOCAB, "--work-dir", tmp_path / "w2", *PHASE,
             check=False)
    assert p.returncode == 2 and "a file is in the way while writing" in _error_line(p)
    assert (tmp_path / "w2" / "text" / "manifest.json").is_file()  # the format stage before it is finished and kept
    with _tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        p = _run("hdf5", "--shard-dir", shards, "--vocab-file", VOCAB, "--out-dir", ro / "out", *PHASE, check=False)
        assert p.returncode == 2 and f"error: read-only file system while writing {ro / 'out'}" in _error_line(p)


def test_full_disk_while_saving_a_checkpoint_is_enospc_naming_it_and_keeps_the_last_one(tmp_path):
    import errno

    import torch

    from ort_training.loop.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

    with _tmpfs(tmp_path / "small", "1m") as out:
        save_checkpoint(out, 1, {"w": torch.ones(1000)}, keep=2)
        with pytest.raises(OSError) as info:  # torch.save(path) said "unexpected pos 384 vs 342"
            save_checkpoint(out, 2, {"w": torch.zeros(1_000_000)}, keep=2)
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(out / "checkpoints" / "step-2" / "checkpoint.pt")
        assert [s for s, _ in list_checkpoints(out)] == [1]
        assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
        assert torch.equal(load_checkpoint(out)["w"], torch.ones(1000))


# --- class 8: size ------------------------------------------------------------------------------------------------

def _medline(path: Path, abstracts: list[str]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('<?xml version="1.0"?>\n<PubmedArticleSet>\n')
        for i, a in enumerate(abstracts, 1):
            f.write(f"<PubmedArticle><MedlineCitation><PMID>{i}</PMID><Article><ArticleTitle>Title {i}.</ArticleTitle>"
                    f"<Abstract>{a}</Abstract></Article></MedlineCitation></PubmedArticle>\n")
        f.write("</PubmedArticleSet>\n")


def test_oversized_documents_are_skipped_and_counted_and_huge_text_nodes_refused(tmp_path):
    sentence = "The patient received the drug and improved over two weeks of therapy. "
    normal = f"<AbstractText>{sentence * 3}</AbstractText>"
    big = "".join(f"<AbstractText>{sentence * 1000}</AbstractText>" for _ in range(20))  # 1.4 M chars in sections
    (tmp_path / "in").mkdir()
    _medline(tmp_path / "in" / "a.xml.gz", [normal, big, normal])
    with open(tmp_path / "in" / "b.jsonl", "w") as f:
        for text in ("A normal note about the patient.", "x" * 7_000_000, "Another normal note."):
            f.write(json.dumps({"text": text}) + "\n")
    p = _run("format", "--input", tmp_path / "in" / "a.xml.gz", "--out-dir", tmp_path / "t1")
    assert "(2 documents)" in p.stdout
    assert json.loads((tmp_path / "t1" / "manifest.json").read_text())["skipped"] == {"over_max_document_chars": 1}
    p = _run("format", "--corpus", "jsonl", "--input", tmp_path / "in" / "b.jsonl", "--out-dir", tmp_path / "t2",
             "--max-document-chars", "1000")
    assert "(2 documents)" in p.stdout
    assert json.loads((tmp_path / "t2" / "manifest.json").read_text())["skipped"] == {"over_max_document_chars": 1}

    _medline(tmp_path / "bomb.xml.gz", [normal, f"<AbstractText>{sentence * 160_000}</AbstractText>"])  # 11 MB node
    p = _run("format", "--input", tmp_path / "bomb.xml.gz", "--out-dir", tmp_path / "t1", check=False)
    assert p.returncode == 2
    assert f"{tmp_path / 'bomb.xml.gz'}: a text node over libxml2's 10 MB limit" in _error_line(p)
    assert json.loads((tmp_path / "t1" / "manifest.json").read_text())["documents"] == 2  # the earlier output stays


def test_long_documents_are_split_in_bounded_pieces_before_sentence_splitting(tmp_path):
    from data_prep.text import make_splitter, pieces

    text = " ".join(f"Sentence {i} reports a dose of {i} mg given i.v. to the patient." for i in range(20_000))
    cut = list(pieces(text, 5000))
    assert max(map(len, cut)) <= 5000 and " ".join(cut) == text
    split = make_splitter("punkt", piece_chars=5000)
    sents = split(text)
    assert len(sents) >= 20_000 and max(map(len, sents)) < 5000

    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "long.txt").write_text(text + "\n")
    outs = []
    for run in ("a", "b"):
        _run("shard", "--text-dir", tmp_path / "text", "--out-dir", tmp_path / run, "--num-shards", "1", "--test-fraction",
             "0", "--piece-chars", "5000")
        outs.append((tmp_path / run / "pubmed_training_0.txt").read_text())
    assert outs[0] == outs[1] and max(map(len, outs[0].splitlines())) <= 5000
    p = _run("shard", "--text-dir", tmp_path / "text", "--out-dir", tmp_path / "c", "--piece-chars", "10", check=False)
    assert p.returncode == 2 and "--piece-chars 10: must be >= 1000" in p.stderr

