"""Suite-wide setup: import the checkout's packages and keep every test offline."""
import os
import sys

import pytest
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# Nothing may reach the Hugging Face hub (no internet here, and tests must not depend on it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Rust tokenizers' thread pool must be off before tests fork worker processes.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    # Registered here, not in pyproject.toml: the environments are keyed by a hash of that file.
    config.addinivalue_line("markers", "stack_free: tests nothing that torch or transformers do (data_prep, launchers, Slurm, "
                            "multi-node and kill orchestration, Azure ML, Docker files): run once, by `make test`; "
                            "`make test-current` deselects them")


def _ort_usable() -> str | None:
    """None if ORTModule can run here, else why not (the current stack has no ONNX Runtime training)."""
    try:
        from ort_training.loop.backends import import_ortmodule

        import_ortmodule()
    except Exception as exc:  # noqa: BLE001 -- any reason is a reason to skip
        return str(exc).split(";")[0]
    return None


def pytest_collection_modifyitems(config, items):
    """`ort` tests need ORTModule, `onnx` tests onnx + onnxruntime: skipped with the reason on a stack without them."""
    import importlib.util

    import pytest

    ort_reason = _ort_usable() if any(item.get_closest_marker("ort") for item in items) else None
    onnx_missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    for item in items:
        if item.get_closest_marker("ort") and ort_reason:
            item.add_marker(pytest.mark.skip(reason=f"needs ORTModule: {ort_reason}"))
        if item.get_closest_marker("onnx") and onnx_missing:
            item.add_marker(pytest.mark.skip(reason=f"needs {' and '.join(onnx_missing)} (ONNX export)"))


@pytest.fixture(autouse=True)
def _process_state_restored():
    """Tests share a worker process (pytest-xdist, a file per worker): what one test sets process-wide must not reach the
    next. Entry points called in-process set torch's thread count (predict's --threads) and the root logger's handlers
    (logging.basicConfig on a captured stream that is closed afterwards); eager training's gradients depend on the thread
    count, so the BERT guard would see another run's setting."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads if threads is not None else (os.cpu_count() or 1))
