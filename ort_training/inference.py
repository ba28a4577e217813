"""Inference engines for a fine-tuned classifier folder (the `hf_model/` that `ort_training.finetune` writes).

Three engines, one interface (`load_engine` -> an object `finetune.predict` runs like the PyTorch model,
so windowing and per-document averaging are fine-tuning's own code whatever the engine):

- `torch`: the Hugging Face *ForSequenceClassification in PyTorch, eager mode (no torch.compile);
- `onnx`: ONNX Runtime, fp32, the graph fused by onnxruntime's transformer optimizer (BERT: attention,
  SkipLayerNormalization, bias-GELU; ModernBERT: onnxruntime's own graph optimizations only, see OPTIMIZER);
- `onnx-int8`: that graph with int8 dynamic quantization of its weights (CPU);
- `onnx-fp16`: that graph in float16 (inputs and logits stay int64 / float32), run by ONNX Runtime's CUDA
  execution provider: for a GPU with onnxruntime-gpu; refused with one line where CUDA is not offered.

Every ONNX variant is made once per (weights digest, onnxruntime version) into MODEL/onnx/<key>/ and checked
against PyTorch's logits on a fixed check batch when it is made (tolerances in TOLERANCES); one that drifts
is refused (DriftError) and not kept. The manifest there records each file's sha256: a cached file that no
longer matches it is made and checked again.

Nothing here runs code from the folder: configs with `auto_map` are refused and every `from_pretrained`
passes trust_remote_code=False.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import typing
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from bundle.atomic import atomic_path, atomic_write_text
from bundle.digest import file_sha256
from ort_training.models import FAMILIES, family_of
from ort_training.errors import UsageError
from ort_training.loop.backends import import_onnxruntime

logger = logging.getLogger(__name__)

Engine = Literal["torch", "onnx", "onnx-int8", "onnx-fp16"]
ENGINES: tuple[str, ...] = typing.get_args(Engine)
VARIANT_FILES = {"fp32": "model.onnx", "onnx": "model-optimized.onnx", "onnx-int8": "model-int8.onnx", "onnx-fp16": "model-fp16.onnx"}
MADE_FROM = {"fp32": None, "onnx": "fp32", "onnx-int8": "onnx", "onnx-fp16": "onnx"}
"""Each ONNX variant is made from the one named here (the export itself from PyTorch)."""
PROVIDERS = {"onnx-fp16": "CUDAExecutionProvider"}
"""The execution provider a variant needs (the others run on CPUExecutionProvider)."""
MANIFEST = "manifest.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

TOLERANCES = {
    # max |logit difference| against PyTorch fp32 on the check batch
    "fp32": {"max_abs_logit": 1e-4},
    # fused kernels sum in another order (and the optimizer's LayerNorm/GELU kernels are its own)
    "onnx": {"max_abs_logit": 1e-3},
    # int8 weights change the numbers: compare what a user reads. Probabilities within 0.1 of PyTorch's, and
    # the same predicted class on every check row where PyTorch's top class beats the next by >= 0.1.
    "onnx-int8": {"max_abs_prob": 0.10, "decisive_margin": 0.10},
    # float16 activations and weights: logits to ~1e-2, so bound what a user reads, tighter than int8.
    "onnx-fp16": {"max_abs_prob": 0.02, "decisive_margin": 0.05},
}
OPTIMIZER = {"bert": "transformer optimizer, model_type bert (attention, SkipLayerNorm, bias-GELU fused)",
             "modernbert": "onnxruntime's own graph optimizations (ORT_ENABLE_EXTENDED), saved; the transformer optimizer's "
                           "bert fusions target BERT's graph and are not applied"}

CHECK_SENTENCES = (
    "The patient was admitted with chest pain and shortness of breath.",
    "We randomly assigned 120 adults to receive the drug or placebo for twelve weeks.",
    "Conclusions: early treatment reduced the rate of readmission.",
    "Methods",
    "Background: sepsis remains a leading cause of death in intensive care units worldwide, and early recognition of "
    "organ dysfunction is essential for timely therapy; we studied whether a simple score predicts mortality.",
    "Results showed no significant difference between the groups (p = 0.42).",
    "No acute distress.",
    "To evaluate the safety and efficacy of a new anticoagulant in elderly patients with atrial fibrillation.",
)


class ModelFolderError(UsageError):
    """The model folder is not a loadable sequence classifier (message names the folder and what is wrong)."""


class EngineUnavailableError(UsageError):
    """The engine needs an execution provider this onnxruntime does not offer (fp16 without CUDA)."""


class DriftError(RuntimeError):
    """An ONNX variant's outputs differ from PyTorch's by more than its tolerance."""


# ----------------------------------------------------------------------------- the folder
def read_classifier_config(folder: str | Path) -> dict:
    """config.json of a fine-tuned classifier folder, checked: no remote code, a *ForSequenceClassification of a
    family this bundle knows, labels, weights present. Raises ModelFolderError naming the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: no such model folder")
    path = folder / "config.json"
    if not path.is_file():
        raise ModelFolderError(f"{folder}: no config.json; not a Hugging Face model folder (give the hf_model/ that "
                               "python -m ort_training.finetune writes)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ModelFolderError(f"{path}: not valid JSON ({exc})") from None
    if config.get("auto_map") or config.get("trust_remote_code"):
        raise ModelFolderError(f"{path}: has auto_map (custom model code in the folder); this tool never runs code from a "
                               "model folder (trust_remote_code=False). Use a classifier that python -m ort_training.finetune wrote")
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ModelFolderError(f"{path}: model_type {model_type!r} is not supported; scoring handles {', '.join(FAMILIES)}")
    archs = config.get("architectures") or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ModelFolderError(f"{folder}: is a {', '.join(archs) or 'model without architectures'}, not a sequence classifier; "
                               "fine-tune it first (python -m ort_training.finetune) and score with its hf_model/")
    if not config.get("id2label"):
        raise ModelFolderError(f"{path}: no id2label; a classifier folder names its classes")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ModelFolderError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)})")
    if not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise ModelFolderError(f"{folder}: no tokenizer (tokenizer.json / vocab.txt)")
    check_head(folder, config)
    return config


