"""One tokenizer loader for every data_prep stage (vocab.txt, tokenizer.json, tokenizer folder), the vocab
stage's byte-level BPE, and the one-line refusals of bad tokenizer inputs."""

import json
from pathlib import Path

import pytest

from data_prep.config import VocabConfig
from data_prep.manifest import DataPrepError
from data_prep.tokenizer import load_tokenizer, run_vocab, wordpiece_vocab_file

ASSETS = Path(__file__).parents[1] / "assets" / "pubmed"
VOCAB = ASSETS / "bert-base-uncased-vocab.txt"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from data_prep.corpora import Document
    from data_prep.corpora.pubmed import read_medline_xml

    d = tmp_path_factory.mktemp("shards")
    docs = [r.text for r in read_medline_xml(ASSETS / "pubmed20n0014_sample.xml.gz") if isinstance(r, Document)]
    (d / "pubmed_training_0.txt").write_text("\n\n".join(docs) + "\n")
    return d


@pytest.fixture(scope="module")
def bpe_dir(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("bpe")
    run_vocab(VocabConfig(shard_dir=shards, out_dir=out, tokenizer_type="bpe", vocab_size=800, lower_case=False))
    return out


def test_wordpiece_vocab_txt():
    t = load_tokenizer(VOCAB)
    assert (t.kind, t.vocab_size, t.cls_id, t.sep_id, t.pad_id, t.mask_id) == ("WordPiece", 30522, 101, 102, 0, 103)
    assert t.vocab_txt == VOCAB and len(t.special_ids) > 900  # [PAD].. and every [unusedN]: never masked
    assert t.tokenizer.encode("the cell", add_special_tokens=False).ids == [1996, 3526]
    assert wordpiece_vocab_file(VOCAB) == VOCAB


def test_bpe_trained_is_a_transformers_tokenizer_folder(bpe_dir, shards, tmp_path):
    from transformers import AutoTokenizer

    # transformers 5 keeps the special tokens in tokenizer_config.json and writes no special_tokens_map.json
    assert {p.name for p in bpe_dir.iterdir()} - {"special_tokens_map.json"} == {"manifest.json", "tokenizer.json", "tokenizer_config.json"}
    hf = AutoTokenizer.from_pretrained(str(bpe_dir))
    assert [hf.pad_token, hf.unk_token, hf.cls_token, hf.sep_token, hf.mask_token] == \
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert [hf.pad_token_id, hf.cls_token_id, hf.sep_token_id, hf.mask_token_id] == [0, 2, 3, 4]
    ids = hf("Cells were treated.")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3 and hf.decode(ids[1:-1]) == "Cells were treated."  # byte-level, cased
    t = load_tokenizer(bpe_dir)
    assert (t.kind, t.cls_id, t.sep_id, t.pad_id, t.mask_id, t.special_ids) == ("BPE", 2, 3, 0, 4, (0, 1, 2, 3, 4))
    assert t.vocab_txt is None and t.folder == bpe_dir and load_tokenizer(bpe_dir / "tokenizer.json").sha256 == t.sha256
    assert json.loads((bpe_dir / "manifest.json").read_text())["tokenizer_kind"] == "BPE"
    # Same shards, same settings: the same tokenizer, byte for byte.
    again = tmp_path / "again"
    run_vocab(VocabConfig(shard_dir=shards, out_dir=again, tokenizer_type="bpe", vocab_size=800, lower_case=False))
    assert (again / "tokenizer.json").read_bytes() == (bpe_dir / "tokenizer.json").read_bytes()
    # Adopting it elsewhere copies the folder's files; switching the folder to WordPiece drops them.
    m = run_vocab(VocabConfig(out_dir=again, vocab_file=bpe_dir))
    assert m["source"] == "file" and (again / "tokenizer_config.json").is_file()
    run_vocab(VocabConfig(out_dir=again, vocab_file=VOCAB))
    assert sorted(p.name for p in again.iterdir()) == ["manifest.json", "vocab.txt"]


def test_hdf5_stage_refuses_bpe_in_one_clear_line(bpe_dir):
    with pytest.raises(DataPrepError, match=r"^--vocab-file .*tokenizer.json: a BPE tokenizer.json, but the hdf5 stage "
                                            r"needs a WordPiece vocab.txt .*`python -m data_prep packed`"):
        wordpiece_vocab_file(bpe_dir)


def _tokenizer_json(path: Path, tokens: list[str]) -> Path:
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[0])).save(str(path))
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: d / "missing", r"--tokenizer {d}/missing: no such file or folder"),
    (lambda d: d, r"--tokenizer {d}: a folder with neither tokenizer.json .* nor vocab.txt"),
    (lambda d: (d / "t.json").write_text('{"not": "a tokenizer"}') and d / "t.json",
     r"--tokenizer {d}/t.json: not a Hugging Face tokenizer.json \("),
    (lambda d: _tokenizer_json(d / "tokenizer.json", ["<unk>", "<s>", "</s>", "<pad>", "x"]),
     r"--tokenizer {d}/tokenizer.json: the tokenizer lacks \[MASK\] or <mask>; masked-LM data needs"),
    (lambda d: (d / "notes.txt").write_text("hello\nworld\n") and d / "notes.txt",
     r"--tokenizer: vocab file {d}/notes.txt lacks the special tokens"),
    (lambda d: (d / "b.bin").write_bytes(b"\xff\xfe\x00\x01") and d / "b.bin", r"--tokenizer: vocab file {d}/b.bin: line 1: not UTF-8"),
])
def test_bad_tokenizer_inputs_name_the_flag_and_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(DataPrepError, match="^" + message.format(d=tmp_path)):
        load_tokenizer(path, flag="--tokenizer")


def test_roberta_style_special_names_are_accepted(tmp_path):
    t = load_tokenizer(_tokenizer_json(tmp_path / "tokenizer.json", ["<unk>", "<s>", "</s>", "<pad>", "<mask>", "x"]))
    assert (t.cls_id, t.sep_id, t.pad_id, t.mask_id, t.vocab_size) == (1, 2, 3, 4, 6)


def test_a_bert_folder_gives_its_vocab_txt_to_the_wordpiece_paths(tmp_path):
    from data_prep.tokenizer import write_vocab

    bert = tmp_path / "bert"
    bert.mkdir()
    write_vocab(bert, VOCAB.read_text().splitlines(), lower_case=True)  # vocab.txt + a WordPiece tokenizer.json
    t = load_tokenizer(bert)
    assert t.kind == "WordPiece" and t.source.name == "tokenizer.json" and t.wordpiece_vocab == bert / "vocab.txt"
    assert wordpiece_vocab_file(bert) == bert / "vocab.txt"
    m = run_vocab(VocabConfig(out_dir=tmp_path / "v", vocab_file=bert))
    assert m["vocab_size"] == 30522 and sorted(p.name for p in (tmp_path / "v").iterdir()) == ["manifest.json", "vocab.txt"]
