"""The BERT path gives the numbers it gave before the model seam (issue 14): the same per-step losses and
the same exported weights as recorded on the untouched code (tests/guard/bert_reference.json, one record per
torch release), bitwise on the CPU kind that recorded them."""

import json

import pytest
from guard.bert_guard import CASES, GUARD_FILE, cpu_capability, run_case, stack_key

REFERENCES = json.loads(GUARD_FILE.read_text())


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.ort) if CASES[n][0] == "ort" else n for n in CASES])
def test_bert_path_unchanged(tmp_path, name):
    if stack_key() not in REFERENCES:
        pytest.skip(f"no guard values recorded for torch {stack_key()} (recorded: {', '.join(REFERENCES)}); "
                    "record them from the code before the change with tests/guard/bert_guard.py --write")
    reference = REFERENCES[stack_key()]
    want = reference["cases"][name]
    got = run_case(tmp_path, *CASES[name])
    if cpu_capability() == reference["recorded_with"]["cpu_capability"]:
        assert got["steps"] == want["steps"]
        assert got["sha256"] == want["sha256"], "the exported weights differ bitwise from the recorded run"
        return
    # Another SIMD level rounds differently: the values must then agree to float32 noise.
    assert len(got["steps"]) == len(want["steps"]) == 7  # both phases
    for step, (g, w) in enumerate(zip(got["steps"], want["steps"]), start=1):
        assert g == pytest.approx(w, rel=1e-5, abs=1e-7), f"step {step}"
    for tensor, stats in want["tensor_stats"].items():
        assert got["tensor_stats"][tensor] == pytest.approx(stats, rel=1e-4, abs=1e-6), tensor