def head_rows(folder: Path) -> tuple[str, int] | None:
    """(file, output rows) of the classifier head's last layer (`classifier.weight`, or `score.weight`) in the folder's
    weights, read from the safetensors header (no tensor is loaded); None where there is no such tensor."""
    import struct

    path = folder / "model.safetensors"
    if path.is_file():
        try:
            with open(path, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(min(n, 100 << 20)))
        except (OSError, ValueError, struct.error):
            return None  # check_weight_files names a corrupt header when the model is loaded
        names = [k for k in header if k != "__metadata__" and k.split(".")[-2:] in (["classifier", "weight"], ["score", "weight"])]
        if names and isinstance(header[names[-1]], dict) and header[names[-1]].get("shape"):
            return str(path), int(header[names[-1]]["shape"][0])
        return None
    path = folder / "pytorch_model.bin"
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 -- a corrupt file is named when the model is loaded
            return None
        names = [k for k in state if k.split(".")[-2:] in (["classifier", "weight"], ["score", "weight"])]
        return (str(path), int(state[names[-1]].shape[0])) if names else None
    return None


def check_head(folder: Path, config: dict) -> None:
    """The classes the config claims (id2label, num_labels) against the rows of the weights' classifier head: a
    config copied from another model would label the outputs wrongly (or index past them). ModelFolderError naming
    both files."""
    classes = len(config["id2label"])
    if "num_labels" in config and config["num_labels"] != classes:
        raise ModelFolderError(f"{folder / 'config.json'}: num_labels {config['num_labels']} but id2label names {classes} classes")
    found = head_rows(folder)
    if found is not None and found[1] != classes:
        raise ModelFolderError(f"{folder / 'config.json'}: id2label names {classes} class(es) but the classifier head in "
                               f"{found[0]} has {found[1]} outputs; the config and weights come from different models")


def labels_of(config) -> list[str]:
    """Class names in id order (from a config dict or object)."""
    id2label = config["id2label"] if isinstance(config, dict) else config.id2label
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def model_digest(folder: str | Path) -> str:
    """sha256 over config.json and the weights file(s): what the ONNX cache and the predictions are keyed by."""
    folder = Path(folder)
    h = hashlib.sha256()
    for name in ("config.json", *WEIGHT_FILES):
        if (folder / name).is_file():
            h.update(f"{name}:{file_sha256(folder / name)}\n".encode())
    return h.hexdigest()


