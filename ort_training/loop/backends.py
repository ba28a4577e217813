"""The backend wrap of the trained module: ORTModule (torch-ort, ONNX Runtime training), eager PyTorch or
torch.compile, and the check of whether this stack can run ORT at all."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from typing import Literal

import torch
from torch import nn
from ort_training.errors import MissingDependencyError, UsageError

logger = logging.getLogger(__name__)

ORT_INSTALL_HINT = (
    "install it with `pip install onnxruntime-training-cpu==1.19.2 torch-ort==1.19.2` (CUDA: onnxruntime-training) "
    "and build its extensions with `python -m torch_ort.configure` (or scripts/bootstrap_env.sh); "
    "or run with --backend eager"
)


def ort_env(memory_opt_level: int) -> dict[str, str]:
    """ORTModule reads its feature switches from the environment when it is constructed."""
    return {
        "ORTMODULE_MEMORY_OPT_LEVEL": str(memory_opt_level),
        # The model is not touched between construction and export, so the defensive deepcopy
        # ORTModule makes before exporting only costs memory and time.
        "ORTMODULE_DEEPCOPY_BEFORE_MODEL_EXPORT": "0",
        # ORTModule's default policy falls back to PyTorch, silently, when it cannot export the model (HF Llama with
        # a 2-D mask does): a run that says --backend ort must be trained by ONNX Runtime or stop.
        "ORTMODULE_FALLBACK_POLICY": "FALLBACK_DISABLE",
    }


ORT_MAX_TORCH = (2, 7)  # ORTModule's C++ extensions break on torch >= 2.7
ORT_MAX_PYTHON = (3, 11)  # onnxruntime-training 1.19.2 ships wheels up to Python 3.11


def ort_stack_problem() -> str | None:
    """Why --backend ort cannot work in this environment whatever is installed, or None."""
    import sys

    torch_version = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    python = sys.version_info[:2]
    if torch_version >= ORT_MAX_TORCH or python > ORT_MAX_PYTHON:
        return (f"--backend ort is not available on this stack: ONNX Runtime training is frozen at its last release, 1.19.2, "
                f"which supports torch < {'.'.join(map(str, ORT_MAX_TORCH))} and Python <= {'.'.join(map(str, ORT_MAX_PYTHON))} only "
                f"(this environment: torch {torch.__version__}, Python {python[0]}.{python[1]}). Use --backend eager or --backend "
                "compile, or the pinned stack for ORT (scripts/bootstrap_env.sh: torch 2.6.0 + onnxruntime-training 1.19.2, constraints.txt)")
    return None


def import_onnxruntime():
    """onnxruntime, imported once per process without the two side costs of the pinned training wheel.

    - DeepSpeed: `import onnxruntime` (training wheel) loads ORTModule, whose `__init__` imports DeepSpeed, when it is
      installed, only to patch `deepspeed.checkpointing.checkpoint`, and whose first export imports it again through
      `onnxruntime.training.utils.hooks` for ZeRO-3 hooks (which this stack's DeepSpeed cannot give: ORT warns
      "DeepSpeed import error" and goes on). That was 3 s of a quiet 2-core machine, 5-6 s under load, in every
      process that trains on --backend ort or scores with ONNX Runtime, for nothing the bundle uses: it never calls
      DeepSpeed's activation checkpointing, and --deepspeed runs ZeRO-1/2 through DeepSpeed's own engine. So, unless
      the process has loaded DeepSpeed already, ORT and its hooks module are imported with DeepSpeed looking absent
      (`sys.modules` holds None for it during the import only); afterwards `import deepspeed` works as before.
    - stderr: the training wheel's import runs torch.utils.cpp_extension, which prints "No CUDA runtime is found,
      using CUDA_HOME=..." on every CPU machine: kept out of the user's output (errors still raise).
    """
    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"]
    hide = "deepspeed" not in sys.modules
    if hide:
        sys.modules["deepspeed"] = None  # import deepspeed -> ImportError; importlib.util.find_spec -> None
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import onnxruntime

            with contextlib.suppress(ImportError):  # the inference wheel has no training package
                import onnxruntime.training.utils.hooks  # noqa: F401 -- loaded now, while DeepSpeed looks absent
    finally:
        if hide and sys.modules.get("deepspeed", 0) is None:
            del sys.modules["deepspeed"]
    return onnxruntime


def import_ortmodule():
    """ORTModule class, or a RuntimeError that says why not and how to fix it."""
    if (problem := ort_stack_problem()) is not None:
        raise MissingDependencyError(problem)
    try:
        import_onnxruntime()
        from onnxruntime.training import ortmodule
        from torch_ort import ORTModule
    except Exception as exc:  # ImportError, or RuntimeError/OSError from a broken install
        raise MissingDependencyError(f"--backend ort needs torch-ort / onnxruntime-training, which failed to import ({exc}); {ORT_INSTALL_HINT}") from exc
    # ORT records a missing C++ extension build at import time and raises it only inside
    # ORTModule(...); check it up front so the message says how to fix it.
    if ortmodule._FALLBACK_INIT_EXCEPTION is not None:
        exc = ortmodule._FALLBACK_INIT_EXCEPTION
        raise MissingDependencyError(f"--backend ort: ORTModule is not usable ({exc}); {ORT_INSTALL_HINT}") from exc
    return ORTModule


def wrap_model(
    model: nn.Module,
    backend: Literal["ort", "eager", "compile"],
    ort_optimizations: bool = True,
    ort_memory_opt_level: int = 0,
) -> nn.Module:
    """Wrap for the chosen backend. Wrappers share the parameters of `model`, so the trainer keeps
    saving and exporting the plain module."""
    if backend == "eager":
        return model
    if backend == "compile":
        return torch.compile(model)
    if backend == "ort":
        os.environ.update(ort_env(ort_memory_opt_level))
        ORTModule = import_ortmodule()
        from torch_ort import DebugOptions, LogLevel

        ort_model = ORTModule(model, DebugOptions(log_level=LogLevel.WARNING))
        if not ort_optimizations:
            # ORT 1.19.2: ORTMODULE_ENABLE_COMPUTE_OPTIMIZER=0 also clears the embedding-sparsity flag,
            # and export then crashes (_graph_transition_manager passes that flag to the label-sparsity
            # hook and iterates its None result). So switch the options on the managers instead,
            # before the first forward exports the graph.
            for training in (True, False):
                opts = ort_model._torch_module._execution_manager(training)._runtime_options
                opts.enable_compute_optimizer = False
                opts.enable_label_sparse_optimizer = False
        return ort_model
    raise UsageError(f"--backend must be ort, eager or compile, got {backend!r}")
