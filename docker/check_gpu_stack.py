"""Report what a GPU image's Python layer holds, and fail when it cannot train on a GPU host.

Both GPU images run it: at build time (no GPU visible) it checks what does not need one; on the GPU
host, `--require-gpu` adds what only a GPU shows. Prints one `name: value` line per fact.

    python docker/check_gpu_stack.py --stack current               # torch's CUDA build + bundled CUDA libraries
    python docker/check_gpu_stack.py --stack ort                   # + ORTModule and the CUDA execution provider
    python docker/check_gpu_stack.py --stack ort --require-gpu     # on the GPU host: a CUDA device must be visible

What a GPU host must show (docs/clusters.md): `torch cuda available: True`, and for the ORT image
`ORTModule import: ok` and `CUDAExecutionProvider` among `onnxruntime providers`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import platform
import sys
from pathlib import Path


def nvidia_wheels() -> dict[str, str]:
    """The nvidia-* distributions (CUDA runtime, cuDNN, cuBLAS, NCCL, ...) that PyPI's CUDA torch depends on."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("nvidia-"):
            found[name] = dist.version
    return dict(sorted(found.items()))


def bundled_cuda_libraries() -> list[Path]:
    """Shared libraries those wheels put under site-packages/nvidia/ (what torch loads at import)."""
    roots = {Path(p) / "nvidia" for p in sys.path if p and (Path(p) / "nvidia").is_dir()}
    return sorted(so for root in roots for so in root.rglob("lib*.so*") if so.is_file())


def report(stack: str, require_gpu: bool) -> list[str]:
    """Print the facts; return the problems (empty when the image is fit for its stack)."""
    problems: list[str] = []
    print(f"python: {platform.python_version()}")
    import torch

    print(f"torch: {torch.__version__}")
    print(f"torch cuda build: {torch.version.cuda}")
    if torch.version.cuda is None:
        problems.append(f"torch {torch.__version__} is a CPU-only build; a GPU image needs a CUDA build")
    wheels = nvidia_wheels()
    libs = bundled_cuda_libraries()
    print(f"nvidia wheels: {len(wheels)}" + "".join(f"\n  {name}=={version}" for name, version in wheels.items()))
    print(f"bundled CUDA libraries: {len(libs)}" + "".join(f"\n  {lib.relative_to(lib.parents[2])}" for lib in libs))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    print(f"cudnn: {cudnn}")
    if stack == "current" and not libs:
        problems.append("no CUDA libraries under site-packages/nvidia: torch is not PyPI's CUDA build with its nvidia-* wheels")
    available = torch.cuda.is_available()
    print(f"torch cuda available: {available}")
    for i in range(torch.cuda.device_count() if available else 0):
        print(f"  device {i}: {torch.cuda.get_device_name(i)} (compute capability {'.'.join(map(str, torch.cuda.get_device_capability(i)))})")
    if require_gpu and not available:
        problems.append("no CUDA device visible to torch: run the container with --gpus all (docker) or --nv (apptainer)")
    if stack == "ort":
        problems += check_ort()
    return problems


def check_ort() -> list[str]:
    problems = []
    try:
        import onnxruntime
    except ImportError as exc:
        return [f"onnxruntime does not import: {exc}"]
    providers = onnxruntime.get_available_providers()
    training = importlib.metadata.version("onnxruntime-training") if has("onnxruntime-training") else "not installed"
    print(f"onnxruntime: {onnxruntime.__version__} (onnxruntime-training: {training})")
    print(f"onnxruntime providers: {', '.join(providers)}")
    if "CUDAExecutionProvider" not in providers:
        problems.append("CUDAExecutionProvider is not among onnxruntime's providers: this is not ONNX Runtime training's CUDA wheel")
    try:
        from onnxruntime.training.ortmodule import ORTModule  # noqa: F401

        print("ORTModule import: ok")
    except Exception as exc:  # any import failure means this layer cannot train with ORT
        print(f"ORTModule import: FAILED ({exc!r})")
        problems.append(f"ORTModule does not import: {exc!r}; run `python -m torch_ort.configure` on a host with the CUDA toolkit")
    return problems


def has(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", choices=["current", "ort"], required=True, help="current: Dockerfile.current; ort: docker/Dockerfile")
    parser.add_argument("--require-gpu", action="store_true", help="also fail when no CUDA device is visible (run this on the GPU host)")
    args = parser.parse_args(argv)
    problems = report(args.stack, args.require_gpu)
    for line in problems:
        print(f"check_gpu_stack: error: {line}", file=sys.stderr)
    print(f"check_gpu_stack: {'FAILED' if problems else 'ok'} ({args.stack} stack)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