def tokenizer_digest(folder: str | Path) -> str:
    folder = Path(folder)
    h = hashlib.sha256()
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            h.update(f"{name}:{file_sha256(folder / name)}\n".encode())
    return h.hexdigest()


def load_tokenizer(folder: str | Path):
    """The folder's fast tokenizer, loaded as fine-tuning loads one (export.load_tokenizer; no code runs)."""
    from ort_training.export import load_tokenizer as load_source

    return load_source(folder)


def load_torch_classifier(folder: str | Path, attention: str | None = None):
    """The PyTorch classifier in eval mode (attention: None = transformers' default, or eager / sdpa)."""
    from transformers import AutoModelForSequenceClassification

    from ort_training.weights_import import check_weight_files

    config = read_classifier_config(folder)
    check_weight_files(folder)  # a corrupt header: an error naming the file
    kw = {"attn_implementation": attention} if attention else {}
    # The family's own class where the Auto class would pick another (T5's encoder classifier; models/t5_classifier.py)
    cls = FAMILIES[config["model_type"]].classifier_class(config) or AutoModelForSequenceClassification
    return cls.from_pretrained(str(folder), trust_remote_code=False, **kw).eval()


# ----------------------------------------------------------------------------- the check batch
def check_batch(tokenizer, config) -> dict[str, np.ndarray]:
    """Fixed inputs every variant is checked on: CHECK_SENTENCES (padded, one batch) and 8 rows of seeded random
    token ids of varied lengths. int64 arrays input_ids / attention_mask / token_type_ids."""
    max_len = min(64, int(getattr(config, "max_position_embeddings", None) or 64))  # T5: relative positions, no limit
    enc = tokenizer(list(CHECK_SENTENCES), truncation=True, max_length=max_len, padding="max_length",
                    return_token_type_ids=True, return_attention_mask=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)
    rng = np.random.default_rng(0)
    rand = rng.integers(0, len(tokenizer), size=(8, max_len), dtype=np.int64)
    rmask = np.zeros_like(rand)
    for i, n in enumerate(np.linspace(4, max_len, 8).astype(int)):
        rmask[i, :n] = 1
    rand[rmask == 0] = tokenizer.pad_token_id or 0
    ids, mask = np.concatenate([ids, rand]), np.concatenate([mask, rmask])
    width = int(mask.sum(1).max())
    return {"input_ids": ids[:, :width], "attention_mask": mask[:, :width], "token_type_ids": np.zeros_like(ids[:, :width])}


def _input_names(config) -> tuple[str, ...]:
    return ("input_ids", "attention_mask", "token_type_ids")[:3 if family_of(config).token_types else 2]


@torch.no_grad()
def torch_logits(model, feed: dict[str, np.ndarray]) -> np.ndarray:
    kw = {k: torch.from_numpy(feed[k]) for k in _input_names(model.config)}
    return model(**kw, return_dict=False)[0].float().numpy()


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def compare(variant: str, got: np.ndarray, want: np.ndarray) -> dict:
    """The figures TOLERANCES bounds, for `variant`'s logits `got` against PyTorch's `want`; 'ok' says whether
    they are within it."""
    tol = TOLERANCES[variant]
    p_got, p_want = _softmax(got.astype(np.float64)), _softmax(want.astype(np.float64))
    top2 = np.sort(p_want, -1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) >= tol.get("decisive_margin", 0.0)
    flips = int(((p_got.argmax(-1) != p_want.argmax(-1)) & decisive).sum())
    out = {"rows": int(len(got)), "max_abs_logit": float(np.abs(got - want).max()), "max_abs_prob": float(np.abs(p_got - p_want).max()),
           "label_agreement": float((p_got.argmax(-1) == p_want.argmax(-1)).mean()), "decisive_rows": int(decisive.sum()),
           "decisive_flips": flips, "tolerance": tol}
    ok = bool(np.isfinite(got).all())
    for key in ("max_abs_logit", "max_abs_prob"):
        if key in tol:
            ok &= out[key] <= tol[key]
    if "decisive_margin" in tol:
        ok &= flips == 0
    out["ok"] = ok
    return out


