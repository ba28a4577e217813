"""Initialise a Hugging Face pretraining model (BERT's `BertForPreTraining` / `BertForMaskedLM`, ModernBERT's
`ModernBertForMaskedLM`, Llama's `LlamaForCausalLM`) from a published checkpoint of its family, without running code. The tensor names
each family needs (prefix, vocab rows, heads, NVIDIA's renames) are facts of the family (models/).

Three source formats, told apart by what is at the path (`detect_format`):

- ``bundle``: this project's checkpoints (`checkpoints/step-N/checkpoint.pt`, a step folder, an output
  dir): the `PretrainingModel` state dict, keys ``hf_model.<HF key>`` (``bert.<HF key>`` before the model seam).
- ``hf``: a Hugging Face model folder, ``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``
  (sharded ``*.index.json`` too): `BertForPreTraining`, `BertForMaskedLM`, `ModernBertForMaskedLM`, or a
  bare base model whose keys lack the ``bert.`` / ``model.`` prefix (sentence-transformers BERTs such as
  all-MiniLM-L6-v2).
- ``nvidia``: a torch file holding ``{"model": state_dict, ...}`` (or a bare state dict) in NVIDIA
  DeepLearningExamples `modeling.py` naming (``dense_act``, no decoder bias, vocab padded to a multiple
  of 8), including the ORT bioBERT example's ``model_.`` prefix and ``Moment_*`` optimizer entries.

Loading never executes code from the file: safetensors, or ``torch.load(weights_only=True)``; the only
class allowed beyond tensors and containers is ``argparse.Namespace`` (NVIDIA checkpoints may pickle
their command line), which the restricted unpickler rebuilds as a plain attribute bag. Anything else
(NVIDIA's pickled DataLoader, a malicious ``__reduce__``) is refused with the way to convert the file.
"""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ort_training.loop.checkpoint import CKPT_FILE, list_checkpoints, resolve_checkpoint
from ort_training.models import BERT, ModelFamily, WeightNames, family_of
from ort_training.errors import refuse_remote_code, UsageError, one_line

logger = logging.getLogger(__name__)

Format = Literal["bundle", "hf", "nvidia"]

HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")

# Prefixes wrappers add: DDP / DataParallel, the ORT bioBERT example, torch.compile.
WRAPPER_PREFIXES = ("module.", "model_.", "_orig_mod.")
# The trainer's own prefix for its Hugging Face model, now and before the model seam.
BUNDLE_PREFIXES = ("hf_model.", "bert.")
# Optimizer / trainer entries that ORT training checkpoints keep beside the weights.
_OPTIMIZER_KEY = re.compile(r"^(Moment_\d+_|Update_Count_|Step$|Round$|Loss_Scale|loss_scale$|global_step$)")
# Buffers older HF checkpoints saved that current transformers recompute.
_IGNORED_BUFFERS = re.compile(r"(^|\.)embeddings\.(position_ids|token_type_ids)$")


@dataclass
class ImportReport:
    """What `load_into` did."""
    format: str
    source: str
    """The file(s) read."""
    loaded: int = 0
    """Tensors copied into the model."""
    initialised: list[str] = field(default_factory=list)
    """Model tensors the source did not have (kept at their fresh initialisation)."""
    unused: list[str] = field(default_factory=list)
    """Source head tensors the model has no place for (NSP head and pooler, for a BertForMaskedLM)."""
    renamed: int = 0
    """Keys renamed from NVIDIA naming or stripped of a wrapper prefix."""
    dropped: list[str] = field(default_factory=list)
    """Optimizer / trainer entries skipped."""
    vocab: tuple[int, int] | None = None
    """(source rows, model rows) when they differ by padding only."""
    config_file: str | None = None

    def summary(self) -> str:
        text = f"{self.format} checkpoint {self.source}: {self.loaded} tensors loaded"
        if self.renamed:
            text += f", {self.renamed} renamed"
        if self.dropped:
            text += f", {len(self.dropped)} optimizer entries dropped"
        if self.vocab:
            text += f", vocab rows {self.vocab[0]} -> {self.vocab[1]} (padding)"
        return text


# ----------------------------------------------------------------------------- detection
def _hf_weight_files(folder: Path) -> list[Path] | None:
    for name in HF_WEIGHTS:
        if (folder / name).is_file():
            return [folder / name]
    for name in HF_INDEXES:
        if (folder / name).is_file():
            try:
                index = json.loads((folder / name).read_text())
                return [folder / f for f in sorted(set(index["weight_map"].values()))]
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise UsageError(f"{folder / name}: not a readable weight index ({one_line(exc)}); download the model again") from None
    return None


