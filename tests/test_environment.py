"""The pinned stack really works: versions match the lock file and ORTModule trains a BERT like eager does."""
import copy
import re
from importlib import metadata
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# The packages whose versions decide whether ORTModule works (see README: torch >= 2.7 breaks it).
CORE = ["torch", "onnxruntime-training-cpu", "torch-ort", "transformers", "tokenizers", "h5py", "numpy"]


def locked_versions() -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_core_packages_match_the_lock_file():
    pins = locked_versions()
    for name in CORE:
        assert name in pins, f"constraints.txt does not pin {name}"
        installed = metadata.version(name).split("+")[0]  # torch reports 2.6.0+cu124 / +cu118
        assert installed == pins[name], f"{name}: installed {installed}, constraints.txt pins {pins[name]}"


def test_ortmodule_extensions_are_built():
    from onnxruntime.training.ortmodule import torch_cpp_extensions
    from onnxruntime.training.ortmodule.torch_cpp_extensions import is_installed

    built_into = Path(torch_cpp_extensions.__file__).parent
    assert is_installed(str(built_into)), "ORTModule's C++ extensions are not built: run `python -m torch_ort.configure`"
    for extension in ("aten_op_executor", "torch_interop_utils"):
        assert list(built_into.glob(f"{extension}*.so")), f"{extension} missing from {built_into}"


class PretrainingLoss(torch.nn.Module):
    """Returns the MLM + NSP loss from inside the module, so ORT exports the whole graph."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, token_type_ids, attention_mask, labels, next_sentence_label):
        return self.bert(
            input_ids=input_ids,
            token_type_ids=token_type_ids,
            attention_mask=attention_mask,
            labels=labels,
            next_sentence_label=next_sentence_label,
        ).loss


def tiny_batches(vocab_size, steps, batch=4, seq=32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        input_ids = torch.randint(5, vocab_size, (batch, seq), generator=gen)
        labels = torch.full_like(input_ids, -100)
        masked = torch.rand(batch, seq, generator=gen) < 0.15
        masked[:, 1] = True  # at least one target per row
        labels[masked] = input_ids[masked]
        input_ids = input_ids.masked_fill(masked, 4)  # [MASK]
        attention_mask = torch.ones_like(input_ids)
        attention_mask[:, seq - 4 :] = 0  # some padding, as real batches have
        yield dict(
            input_ids=input_ids,
            token_type_ids=(torch.arange(seq) >= seq // 2).long().expand(batch, seq).contiguous(),
            attention_mask=attention_mask,
            labels=labels,
            next_sentence_label=torch.randint(0, 2, (batch,), generator=gen),
        )


def test_ortmodule_trains_tiny_bert_like_eager():
    from onnxruntime.training.ortmodule import ORTModule
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    # SDPA attention fails in ORT's gradient builder; eager attention exports cleanly.
    config._attn_implementation = "eager"
    eager = PretrainingLoss(BertForPreTraining(config))
    ort = ORTModule(copy.deepcopy(eager))
    opt_eager = torch.optim.AdamW(eager.parameters(), lr=1e-3)
    opt_ort = torch.optim.AdamW(ort.parameters(), lr=1e-3)

    for step, batch in enumerate(tiny_batches(config.vocab_size, steps=3)):
        losses = []
        for model, opt in ((eager, opt_eager), (ort, opt_ort)):
            opt.zero_grad(set_to_none=True)
            loss = model(**batch)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[1] == pytest.approx(losses[0], rel=1e-4, abs=1e-6), f"step {step}: eager vs ORT {losses}"

    for (name, p_eager), p_ort in zip(eager.named_parameters(), ort.parameters()):
        torch.testing.assert_close(p_ort, p_eager, rtol=1e-4, atol=1e-5, msg=f"parameter {name} diverged")