# ----------------------------------------------------------------------------- ONNX variants
def ort_version() -> str:
    onnxruntime = import_onnxruntime()

    return onnxruntime.__version__


def require_provider(variant: str) -> str:
    """The execution provider `variant` runs on; EngineUnavailableError (one line) when onnxruntime lacks it."""
    onnxruntime = import_onnxruntime()

    provider = PROVIDERS.get(variant, "CPUExecutionProvider")
    offered = onnxruntime.get_available_providers()
    if provider not in offered:
        raise EngineUnavailableError(
            f"--engine {variant} needs ONNX Runtime's {provider} (onnxruntime-gpu on a CUDA machine); this onnxruntime "
            f"{ort_version()} offers {', '.join(offered)}: use --engine onnx or onnx-int8 on a CPU")
    return provider


def session(path: str | Path, threads: int | None = None, provider: str = "CPUExecutionProvider", device_id: int = 0):
    """An InferenceSession with all graph optimizations (threads: intra-op threads, default onnxruntime's;
    device_id: the GPU of the CUDA provider, cuda:LOCAL_RANK for a torchrun rank)."""
    onnxruntime = import_onnxruntime()

    opts = onnxruntime.SessionOptions()
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    providers = [(provider, {"device_id": device_id})] if provider == "CUDAExecutionProvider" else [provider]
    return onnxruntime.InferenceSession(str(path), sess_options=opts, providers=providers)


def onnx_logits(sess, feed: dict[str, np.ndarray]) -> np.ndarray:
    names = [i.name for i in sess.get_inputs()]
    return sess.run(["logits"], {k: feed[k] for k in names})[0]


def verify_variant(path: str | Path, variant: str, model, feed: dict[str, np.ndarray], want: np.ndarray | None = None,
                   name: str | Path | None = None) -> dict:
    """Run `path` in onnxruntime on the check batch and compare with PyTorch (`model`, or `want` logits given);
    DriftError when out of TOLERANCES[variant], naming `name` (what the user knows the file by) or else `path`."""
    if want is None:
        want = torch_logits(model, feed)
    got = onnx_logits(session(path, provider=require_provider(variant)), feed)
    result = compare(variant, got, want)
    if not result["ok"]:
        raise DriftError(f"{name or path}: the {variant} ONNX variant drifts from PyTorch beyond its tolerance {result['tolerance']} "
                         f"(max |logit diff| {result['max_abs_logit']:.3g}, max |prob diff| {result['max_abs_prob']:.3g}, "
                         f"{result['decisive_flips']} decisive label flips in {result['rows']} check rows); refused, not used")
    return result


def cache_folder(model_dir: str | Path, cache_dir: str | Path | None = None, digest: str | None = None) -> Path:
    """MODEL/onnx/<weights digest[:16]>-ort<version>/ (or under cache_dir)."""
    digest = digest or model_digest(model_dir)
    root = Path(cache_dir) if cache_dir else Path(model_dir) / "onnx"
    return root / f"{digest[:16]}-ort{ort_version()}"


def _optimize(src: Path, dst: Path, config) -> str:
    optimizer_type = family_of(config).onnx_optimizer  # the family says whether the transformer optimizer's fusions fit it
    if optimizer_type is not None:
        optimize_model = _import_optimizer()
        opt = optimize_model(str(src), model_type=optimizer_type, num_heads=config.num_attention_heads, hidden_size=config.hidden_size)
        opt.save_model_to_file(str(dst))
        fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        logger.info("transformer optimizer fused: %s", fused)
        return OPTIMIZER[config.model_type] + f"; fused {fused}"
    onnxruntime = import_onnxruntime()

    opts = onnxruntime.SessionOptions()
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    onnxruntime.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    return OPTIMIZER.get(config.model_type, "onnxruntime graph optimizations")