def _pickle_strings(path: Path) -> set[str] | None:
    """Strings in a zip-format torch file's pickle, read with pickletools (nothing is executed);
    None for files that are not zip-format torch files."""
    import pickletools

    try:
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                return None
            data = zf.read(name)
    except (zipfile.BadZipFile, OSError):
        return None
    found: set[str] = set()
    try:
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str) and op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                found.add(arg)
    except Exception:  # a malformed pickle: let the loader report it
        return found
    return found


def detect_format(path: str | Path) -> Format:
    """"bundle", "hf" or "nvidia", from what is at `path` (see the module docstring)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"--init_checkpoint {p}: no such file or folder")
    if p.is_dir():
        if (p / "config.json").is_file() and _hf_weight_files(p):
            return "hf"
        if (p / CKPT_FILE).is_file() or list_checkpoints(p) or list_checkpoints(p.parent) and p.name == "checkpoints":
            return "bundle"
        if (p / "config.json").is_file():
            raise UsageError(f"{p}: has config.json but no {' / '.join(HF_WEIGHTS)}; download the weights into it")
        raise UsageError(f"{p}: neither a Hugging Face model folder (config.json + {' or '.join(HF_WEIGHTS)}) nor a "
                         f"checkpoint folder of this project (checkpoints/step-N/{CKPT_FILE}); pass one of those or an "
                         "NVIDIA .pt file")
    if p.name in HF_WEIGHTS or p.suffix == ".safetensors":
        return "hf"
    strings = _pickle_strings(p)
    if strings is not None and "train_state" in strings:
        return "bundle"  # this project's checkpoint.pt, wherever it was copied to
    if strings is None and p.name == CKPT_FILE and re.match(r"^step-\d+$", p.parent.name):
        return "bundle"
    return "nvidia"


def hf_config_path(path: str | Path) -> Path | None:
    """The config.json of a Hugging Face source (so --config_file can default to it); None otherwise."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    if (folder / "config.json").is_file() and (p.is_file() or _hf_weight_files(folder)):
        try:
            if detect_format(p) == "hf":
                return folder / "config.json"
        except (ValueError, FileNotFoundError):
            return None
    return None


# ----------------------------------------------------------------------------- reading
def _convert_hint(path: Path) -> str:
    return (f"convert it once, in a trusted environment, to a tensors-only file: python -c \"import torch; "
            f"sd = torch.load('{path}', map_location='cpu', weights_only=False); "
            f"torch.save(sd.get('model', sd), '{path.with_suffix('')}.weights.pt')\" (or save it as safetensors), "
            f"then pass the new file")


