"""Hugging Face export (safetensors + tokenizer) and optional ONNX inference export.

The training config pads vocab_size to a multiple of 8; the export trims embeddings and the MLM
decoder back to the real vocabulary so the model and tokenizer agree (a fill-mask pipeline would
otherwise be able to predict ids the tokenizer cannot decode).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import inspect
import json
import logging
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import torch
from transformers import BertTokenizerFast, PreTrainedModel

from bundle.atomic import atomic_dir
from bundle.digest import ROLE_TOKENS, VOCAB_TXT, read_vocab, tokenizer_file
from ort_training.models import family_of
from ort_training.models.pretraining import PretrainingModel
from ort_training.errors import refuse_remote_code, MissingDependencyError, UsageError

logger = logging.getLogger(__name__)

def wordpiece_tokenizer(vocab_file: str | Path, do_lower_case: bool = True) -> BertTokenizerFast:
    """BertTokenizerFast from a vocab.txt on transformers 4.x and 5.x alike (5.x ignores `vocab_file=` in
    the constructor and silently builds a 5-token vocabulary; loading a folder works on both). The file is read
    by bundle.digest.read_vocab first, as data_prep reads it: a line the two would read differently is refused."""
    read_vocab(vocab_file)
    with tempfile.TemporaryDirectory() as folder:
        shutil.copyfile(vocab_file, Path(folder) / "vocab.txt")
        return BertTokenizerFast.from_pretrained(folder, do_lower_case=do_lower_case, trust_remote_code=False)


def load_tokenizer(source: str | Path, do_lower_case: bool = True):
    """The Hugging Face fast tokenizer of what made the data, for the export and fine-tuning: a WordPiece
    vocab.txt, a tokenizer.json (BPE: ModernBERT), or a folder holding either (its tokenizer_config.json
    when present). Never runs code from the folder."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(source)
    defining = tokenizer_file(path)
    if defining is None or not defining.is_file():
        raise UsageError(f"--vocab_file {source}: neither a vocab.txt, a tokenizer.json nor a folder holding one")
    if defining.name == VOCAB_TXT or defining.suffix != ".json":
        return wordpiece_tokenizer(defining, do_lower_case)
    if (defining.parent / "tokenizer_config.json").is_file():
        refuse_remote_code(defining.parent)
        return AutoTokenizer.from_pretrained(str(defining.parent), trust_remote_code=False)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(defining))
    vocab = tok.get_vocab()
    roles = {f"{role}_token": next((n for n in names if n in vocab), None) for role, names in ROLE_TOKENS.items()}
    tok.add_special_tokens({k: v for k, v in roles.items() if v is not None})
    return tok


def tokenizer_size(source: str | Path, do_lower_case: bool = True) -> int:
    """Token ids the tokenizer at `source` can produce: a vocab.txt's lines (one id per line, as BertTokenizer
    and data_prep read it), else the loaded tokenizer's length."""
    defining = tokenizer_file(source)
    if defining is not None and defining.is_file() and defining.suffix != ".json":
        return len(read_vocab(defining))
    return len(load_tokenizer(source, do_lower_case))


def save_tokenizer(tokenizer, folder: Path) -> None:
    """save_pretrained, plus for WordPiece the vocab.txt that BERT tooling reads (transformers 5.x writes only
    tokenizer.json)."""
    tokenizer.save_pretrained(folder)
    if type(tokenizer.backend_tokenizer.model).__name__ != "WordPiece":
        return
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    (Path(folder) / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")


def export_hf(model: PretrainingModel, out_dir: str | Path, vocab_file: str | None = None, do_lower_case: bool = True,
              export_onnx: bool = False, tokenizer=None) -> Path:
    """Write `save_pretrained` model (+ its tokenizer: the one given, or one built from `vocab_file`) to
    out_dir atomically."""
    out = Path(out_dir)
    vocab_size = getattr(model.config, "original_vocab_size", model.config.vocab_size)
    if tokenizer is None and vocab_file:
        tokenizer = load_tokenizer(vocab_file, do_lower_case)
    added = tuple(getattr(model.objective, "added_tokens", ()))
    if tokenizer is not None and added:  # ids an objective reserved right above the tokenizer's (T5's sentinels)
        tokenizer.add_tokens(list(added), special_tokens=True)  # in order: ids len(tokenizer) + i (transformers 4 and 5)
    if tokenizer is not None:
        vocab_size = len(tokenizer)
    config = copy.deepcopy(model.config)
    config.vocab_size = vocab_size
    hf_class = type(model.hf_model)  # the objective's class of the family (BertForPreTraining, ModernBertForMaskedLM, ...)
    vocab_rows = model.family.weights.vocab_keys
    config.architectures = [hf_class.__name__]
    for attr in ("original_vocab_size",):
        if hasattr(config, attr):
            delattr(config, attr)
    state = {k: (v[:vocab_size] if k in vocab_rows else v) for k, v in model.hf_model.state_dict().items()}
    hf = hf_class(config)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if m not in vocab_rows]:
        raise RuntimeError(f"HF export: state dict mismatch (missing {missing}, unexpected {unexpected})")
    hf.tie_weights()
    if tokenizer is not None and not model.family.token_types:  # the model takes no segment ids: the tokenizer makes none
        tokenizer.model_input_names = tokenizer.init_kwargs["model_input_names"] = ["input_ids", "attention_mask"]
    with atomic_dir(out) as tmp:
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        hf.save_pretrained(tmp, safe_serialization=True)
        if export_onnx:
            export_onnx_model(tmp, tmp / "model.onnx")
    logger.info("exported Hugging Face model to %s", out)
    return out