def _import_optimizer():
    """onnxruntime.transformers.optimizer.optimize_model. onnxruntime(-training) 1.19.2's optimizer module imports
    coloredlogs, which its wheel does not require and the pinned lock does not hold; it calls it only when run
    as a script, so a stand-in module is enough (adding the package would rebuild every pinned environment)."""
    import importlib.util
    import sys
    import types

    if "coloredlogs" not in sys.modules and importlib.util.find_spec("coloredlogs") is None:
        stand_in = types.ModuleType("coloredlogs")
        stand_in.install = lambda *args, **kwargs: None
        sys.modules["coloredlogs"] = stand_in
    from onnxruntime.transformers.optimizer import optimize_model

    return optimize_model


def _quantize(src: Path, dst: Path) -> str:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Shape inference cannot type the outputs of the optimizer's com.microsoft ops: tell it they are float.
    # Per-channel weight scales: on the demo's fine-tuned MiniLM-L6 the check batch's max |prob diff| was 0.169 with
    # one scale per tensor (refused) and 0.020 per channel. The quantizer logs every tensor at INFO on the root
    # logger: kept quiet.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)
    return "quantize_dynamic, int8 weights (QInt8, per-channel scales), activations quantized per batch at run time"


def _to_fp16(src: Path, dst: Path) -> str:
    from onnxruntime.transformers.onnx_model import OnnxModel
    import onnx

    model = OnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst))
    return "onnxruntime.transformers OnnxModel.convert_float_to_float16 (keep_io_types: int64 inputs, float32 logits)"


