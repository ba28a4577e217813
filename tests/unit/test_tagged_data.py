"""Entity-tagging data (ort_training/data/tagged.py): CoNLL and JSONL readers and their refusals, sub-token label
alignment, windows over long documents, and seqeval's strict IOB2 entity metrics; real PubMed rows of the
chemical task, WordPiece and byte-level BPE tokenizers."""

import json
from pathlib import Path

import pytest
import torch

from data_prep.downstream import DownstreamConfig, build_task
from data_prep.tokenizer import train_bpe, write_tokenizer_folder
from ort_training.data.hdf5 import IGNORE_INDEX
from ort_training.data.tagged import encode_tagged, read_tagged, tag_set
from ort_training.data.text import TextDataError
from ort_training.export import load_tokenizer
from ort_training.tasks.token_classification import entity_metrics

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "pubmed"


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("chem")
    build_task(DownstreamConfig(task="chemicals", inputs=[str(ASSETS / "pubmed20n0014_sample.xml.gz")], out_dir=out,
                                dev_fraction=0, test_fraction=0))
    return [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizers(rows, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpe")
    (folder / "text.txt").write_text("\n".join(" ".join(r["tokens"]) for r in rows))
    write_tokenizer_folder(folder / "tok", train_bpe([folder / "text.txt"], 1000, True, 2))
    return {"wordpiece": load_tokenizer(ASSETS / "bert-base-uncased-vocab.txt"), "bpe": load_tokenizer(folder / "tok")}


def write_conll(path, docs, sep="\t", extra=""):
    with open(path, "w") as fh:
        fh.write("-DOCSTART-\tO\n\n")
        for r in docs:
            fh.write("".join(f"{w}{sep}{extra}{t}\n" for w, t in zip(r["tokens"], r["tags"])) + "\n")
    return path


def test_conll_and_jsonl_read_the_same_documents(rows, tmp_path):
    docs = rows[:20]
    conll = read_tagged(write_conll(tmp_path / "a.conll", docs))
    spaced = read_tagged(write_conll(tmp_path / "b.iob", docs, sep=" ", extra="NN "))  # extra columns: the tag is the last
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"words": r["tokens"], "ner": r["tags"]}) + "\n" for r in docs))
    jsonl = read_tagged(tmp_path / "c.jsonl", "words", "ner")
    for table in (conll, spaced, jsonl):
        assert table.words == [r["tokens"] for r in docs] and table.tags == [r["tags"] for r in docs]
    assert conll.lines[0] == 3 and jsonl.lines == list(range(1, 21))
    assert tag_set(conll) == ["O", "B-CHEMICAL", "I-CHEMICAL"]


@pytest.mark.parametrize("suffix,body,message", [
    (".conll", "Aspirin\tB-CHEM\nhelps\n", "line 2: expected a word and its tag"),
    (".conll", "Aspirin\tB-CHEM\nhelps\tCHEM\n", "line 2: tag 'CHEM' is not IOB2"),
    (".conll", "the\tO\naspirin\tI-CHEM\n", "line 2: tag 'I-CHEM' follows 'O'"),
    (".jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}\n', "line 1: 2 tokens but 1 tags"),
    (".jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a"], "tags": ["B_X"]}\n', "line 2: tag 'B_X' is not IOB2"),
    (".jsonl", '{"text": "a b", "tags": ["O", "O"]}\n', "line 1: column 'tokens' (--tokens_column) must be a list"),
    (".csv", "a,b\n", "unknown file type '.csv'"),
])
def test_readers_refuse_bad_input_naming_file_and_line(tmp_path, suffix, body, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(body)
    with pytest.raises(TextDataError) as err:
        read_tagged(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_first_subtoken_labels_and_windows_cover_every_word_once(rows, tokenizers, kind):
    tok = tokenizers[kind]
    labels = ["O", "B-CHEMICAL", "I-CHEMICAL"]
    from ort_training.data.tagged import TaggedTable

    table = TaggedTable(Path("x.jsonl"), [r["tokens"] for r in rows[:12]], [r["tags"] for r in rows[:12]], list(range(12)))
    whole = encode_tagged("t", table, labels, tok, 512, "window", 8)
    split = encode_tagged("t", table, labels, tok, 48, "window", 8)
    assert len(whole) == 12 and len(split) > 12 and split.truncated > 0 and split.unreadable_words == 0
    cls, sep = tok.cls_token_id, tok.sep_token_id
    for s in (whole, split):
        for d, (words, tags) in enumerate(zip(table.words, table.tags)):
            windows = torch.nonzero(s.doc_index == d).flatten()
            read = s.word_index[windows]
            # every word is read exactly once, at a position labelled with its own tag
            assert sorted(read[read >= 0].tolist()) == list(range(len(words)))
            at = read >= 0
            assert s.labels[windows][at].tolist() == [labels.index(tags[w]) for w in read[at].tolist()]
            for w in windows.tolist():
                n = int(s.input_mask[w].sum())
                assert s.input_ids[w, 0] == cls and s.input_ids[w, n - 1] == sep and n <= s.input_ids.shape[1]
    # one label per word in a whole-document window: the non-first sub-tokens are ignored
    assert int((whole.labels != IGNORE_INDEX).sum()) == sum(len(w) for w in table.words)
    # the text a word's first sub-token comes from is the word itself
    enc = tok(" ".join(table.words[0]), add_special_tokens=True)
    first = [i for i, w in enumerate(whole.word_index[0].tolist()) if w >= 0]
    assert [tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(enc["input_ids"][i])) for i in first] == whole.input_ids[0, first].tolist()
    everything = encode_tagged("t", table, labels, tok, 512, "window", 8, label_all_subtokens=True)
    real = everything.input_mask.bool() & (everything.input_ids != cls) & (everything.input_ids != sep)
    unlabelled = everything.input_ids[real & (everything.labels == IGNORE_INDEX)].tolist()
    assert all(tok.decode([i]).strip() == "" for i in unlabelled)  # only a byte-level BPE's lone-space tokens belong to no word
    assert not bool(((everything.labels == 1) & (whole.labels == IGNORE_INDEX)).any())  # no B- on a continuation


def test_truncate_keeps_the_first_window_and_counts_the_unread_words(rows, tokenizers):
    from ort_training.data.tagged import TaggedTable

    table = TaggedTable(Path("x.jsonl"), [rows[0]["tokens"]], [rows[0]["tags"]], [1])
    s = encode_tagged("t", table, ["O", "B-CHEMICAL", "I-CHEMICAL"], tokenizers["wordpiece"], 32, "truncate")
    assert len(s) == 1 and s.unreadable_words == len(rows[0]["tokens"]) - int((s.word_index >= 0).sum()) > 0


def test_entity_metrics_are_strict_iob2():
    gold = [["B-CHEM", "I-CHEM", "O", "B-GENE"], ["O", "B-CHEM"]]
    assert entity_metrics(gold, gold)["entity_f1"] == 1.0
    pred = [["B-CHEM", "O", "O", "I-GENE"], ["O", "B-CHEM"]]  # a shorter span and an entity begun with I-: neither counts
    m = entity_metrics(gold, pred)
    assert m["entity_precision"] == 1.0 / 2 and m["entity_recall"] == 1.0 / 3 and m["entities"] == 3
    assert m["per_type"]["CHEM"]["support"] == 2 and m["per_type"]["GENE"]["f1"] == 0.0
    assert m["token_accuracy"] == 4 / 6 and m["documents"] == 2 and m["words"] == 6