# ONNX domains a plain onnxruntime InferenceSession runs (ORT's contrib ops excluded: com.microsoft ops
# from the training symbolics, ATen fallbacks, PythonOp need ORTModule's runtime).
_STANDARD_DOMAINS = ("", "ai.onnx")


@contextlib.contextmanager
def standard_onnx_symbolics():
    """torch.onnx's own symbolic functions only, for the duration of the block.

    `ORTModule(...)` calls `CustomOpSymbolicRegistry.register_all`, which registers ORT's training
    symbolics with `torch.onnx.register_custom_op_symbolic` for the whole process: after an ORT run,
    every later `torch.onnx.export` turns `aten::embedding` into `org.pytorch.aten::ATen` nodes (and the
    losses into com.microsoft ops) that only ORTModule's ATen executor can run; a plain InferenceSession
    fails with "ATenOperatorExecutor is not initialized". This removes every custom override from
    torch.onnx's registry and puts them back afterwards, so a training run can continue."""
    removed = []
    try:
        try:  # torch.onnx's registry internals (torch 2.4-2.6); if they moved, export unguarded: verify_onnx checks
            from torch.onnx._internal import registration

            groups = [(g, dict(g._functions._overrides)) for g in registration.registry._registry.values()]
        except (ImportError, AttributeError) as exc:
            logger.warning("ONNX export: cannot inspect torch.onnx's symbolic registry (%s); exporting without the guard", exc)
            groups = []
        for group, overrides in groups:
            for opset, fn in overrides.items():
                group.remove_custom(opset)
                removed.append((group, opset, fn))
        if removed:
            logger.info("ONNX export: %d custom symbolic function(s) (e.g. ORTModule's) set aside for the export", len(removed))
        yield
    finally:
        for group, opset, fn in removed:
            group.add_custom(fn, opset)


def nonstandard_ops(onnx_path: str | Path) -> dict[str, int]:
    """'domain::op' -> count for the nodes a plain onnxruntime cannot be relied on to run."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    found: Counter = Counter()
    for graph in [model.graph]:
        for node in graph.node:
            if node.domain not in _STANDARD_DOMAINS:
                found[f"{node.domain}::{node.op_type}"] += 1
    return dict(found)


def check_onnx_available() -> None:
    """--export_onnx writes with onnx and verifies with onnxruntime: say so at start-up, not after training."""
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingDependencyError(f"--export_onnx needs {' and '.join(missing)}: pip install onnx onnxruntime (the pinned stack has "
                           "both), or leave --export_onnx off")


def export_onnx_model(hf_dir: str | Path, onnx_path: str | Path, seq_len: int = 128, verify: bool = True) -> Path:
    """ONNX (opset 17) of the export's language model for inference (masked LM, or causal LM for decoders): inputs
    input_ids/attention_mask (and token_type_ids for families that read them), output logits.

    Exported from a fresh module loaded from `hf_dir` (no tokenizer needed), with torch.onnx's standard
    symbolics whatever backend ran before in this process (`standard_onnx_symbolics`). With `verify`,
    the file is checked to hold standard ONNX operators only and its logits are compared with PyTorch's
    in an onnxruntime InferenceSession; a mismatch raises instead of leaving a broken model.onnx."""
    check_onnx_available()
    refuse_remote_code(hf_dir)
    family = family_of(json.loads((Path(hf_dir) / "config.json").read_text()))
    # The family's language-model class (BertForMaskedLM of a BertForPreTraining export, LlamaForCausalLM, ...).
    model = family.hf_class(family.pretraining_tasks[-1]).from_pretrained(hf_dir, attn_implementation="eager",
                                                                          trust_remote_code=False).eval()
    graph = CausalLMGraph(model).eval() if "lm" in family.heads else model  # eval: the export restores its mode
    names = _onnx_inputs(model)
    seq_len = max(2, min(seq_len, model.config.max_position_embeddings))
    # The TorchScript exporter (torch >= 2.9 defaults to the dynamo one, which needs onnxscript and
    # ignores the symbolic registry that standard_onnx_symbolics guards).
    exporter = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    dummy = torch.ones(1, seq_len, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    onnx_path = Path(onnx_path)
    with standard_onnx_symbolics(), torch.no_grad():
        torch.onnx.export(
            graph,
            (dummy, dummy, torch.zeros_like(dummy))[:len(names)],
            str(onnx_path),
            input_names=list(names),
            output_names=["logits"],
            dynamic_axes={**{name: axes for name in names}, "logits": axes},
            opset_version=17,
            operator_export_type=torch.onnx.OperatorExportTypes.ONNX,
            do_constant_folding=True,
            **exporter,
        )
    if verify:
        verify_onnx(onnx_path, model)
    return onnx_path


class CausalLMGraph(torch.nn.Module):
    """A causal LM's logits with the family's 4-D attention mask built inside the graph (models/llama.py): the
    TorchScript exporter cannot export transformers' own mask construction, which a plain forward would run."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model, self.family = model, family_of(model.config)

    def forward(self, input_ids, attention_mask):
        hidden, _ = self.family.encode(self.model, input_ids, None, attention_mask)
        return self.family.head(self.model, "lm")(hidden)