def make_variant(variant: str, folder: Path, eager, dst: Path) -> str:
    """Write `variant` to dst, made from its MADE_FROM variant in `folder` (fp32: exported from the eager PyTorch
    classifier); unchecked: ensure_variant checks it before it is kept. Returns how it was made."""
    if variant == "fp32":
        from ort_training.export import export_onnx_classifier

        export_onnx_classifier(eager, dst)
        return "torch.onnx.export (TorchScript exporter), opset 17, dynamic batch and sequence axes"
    src = folder / VARIANT_FILES[MADE_FROM[variant]]
    if variant == "onnx":
        return _optimize(src, dst, eager.config)
    if variant == "onnx-fp16":
        return _to_fp16(src, dst)
    return _quantize(src, dst)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class _FolderLock:
    """A blocking `flock` on FOLDER/.make.lock: several scoring processes (shards, torchrun ranks) sharing one cache
    make a variant once; the others wait, then find it cached. The kernel drops it when the holder dies."""

    def __init__(self, folder: Path):
        self.path = folder / ".make.lock"

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        fcntl.flock(self._fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


def ensure_variant(model_dir: str | Path, variant: str, cache_dir: str | Path | None = None) -> tuple[Path, dict]:
    """The checked ONNX file of `variant` (a key of VARIANT_FILES) for the folder: from the cache when its
    sha256 matches the manifest, else made (and the variants it is made from, MADE_FROM), checked and cached
    (under a lock on the cache folder: processes scoring in parallel make it once). Returns (path, its manifest entry)."""
    require_provider(variant)
    found = _ensure_variant(model_dir, variant, cache_dir, make=False)
    if found is not None:  # cached: nothing written, so a read-only cache works
        return found
    with _FolderLock(cache_folder(model_dir, cache_dir)):
        return _ensure_variant(model_dir, variant, cache_dir, make=True)


def _ensure_variant(model_dir: str | Path, variant: str, cache_dir: str | Path | None, make: bool) -> tuple[Path, dict] | None:
    model_dir = Path(model_dir)
    config_dict = read_classifier_config(model_dir)
    digest = model_digest(model_dir)
    folder = cache_folder(model_dir, cache_dir, digest)
    manifest_path = folder / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    except (OSError, ValueError):
        manifest = {}
    if not isinstance(manifest, dict) or manifest.get("model_digest") != digest or not isinstance(manifest.get("variants"), dict):
        # a manifest without this folder's digest (of config.json + weights) describes another model's graphs (or none):
        # nothing in the folder is trusted; every variant is exported and checked again
        if manifest:
            logger.warning("%s: made for another model (model_digest %s, this folder's %s): exporting again", manifest_path,
                           str(manifest.get("model_digest"))[:16] if isinstance(manifest, dict) else None, digest[:16])
        manifest = {}
    order = [variant]
    while MADE_FROM[order[0]]:
        order.insert(0, MADE_FROM[order[0]])

    def cached(v: str) -> bool:
        entry, path = manifest.get("variants", {}).get(v), folder / VARIANT_FILES[v]
        if not entry or not path.is_file():
            return False
        if file_sha256(path) != entry["sha256"]:
            logger.warning("%s changed since it was checked (sha256 differs from %s); making it again", path, manifest_path)
            return False
        return True

    if cached(variant):
        return folder / VARIANT_FILES[variant], manifest["variants"][variant]
    if not make:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    eager = load_torch_classifier(model_dir, attention="eager")
    feed = check_batch(load_tokenizer(model_dir), eager.config)
    want = torch_logits(eager, feed)
    manifest = {"model_dir": str(model_dir), "model_digest": digest, "model_type": config_dict["model_type"],
                "onnxruntime": ort_version(), "torch": torch.__version__, "variants": manifest.get("variants", {})}
    for v in order:
        if cached(v):
            continue
        path, tmp = folder / VARIANT_FILES[v], _tmp(folder / VARIANT_FILES[v])
        started = time.perf_counter()
        try:
            how = make_variant(v, folder, eager, tmp)
            result = verify_variant(tmp, v, eager, feed, want, name=model_dir)  # tmp is gone once refused
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        manifest["variants"][v] = {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size, "how": how,
                                   "check": result, "seconds": round(time.perf_counter() - started, 1)}
        with atomic_path(manifest_path) as t:
            t.write_text(json.dumps(manifest, indent=2) + "\n")
        logger.info("%s: %s checked against PyTorch (max |logit diff| %.2g, max |prob diff| %.2g; tolerance %s)", path, v,
                    result["max_abs_logit"], result["max_abs_prob"], result["tolerance"])
    return folder / VARIANT_FILES[variant], manifest["variants"][variant]


# ----------------------------------------------------------------------------- engines
class OnnxClassifier:
    """An onnxruntime session that `finetune.predict` runs as it runs the PyTorch classifier: `config`,
    `training`/`eval()`/`train()`, and a call with input_ids / attention_mask [/ token_type_ids] tensors
    returning (logits,)."""

    training = False

    def __init__(self, path: str | Path, config, threads: int | None = None, provider: str = "CPUExecutionProvider", device_id: int = 0):
        self.path, self.config = Path(path), config
        self.session = session(path, threads, provider, device_id)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def __call__(self, return_dict: bool = False, **inputs):
        feed = {k: inputs[k].cpu().numpy().astype(np.int64) for k in self.input_names}
        return (torch.from_numpy(self.session.run(["logits"], feed)[0]),)


def engine_info(model_dir: str | Path, engine: str, cache_dir: str | Path | None = None) -> dict:
    """What identifies `engine`'s numbers for a classifier folder, without building it: the runtime versions and, for
    an ONNX engine, its checked variant (made and cached here when missing: ensure_variant). The record of a scoring
    run and the key of its partial chunks."""
    if engine not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    read_classifier_config(model_dir)
    info = {"engine": engine, "torch": torch.__version__}
    if engine == "torch":
        return info
    provider = require_provider(engine)
    path, entry = ensure_variant(model_dir, engine, cache_dir)
    info.update(onnxruntime=ort_version(), provider=provider, onnx_file=str(path), onnx_sha256=entry["sha256"], how=entry["how"],
                check=entry["check"])
    return info


def load_engine(model_dir: str | Path, engine: str, cache_dir: str | Path | None = None, threads: int | None = None,
                device: torch.device | str = "cpu", info: dict | None = None):
    """(model for finetune.predict, info dict for the record) of `engine` for a classifier folder. `device`: where the
    torch engine's weights go (cpu, cuda:N); onnx-fp16 runs on the CUDA provider's GPU of that index (cuda:N -> N).
    `info`: engine_info's answer when the caller has it already."""
    info = dict(info) if info is not None else engine_info(model_dir, engine, cache_dir)
    device = torch.device(device)
    if engine == "torch":
        if threads:
            torch.set_num_threads(threads)
        model = load_torch_classifier(model_dir).to(device)
        info["attention"] = model.config._attn_implementation
        return model, info
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir), trust_remote_code=False)
    device_id = (device.index or 0) if device.type == "cuda" else 0
    return OnnxClassifier(info["onnx_file"], config, threads, info["provider"], device_id), info


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
