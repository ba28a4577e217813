"""Fail an image build (or CI) when the installed environment drifts from the pins it was built for.

Both Dockerfiles run it right after scripts/bootstrap_env.sh with the versions in their ARGs, and
tests/unit/test_docker.py runs it against the CI venv built by the same script, so the ARGs, the
lock file and what pip actually installed cannot disagree silently.

    python docker/check_versions.py torch==2.6.0 onnxruntime-training-cpu==1.19.2 torch-ort==1.19.2 --ortmodule
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys

from packaging.requirements import Requirement


def check(requirements: list[str]) -> list[str]:
    """Return one message per requirement that the installed distributions do not satisfy."""
    problems = []
    for text in requirements:
        req = Requirement(text)
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            problems.append(f"{req.name} is not installed (wanted {req.specifier})")
            continue
        # `==2.6.0` also admits the local build 2.6.0+cu118 (PEP 440), which is what the CUDA image holds.
        if not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} is installed, the pin is {req.specifier}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requirements", nargs="+", help="pins such as torch==2.6.0")
    parser.add_argument(
        "--ortmodule", action="store_true", help="also import ORTModule (fails if torch_ort.configure did not build its extensions)"
    )
    args = parser.parse_args(argv)
    problems = check(args.requirements)
    if args.ortmodule and not problems:
        try:
            from onnxruntime.training.ortmodule import ORTModule  # noqa: F401
        except Exception as exc:  # any import failure means the image cannot train with ORT
            problems.append(f"ORTModule does not import: {exc!r}; run `python -m torch_ort.configure`")
    for line in problems:
        print(f"check_versions: {line}", file=sys.stderr)
    if not problems:
        print("check_versions: ok: " + ", ".join(args.requirements))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
