"""ORTModule, eager and torch.compile give the same losses over 20 steps (dropout off)."""

import pytest

from ort_training.config import PretrainConfig
from ort_training.data.synthetic import tiny_setup
from ort_training.loop.trainer import Trainer


def run_losses(setup, out, backend, steps=20, **kw):
    cfg = PretrainConfig(**setup, output_dir=str(out), backend=backend, max_steps=steps, train_batch_size=8,
                         learning_rate=5e-3, warmup_proportion=0.1, disable_progress_bar=True, skip_hf_export=True,
                         num_steps_per_checkpoint=1000, seed=12345, **kw)
    trainer = Trainer(cfg)
    losses = []
    trainer.hooks.append(lambda tr, rec: losses.append((rec["loss"], rec["mlm_accuracy"])))
    try:
        trainer.train()
    finally:
        trainer.close()
    return losses


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("parity"), n_files=2, n_per_file=48, seq_len=32, max_pred=5, hidden=32)


@pytest.fixture(scope="module")
def eager_losses(setup, tmp_path_factory):
    return run_losses(setup, tmp_path_factory.mktemp("eager"), "eager")


# torch.compile's first step compiles forward and backward with inductor's C++ backend: about
# 35 s with a warm inductor cache, 2-4 minutes cold on 2 busy cores, hence `slow`.
@pytest.mark.parametrize("backend", [pytest.param("ort", marks=pytest.mark.ort), pytest.param("compile", marks=pytest.mark.slow)])
def test_backend_matches_eager(setup, eager_losses, backend, tmp_path):
    losses = run_losses(setup, tmp_path, backend)
    assert len(losses) == len(eager_losses) == 20
    assert eager_losses[-1][0] < eager_losses[0][0] - 0.05  # it actually trains (random tokens: slowly)
    for step, ((le, _), (lb, _)) in enumerate(zip(eager_losses, losses)):
        assert abs(lb - le) <= 1e-4 * abs(le), f"step {step + 1}: {backend} loss {lb} vs eager {le}"


@pytest.mark.ort
def test_checkpoint_activations_under_ort_is_ort_recompute_with_the_same_losses(setup, tmp_path, caplog):
    """NVIDIA's --checkpoint_activations under ORT turns on ORT's layer recompute (memory optimizer level 1)."""
    import logging
    import os

    plain = run_losses(setup, tmp_path / "plain", "ort", steps=3, dropout=0.0)
    with caplog.at_level(logging.WARNING):
        recompute = run_losses(setup, tmp_path / "recompute", "ort", steps=3, dropout=0.0, checkpoint_activations=True)
        assert os.environ["ORTMODULE_MEMORY_OPT_LEVEL"] == "1"
    assert [r[0] for r in recompute] == pytest.approx([r[0] for r in plain], rel=1e-5)
    banner = "\n".join(r.getMessage() for r in caplog.records)
    assert "Memory Optimizer" in banner and "ON" in banner.split("Memory Optimizer", 1)[1].split("\n", 1)[0]


@pytest.mark.ort
def test_ort_trains_and_exports_without_loading_deepspeed(tmp_path):
    """ORT's import (and its first export) would load DeepSpeed for nothing the run uses (backends.import_onnxruntime):
    a fresh process trains on --backend ort, evaluates, and never has DeepSpeed in sys.modules; `import deepspeed`
    still works afterwards, for a --deepspeed run in the same process."""
    import subprocess
    import sys
    import textwrap

    pytest.importorskip("deepspeed", reason="DeepSpeed is an optional extra: pip install '.[deepspeed]'")
    script = textwrap.dedent(f"""
        import sys
        from ort_training.config import PretrainConfig
        from ort_training.data.synthetic import tiny_setup
        from ort_training.loop.trainer import Trainer

        setup = tiny_setup({str(tmp_path / "d")!r}, n_files=1, n_per_file=16, seq_len=32, max_pred=5, hidden=32)
        cfg = PretrainConfig(**setup, output_dir={str(tmp_path / "out")!r}, backend="ort", max_steps=2, train_batch_size=8,
                             disable_progress_bar=True, num_steps_per_checkpoint=1000, seed=1)
        trainer = Trainer(cfg)
        try:
            trainer.train()
        finally:
            trainer.close()
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "deepspeed")
        assert not loaded, loaded[:5]
        import deepspeed
        print("deepspeed importable:", deepspeed.__version__)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deepspeed importable" in done.stdout
    assert (tmp_path / "out" / "hf_model" / "config.json").is_file()  # the export ran in that process too
