"""benchmarks/bench_backends.py --sweep: every (architecture, attention, length) row, a verdict per
(architecture, length) against what the models package says `auto` picks, and the memory-growth summary.
Machinery only: nothing here asserts a speed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ort_training.models import FAMILIES

REPO = Path(__file__).resolve().parents[2]
TINY = ["--layers", "1", "--hidden", "32", "--heads", "2", "--vocab_size", "101", "--steps", "1", "--warmup", "1"]


def load():
    spec = importlib.util.spec_from_file_location("bench_backends", REPO / "benchmarks" / "bench_backends.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sweep_has_every_row_and_a_verdict_per_arch_and_length(tmp_path):
    bench = load()
    out = tmp_path / "sweep.json"
    # 640 > BERT's usual 512 positions: the sweep's config must raise the position table.
    report = bench.main(["--sweep", "--in_process", "--device", "cpu", "--lengths", "32,640", "--tokens", "640", *TINY,
                         "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = report["results"]
    swept = {arch: FAMILIES[arch] for arch in bench.SWEEP_ARCHS}  # the masked-LM families (the sweep's step)
    expected = {(arch, att, n) for arch, fam in swept.items() for att in fam.attention["eager"] for n in (32, 640)}
    assert {(r["arch"], r["attention"], r["seq_len"]) for r in rows} == expected
    for r in rows:
        assert "error" not in r, r
        assert r["tokens_per_s"] > 0 and r["batch"] == 640 // r["seq_len"] and r["max_pred"] == round(0.15 * r["seq_len"])
    verdicts = {(v["arch"], v["seq_len"]): v for v in report["verdicts"]}
    assert set(verdicts) == {(arch, n) for arch in swept for n in (32, 640)}
    for (arch, n), v in verdicts.items():
        assert v["auto"] == FAMILIES[arch].resolve_attention("auto", "eager", "cpu", n)
        assert v["faster"] in FAMILIES[arch].attention["eager"]
        assert v["verdict"].startswith(("OK", "AUTO SLOWER"))
    md = out.with_suffix(".md").read_text()
    assert md.count("\n| bert | ") + md.count("\n| modernbert | ") >= len(verdicts)
    assert report["meta"]["auto"] == {arch: {str(n): FAMILIES[arch].resolve_attention("auto", "eager", "cpu", n) for n in (32, 640)}
                                      for arch in swept}


def test_verdicts_and_memory_growth_from_fixed_figures():
    bench = load()

    def row(arch, att, n, tps, mem):
        return {"arch": arch, "attention": att, "seq_len": n, "batch": 4096 // n, "tokens_per_s": tps, "peak_mem_mib": mem}

    rows = [row("bert", "eager", 512, 100, 400), row("bert", "sdpa", 512, 80, 300),   # auto (eager) faster
            row("bert", "eager", 1024, 97, 800), row("bert", "sdpa", 1024, 100, 300),  # auto 3% slower: noise
            row("bert", "eager", 2048, 50, 1600), row("bert", "sdpa", 2048, 100, 300)]  # auto 2x slower
    v = bench.attention_verdicts(rows, {"bert": {512: "eager", 1024: "eager", 2048: "eager"}}, tolerance=0.05)
    assert [x["ok"] for x in v] == [True, True, False]
    assert v[0]["verdict"].startswith("OK: auto -> eager, the faster (1.25x sdpa)")
    assert v[1]["verdict"].startswith("OK within noise")
    assert v[2]["verdict"].startswith("AUTO SLOWER") and v[2]["faster"] == "sdpa"
    growth = {g["attention"]: g for g in bench.memory_growth(rows, tolerance=0.05)}
    # Fixed tokens: constant peak = memory linear in length per sequence; doubling per doubling = quadratic.
    assert growth["sdpa"]["per_sequence_exponent"] == 1.0 and growth["sdpa"]["linear"]
    assert growth["eager"]["per_sequence_exponent"] == 2.0 and not growth["eager"]["linear"]
    assert [s["ratio_per_doubling"] for s in growth["eager"]["steps"]] == [2.0, 2.0]


def test_sweep_refuses_an_attention_the_family_cannot_run():
    bench = load()
    with pytest.raises(SystemExit, match="runs eager, sdpa under the eager backend"):
        bench.main(["--sweep", "--in_process", "--archs", "bert", "--attentions", "flash", "--lengths", "16", *TINY])