def _onnx_inputs(model: PreTrainedModel) -> tuple[str, ...]:
    return ("input_ids", "attention_mask", "token_type_ids")[:3 if family_of(model.config).token_types else 2]


def verify_onnx(onnx_path: str | Path, model: PreTrainedModel, atol: float = 1e-4) -> float:
    """Refuse an ONNX file with non-standard operators, then run it in onnxruntime on a padded batch
    and compare its logits with `model`'s; returns the largest absolute difference."""
    bad = nonstandard_ops(onnx_path)
    if bad:
        raise RuntimeError(f"{onnx_path}: the export holds operators a plain onnxruntime cannot run ({bad}); "
                           "a custom torch.onnx symbolic was active during the export")
    import numpy as np

    from ort_training.loop.backends import import_onnxruntime

    onnxruntime = import_onnxruntime()
    seq = max(2, min(12, model.config.max_position_embeddings))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1, seq // 2:] = 0
    types = torch.zeros_like(ids)
    types[:, seq // 2:] = 1
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = dict(zip(_onnx_inputs(model), (ids, mask, types)))
    (got,) = session.run(["logits"], {k: v.numpy() for k, v in feed.items()})
    with torch.no_grad():
        want = model(**feed).logits.numpy()
    diff = float(np.abs(got - want).max())
    if not diff <= atol:
        raise RuntimeError(f"{onnx_path}: onnxruntime logits differ from PyTorch's by {diff:.3g} (> {atol}); "
                           "the ONNX export is wrong, do not use it")
    logger.info("ONNX export %s verified in onnxruntime (max |logit diff| %.2g)", onnx_path, diff)
    return diff


def export_onnx_classifier(model: PreTrainedModel, onnx_path: str | Path, opset: int = 17, seq_len: int = 16) -> Path:
    """ONNX of a loaded sequence classifier (any family's: ort_training/models/) for inference: inputs input_ids /
    attention_mask (and token_type_ids for families that read them), output logits [batch, classes];
    batch and sequence axes dynamic.

    The TorchScript exporter with torch.onnx's standard symbolics (`standard_onnx_symbolics`), as
    `export_onnx_model` does; build `model` with attn_implementation="eager" and call `.eval()` first.
    The file holds standard ONNX operators only (checked); comparing its logits with PyTorch's is the
    caller's (ort_training/inference.py checks every variant it makes)."""
    check_onnx_available()
    names = _onnx_inputs(model)
    seq_len = max(2, min(seq_len, getattr(model.config, "max_position_embeddings", None) or seq_len))  # T5: no limit
    exporter = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    # A batch of 2 with one padded row: nothing batch- or padding-specific is traced in as a constant.
    ids = torch.full((2, seq_len), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, seq_len // 2:] = 0
    axes = {0: "batch", 1: "sequence"}
    onnx_path = Path(onnx_path)
    with standard_onnx_symbolics(), torch.no_grad():
        torch.onnx.export(
            model,
            (ids, mask, torch.zeros_like(ids))[:len(names)],
            str(onnx_path),
            input_names=list(names),
            output_names=["logits"],
            dynamic_axes={**{name: axes for name in names}, "logits": {0: "batch"}},
            opset_version=opset,
            operator_export_type=torch.onnx.OperatorExportTypes.ONNX,
            do_constant_folding=True,
            **exporter,
        )
    bad = nonstandard_ops(onnx_path)
    if bad:
        raise RuntimeError(f"{onnx_path}: the export holds operators a plain onnxruntime cannot run ({bad}); "
                           "a custom torch.onnx symbolic was active during the export")
    return onnx_path