def torch_load_weights(path: Path) -> dict:
    """`torch.load(weights_only=True)`, also allowing `argparse.Namespace` (a plain attribute bag the
    restricted unpickler rebuilds without calling any code). Anything else is refused."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        detail = re.search(r"(Unsupported global|Unsupported operand|Trying to load unsupported object)[^\n]*", str(exc))
        raise UsageError(f"{path}: refused to load: the file pickles objects other than tensors "
                         f"({detail.group(0) if detail else first}); loading it would run code from the file. "
                         f"If you trust it, {_convert_hint(path)}") from None
    except (RuntimeError, EOFError) as exc:
        raise UsageError(f"{path}: not a readable torch file ({exc}); pass a safetensors / torch state dict file") from None


def _unreadable_safetensors(path: Path, exc: Exception) -> UsageError:
    return UsageError(f"{path}: not a readable safetensors file ({one_line(exc)}); it is truncated or corrupt: download or "
                      "export the model again")


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 -- SafetensorError (bad header, short file) or OSError; its message names no file
        raise _unreadable_safetensors(path, exc) from None


def check_weight_files(folder: str | Path) -> None:
    """Read the header of every safetensors file of a Hugging Face folder (no tensor data) before transformers loads
    it: a corrupt header is then an error naming the file, not a bare "Error while deserializing header"."""
    from safetensors import safe_open

    for path in _hf_weight_files(Path(folder)) or ():
        if path.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as exc:  # noqa: BLE001 -- as in _load_safetensors
            raise _unreadable_safetensors(path, exc) from None


def read_state_dict(path: str | Path, fmt: Format | None = None) -> tuple[dict[str, torch.Tensor], Format, list[Path]]:
    """The raw tensors of a source, its format and the files read."""
    p = Path(path)
    fmt = fmt or detect_format(p)
    if fmt == "bundle":
        ckpt_file = resolve_checkpoint(p)
        ckpt = torch_load_weights(ckpt_file)
        if "model" not in ckpt:
            raise UsageError(f"{ckpt_file}: no 'model' entry; not a checkpoint of this project")
        return dict(ckpt["model"]), fmt, [ckpt_file]
    if fmt == "hf":
        files = [p] if p.is_file() else _hf_weight_files(p)
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(_load_safetensors(f) if f.suffix == ".safetensors" else torch_load_weights(f))
        return state, fmt, files
    obj = torch_load_weights(p)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"{p}: expected a torch file holding {{'model': state_dict, ...}} or a state dict; "
                         f"found {type(obj).__name__} with keys {sorted(map(str, obj))[:8] if isinstance(obj, dict) else '-'}")
    return obj, fmt, [p]


# ----------------------------------------------------------------------------- key mapping
def normalise_keys(state: dict[str, torch.Tensor], fmt: Format, names: WeightNames = BERT.weights) -> tuple[dict[str, torch.Tensor], int, list[str]]:
    """Source keys -> the family's HF pretraining keys. Returns (state, number renamed, dropped keys)."""
    out: dict[str, torch.Tensor] = {}
    renamed, dropped = 0, []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            dropped.append(key)
            continue
        new = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if new.startswith(prefix):
                    new, stripped = new[len(prefix):], True
        if _OPTIMIZER_KEY.match(new):
            dropped.append(key)
            continue
        if fmt == "bundle" and new.startswith(BUNDLE_PREFIXES):
            new = new.split(".", 1)[1]  # PretrainingModel.hf_model is the Hugging Face model
        for old, repl in names.renames:
            new = new.replace(old, repl)
        new = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", new)
        new = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", new)
        renamed += new != key
        out[new] = value
    # A bare base model (sentence-transformers, AutoModel.save_pretrained): no "bert." / "model." prefix.
    if not any(k.startswith(names.prefix) for k in out) and any(k.startswith(names.bare_markers) for k in out):
        out = {f"{names.prefix}{k}": v for k, v in out.items()}
        renamed += len(out)
    return out, renamed, dropped


def _pad_multiple_of_8(n: int) -> int:
    return n + (-n) % 8


def _vocab_padding_only(src: int, dst: int) -> bool:
    return src != dst and _pad_multiple_of_8(min(src, dst)) == max(src, dst)


def _group(names: list[str]) -> str:
    """'cls.predictions.* (5), bert.pooler.* (2)' -- one short line for a list of tensor names."""
    groups = Counter(".".join(n.split(".")[:2]) + ".*" for n in names)
    return ", ".join(f"{g} ({c})" for g, c in groups.items())


def _check_config(model_config, source_config: Path | None, family: ModelFamily) -> None:
    if source_config is None:
        return
    src = json.loads(source_config.read_text())
    if src.get("model_type", "bert") != family.model_type:
        raise UsageError(f"{source_config}: model_type {src.get('model_type')!r} is not the model's ({family.model_type}); "
                         f"use that checkpoint's config.json as --config_file (the architecture follows the config)")
    for name in family.weights.config_must_match:
        if name in src and getattr(model_config, name, src[name]) != src[name]:
            raise UsageError(f"{source_config}: {name} is {src[name]!r} but the model's config has "
                             f"{getattr(model_config, name)!r}; use the source's config.json as --config_file")


