"""--deepspeed with ZeRO stage 2 on CPU (gloo), our LAMB passed in; exact resume through our checkpoints."""

import json
import socket

import pytest

from ort_training.config import PretrainConfig
from ort_training.loop.deepspeed_support import load_deepspeed_config

deepspeed = pytest.importorskip("deepspeed", reason="DeepSpeed is an optional extra: pip install '.[deepspeed]'")

from ort_training.data.synthetic import tiny_setup  # noqa: E402
from ort_training.loop.trainer import Trainer  # noqa: E402


@pytest.fixture
def single_process_env(monkeypatch):
    # DeepSpeed always wants a process group; a 1-process env:// group on CPU uses gloo.
    with socket.socket() as s:  # a free port: a fixed one collides with other test runs on the machine
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port).items():
        monkeypatch.setenv(k, v)


def run(setup, out, ds_json=None, stop_at=None, resume=False):
    cfg = PretrainConfig(**setup, output_dir=str(out), backend="eager", max_steps=6, train_batch_size=8, gradient_accumulation_steps=2,
                         learning_rate=1e-2, disable_progress_bar=True, skip_hf_export=True,
                         deepspeed=str(ds_json) if ds_json else None, num_steps_per_checkpoint=100, resume_from_checkpoint=resume)
    tr = Trainer(cfg)
    losses = {}

    def hook(t, rec):
        losses[rec["step"]] = rec["loss"]
        if stop_at == t.global_step:
            t.request_stop()  # what the SIGTERM handler does (the signal itself is tested elsewhere)

    tr.hooks.append(hook)
    try:
        tr.train()
    finally:
        tr.close()
    return losses


def write_ds(path, stage):
    path.write_text(json.dumps({"zero_optimization": {"stage": stage}}))
    return path


def test_deepspeed_matches_plain_and_resumes(tmp_path, single_process_env):
    setup = tiny_setup(tmp_path / "d", n_files=2, n_per_file=32, seq_len=32, max_pred=5, hidden=32)
    plain = run(setup, tmp_path / "plain")
    stage0 = run(setup, tmp_path / "s0", write_ds(tmp_path / "s0.json", 0))
    assert stage0 == pytest.approx(plain, rel=1e-6)  # no ZeRO: exactly our LAMB on the real tensors
    ds2 = write_ds(tmp_path / "s2.json", 2)
    ref = run(setup, tmp_path / "ref", ds2)
    # ZeRO-2 flattens each parameter group, so LAMB's trust ratio is per partition: close, not equal.
    assert ref == pytest.approx(plain, rel=1e-2) and ref != pytest.approx(plain, rel=1e-7)
    run(setup, tmp_path / "job", ds2, stop_at=3)
    resumed = run(setup, tmp_path / "job", ds2, resume=True)
    assert sorted(resumed) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(ref[step], rel=1e-6)


def test_deepspeed_config_checks(tmp_path):
    p = tmp_path / "ds.json"
    p.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    cfg = PretrainConfig(deepspeed=str(p), train_batch_size=8, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="ZeRO stage 3 is not supported"):
        load_deepspeed_config(cfg, 1)
    p.write_text(json.dumps({"zero_optimization": {"stage": 1}, "optimizer": {"type": "Adam"}}))
    with pytest.raises(ValueError, match="remove the 'optimizer' section"):
        load_deepspeed_config(cfg, 1)
    p.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    assert load_deepspeed_config(cfg, 1)["zero_optimization"] == {"stage": 1}
    assert load_deepspeed_config(cfg, 4)["train_batch_size"] == 32  # ZeRO across ranks: tests/integration/test_training_zero.py
    p.write_text(json.dumps({"zero_optimization": {"stage": 0}, "train_batch_size": 999}))
    ds = load_deepspeed_config(cfg, 4)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (32, 4, 2)
