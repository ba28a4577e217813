"""--export_onnx after an ORTModule run in the same process gives an ONNX file plain onnxruntime runs.

ORTModule registers its training symbolics (ATen fallbacks, com.microsoft losses) in torch.onnx for the
whole process; before the fix the export then held `org.pytorch.aten::ATen` nodes and a fresh
onnxruntime failed with "ATenOperatorExecutor is not initialized". The HF folder here has no tokenizer
(no --vocab_file), which the export must not need.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from ort_training.data.synthetic import tiny_setup
from ort_training.export import export_onnx_model, nonstandard_ops, standard_onnx_symbolics, verify_onnx
from ort_training.run_pretraining import main as pretrain_main

pytestmark = [pytest.mark.ort, pytest.mark.onnx]

VOCAB = 1003


@pytest.fixture(scope="module")
def ort_run(tmp_path_factory):
    from ort_training.loop.backends import import_ortmodule

    try:
        import_ortmodule()
    except RuntimeError as exc:
        pytest.skip(f"ORTModule not usable here: {exc}")
    root = tmp_path_factory.mktemp("onnx_after_ort")
    setup = tiny_setup(root, n_files=1, n_per_file=32, seq_len=32, max_pred=5, hidden=32)
    rc = pretrain_main(["--config_file", setup["config_file"], "--input_dir", setup["input_dir"], "--output_dir", str(root / "out"),
                        "--backend", "ort", "--disable_progress_bar", "--max_steps", "2", "--train_batch_size", "8",
                        "--export_onnx"])
    assert rc == 0
    return root / "out" / "hf_model"


def fresh_process_logits(onnx_path, inputs: dict) -> np.ndarray:
    """Run the ONNX file in a new interpreter: nothing ORTModule initialised in this one can help it."""
    code = ("import json, sys, numpy as np, onnxruntime as ort\n"
            "inp = {k: np.array(v, dtype=np.int64) for k, v in json.loads(sys.stdin.read()).items()}\n"
            f"s = ort.InferenceSession({str(onnx_path)!r}, providers=['CPUExecutionProvider'])\n"
            "print(json.dumps(s.run(['logits'], inp)[0].tolist()))\n")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps({k: v.tolist() for k, v in inputs.items()}),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]), dtype=np.float32)


def test_export_after_ort_run_runs_in_plain_onnxruntime(ort_run):
    from transformers import AutoModelForMaskedLM

    assert not (ort_run / "vocab.txt").exists()  # no tokenizer in the folder
    onnx_path = ort_run / "model.onnx"
    assert nonstandard_ops(onnx_path) == {}
    ids = torch.tensor([[2, 10, 4, 11, 3, 0, 0], [2, 7, 8, 9, 3, 12, 3]])
    mask = (ids != 0).long()
    types = torch.tensor([[0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1]])
    got = fresh_process_logits(onnx_path, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()})
    model = AutoModelForMaskedLM.from_pretrained(ort_run, attn_implementation="eager").eval()
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.numpy()
    assert got.shape == want.shape == (2, 7, VOCAB)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_ort_symbolics_are_the_cause_and_are_restored_after_the_export(ort_run, tmp_path):
    """Root cause, shown: with ORTModule's symbolics active a plain torch.onnx.export writes ATen nodes,
    which verify_onnx refuses. export_onnx_model sets them aside and puts them back afterwards (an ORT
    run continuing in this process still needs them)."""
    from torch.onnx._internal import registration
    from transformers import BertForMaskedLM

    group = registration.registry.get_function_group("aten::embedding")
    ort_override = dict(group._functions._overrides)
    assert ort_override, "ORTModule registered no custom symbolic for aten::embedding (this onnxruntime-training differs)"
    model = BertForMaskedLM.from_pretrained(ort_run, attn_implementation="eager").eval()
    dummy = torch.ones(1, 8, dtype=torch.long)
    raw = tmp_path / "unguarded.onnx"
    torch.onnx.export(model, (dummy, dummy, torch.zeros_like(dummy)), str(raw), input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["logits"], opset_version=17)
    assert nonstandard_ops(raw).get("org.pytorch.aten::ATen", 0) >= 1
    with pytest.raises(RuntimeError, match="operators a plain onnxruntime cannot run"):
        verify_onnx(raw, model)

    with standard_onnx_symbolics():
        assert not group._functions._overrides
    assert dict(group._functions._overrides) == ort_override
    export_onnx_model(ort_run, tmp_path / "again.onnx", seq_len=16)  # verifies itself
    assert nonstandard_ops(tmp_path / "again.onnx") == {}
    assert dict(group._functions._overrides) == ort_override