def load_into(model, path: str | Path) -> ImportReport:
    """Fill `model` in place from the checkpoint at `path` (formats: see the module docstring).

    `model` is a Hugging Face pretraining model of a family (`BertForPreTraining`, `BertForMaskedLM`,
    `ModernBertForMaskedLM`), or this project's `PretrainingModel` holding one as `.hf_model`. Missing
    heads (MLM / NSP / pooler) keep their fresh initialisation and are listed in one log line; source
    heads the model lacks (NSP, pooler for a BertForMaskedLM) are skipped and listed likewise. A missing
    embedding / encoder tensor, an unexpected key or a shape mismatch other than vocab padding raises
    ValueError naming the tensor (and both shapes)."""
    from transformers import PreTrainedModel

    target = model if isinstance(model, PreTrainedModel) else getattr(model, "hf_model", None)
    family = family_of(target.config) if isinstance(target, PreTrainedModel) else None
    kinds = tuple(family.hf_class(t) for t in family.pretraining_tasks) if family else ()
    if not isinstance(target, kinds):
        raise TypeError(f"load_into needs a Hugging Face pretraining model (BertForPreTraining, BertForMaskedLM, "
                        f"ModernBertForMaskedLM, LlamaForCausalLM), got {type(model).__name__}")
    names = family.weights
    path = Path(path)
    raw, fmt, files = read_state_dict(path)
    config_file = hf_config_path(path) if fmt == "hf" else None
    if config_file is not None:
        refuse_remote_code(config_file.parent)
    _check_config(target.config, config_file, family)
    state, renamed, dropped = normalise_keys(raw, fmt, names)
    source = ", ".join(map(str, files))

    own = target.state_dict()
    tied = bool(getattr(target.config, "tie_word_embeddings", True))
    emb_key, dec_key = names.embedding, names.decoder
    # One tensor under two names (BERT's decoder bias is cls.predictions.bias; NVIDIA and safetensors omit one).
    for a, b in (*names.bias_aliases, *((b, a) for a, b in names.bias_aliases)):
        if a in state and b not in state and b in own:
            state[b] = state[a]
    if tied and dec_key in own:
        if dec_key in state and emb_key in state and not torch.equal(state[dec_key], state[emb_key]):
            raise UsageError(f"{source}: {dec_key} differs from {emb_key}, but the model ties the MLM decoder to the word "
                             "embeddings; set tie_word_embeddings=false in the config or import a tied checkpoint")
        if emb_key in state:
            state[dec_key] = state[emb_key]

    absent_heads = tuple(g for g in names.head_groups if not any(k.startswith(g) for k in own))
    unused = sorted(k for k in state if k not in own and k.startswith(absent_heads)) if absent_heads else []
    unexpected = sorted(k for k in state if k not in own and not _IGNORED_BUFFERS.search(k) and k not in unused)
    if unexpected:
        raise UsageError(f"{source}: {len(unexpected)} unexpected tensor(s) not in {type(target).__name__}: "
                         f"{', '.join(unexpected[:10])}{' ...' if len(unexpected) > 10 else ''}")
    missing = sorted(k for k in own if k not in state)
    core_missing = [k for k in missing if not k.startswith(names.head_prefixes)]
    if core_missing:
        raise UsageError(f"{source}: lacks {len(core_missing)} encoder/embedding tensor(s) of the model, e.g. "
                         f"{', '.join(core_missing[:5])}; is --config_file the source's (num_hidden_layers, sizes)?")

    vocab = None
    errors = []
    for key, value in state.items():
        if key not in own:
            continue
        want = own[key].shape
        if value.shape == want:
            continue
        if key in names.vocab_keys and value.shape[1:] == want[1:] and _vocab_padding_only(value.shape[0], want[0]):
            vocab = (value.shape[0], want[0])
            continue
        errors.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(want)}")
    if errors:
        raise UsageError(f"{source}: shape mismatch for {len(errors)} tensor(s): " + "; ".join(errors[:10]))

    loaded = 0
    with torch.no_grad():
        params = dict(target.named_parameters(remove_duplicate=False)) | dict(target.named_buffers(remove_duplicate=False))
        for key, value in state.items():
            if key not in own:
                continue
            dst = params[key]
            rows = min(value.shape[0], dst.shape[0]) if dst.dim() else None
            if rows is not None and value.shape[0] != dst.shape[0]:
                dst[:rows].copy_(value[:rows].to(dst.dtype))
                if dst.shape[0] > rows and key.endswith("bias"):
                    dst[rows:].zero_()  # padded vocab ids are never produced by the tokenizer
            else:
                dst.copy_(value.to(dst.dtype))
            loaded += 1
    target.tie_weights()

    report = ImportReport(format=fmt, source=source, loaded=loaded, initialised=missing, unused=unused, renamed=renamed,
                          dropped=dropped, vocab=vocab, config_file=str(config_file) if config_file else None)
    logger.info("%s", report.summary())
    if missing:
        logger.info("initialised %d tensor(s) the checkpoint does not have: %s", len(missing), _group(missing))
    if unused:
        logger.info("skipped %d checkpoint tensor(s) of heads %s has not: %s", len(unused), type(target).__name__, _group(unused))
    return report
