"""Submit two-phase BERT pretraining to Azure Machine Learning (SDK v2) as one pipeline job.

Phase 1 (seq 128) and phase 2 (seq 512) are two command jobs of one pipeline; phase 2 mounts phase
1's output folder and starts from its newest checkpoint. Each phase runs `python -m
ort_training.run_pretraining` under `PyTorchDistribution` (one process per GPU, `--nodes` VMs), in an
environment built from docker/Dockerfile. Metrics reach the run through MLflow (the trainer logs to
MLflow when it sees AZUREML_RUN_ID).

    python azureml/submit.py --phase1-data azureml://datastores/<store>/paths/<phase1 hdf5>/ \\
        --phase2-data azureml:<phase2 asset>:<version> --compute gpu-cluster \\
        --vm-size Standard_ND40rs_v2 --nodes 2
    python azureml/submit.py ... --dry-run --output-yaml job.yaml   # no credentials, no network
    az ml job create --file job.yaml                                 # submit the dry-run YAML later

Code snapshot: the jobs' code (and the image's build context) is never the working tree. `stage_code` copies
the git-tracked files of an allow-list (CODE_ALLOWLIST: the packages, the launch scripts, docker/, the lock file)
into a clean folder outside the checkout and points `code=` at it, so notes, labelled CSVs, work folders and
scored outputs kept in or beside the checkout are never uploaded, whatever `.amlignore` says.

Continued pretraining: `--recipe continued_pretraining --init-checkpoint <published model folder>` makes the
folder a job input of phase 1 (`--init_checkpoint`); the tokenizer travels inside each data folder (data_prep
copies it next to the HDF5 and its manifest names it relatively), or comes from `--tokenizer`. Each of these
inputs is a datastore URI (azureml://...), a data asset (azureml:<name>:<version>), a URL, or a local path,
which Azure ML uploads at submission.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere: the bundle's packages sit beside azureml/

from bundle.atomic import atomic_path  # noqa: E402
from bundle.cli import add_arguments, from_dict, nest  # noqa: E402
from ort_training.config import read_yaml  # noqa: E402
from ort_training.recipe import RECIPES_DIR, check_init_checkpoint, load_recipe, phase_configs, trainer_args  # noqa: E402

logger = logging.getLogger("azureml_submit")

VM_TABLE = RECIPES_DIR / "azureml_vm_sizes.yaml"

# What the jobs' code snapshot holds: an allow-list, so patient data never leaves by accident. The job runs
# `python -m ort_training.run_pretraining` from the snapshot's root (ort_training imports bundle/ and data_prep's
# HDF5 schema); docker/, scripts/bootstrap_env.sh, pyproject.toml and the lock files are the image's build context
# (docker/Dockerfile); .dockerignore keeps the remote build's context the same. Left out: tests/ (its assets
# are sample data), benchmarks/, docs/, the README, CI files, and everything untracked. Only files git tracks are
# copied (an untracked notes.csv dropped inside ort_training/ stays home); without git, a walk of the same
# folders keeping only source-file suffixes.
CODE_ALLOWLIST = ("bundle", "data_prep", "ort_training", "azureml", "scripts", "docker", "pyproject.toml",
                  "constraints.txt", "constraints-current.txt", ".dockerignore")
SOURCE_SUFFIXES = {".py", ".sh", ".sbatch", ".yaml", ".yml", ".json", ".toml", ".txt", ".md", ".ipynb", ".cfg", ".ini"}
NOT_SOURCE = re.compile(r"(^|/)(__pycache__|\.pytest_cache|outputs)(/|$)|\.(pyc|pt|hdf5|h5|parquet|csv|tsv|jsonl|arrow|npy)$")


@dataclass(frozen=True)
class VmSize:
    gpus: int
    """GPUs per VM (= processes per node)."""
    gpu_memory_gb: int
    """Memory of one GPU."""
    micro_batch_size: tuple[int, int]
    """Per-GPU sequences per forward pass in phase 1 and phase 2 (the notebook's gpu_feed_batch_size)."""


def load_vm_table(path: Path = VM_TABLE) -> tuple[str, dict[str, VmSize]]:
    """(recipe name, VM sizes)."""
    raw = read_yaml(path)
    sizes = {vm: VmSize(spec["gpus"], spec["gpu_memory_gb"], (spec["micro_batch_size"]["phase1"], spec["micro_batch_size"]["phase2"]))
             for vm, spec in raw["vm_sizes"].items()}
    return raw["recipe"], sizes


TABLE_RECIPE, VM_SIZES = load_vm_table()
TABLE_NODES = (1, 2, 4, 8, 16)


def defaults_table(recipe: str = TABLE_RECIPE) -> str:
    """The VM-size table as Markdown (printed by --list-vm-sizes): each phase's batch split, derived
    from the recipe's global batch for the VM's GPUs x nodes."""
    rows = [
        "| VM size | nodes | GPUs | GPU memory | phase 1: global = GPUs x micro x accumulation | phase 2: global = GPUs x micro x accumulation |",
        "|---|---:|---:|---:|---|---|",
    ]
    for vm, size in VM_SIZES.items():
        for nodes in TABLE_NODES:
            plans = []
            cfg = SubmitConfig(phase1_data="-", phase2_data="-", vm_size=vm, nodes=nodes, recipe=recipe)
            try:
                cfg.resolve(plans)
            except ValueError:
                continue  # the global batch does not split over these GPUs
            cells = [f"{p.global_batch_size:,} = {p.ranks} x {p.micro_batch_size} x {p.gradient_accumulation_steps}" for p in plans]
            rows.append(f"| {vm} | {nodes} | {nodes * size.gpus} | {size.gpu_memory_gb} GB | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


@dataclass
class PhaseConfig:
    """Overrides of one phase; None: the recipe's value (the micro-batch: the VM-size table's)."""

    learning_rate: Optional[float] = None
    """Peak LAMB learning rate."""
    warmup_proportion: Optional[float] = None
    """Fraction of the phase's steps spent warming up."""
    max_steps: Optional[int] = None
    """Optimizer steps of the phase."""
    global_batch_size: Optional[int] = None
    """Sequences per optimizer step over all GPUs (default: the recipe's); per-GPU batch and accumulation follow."""
    micro_batch_size: Optional[int] = None
    """At most this many sequences per GPU per forward pass (default: the VM size's, else the recipe's)."""
    train_batch_size: Optional[int] = None
    """Sequences per GPU per optimizer step, instead of the one derived from the global batch."""
    gradient_accumulation_steps: Optional[int] = None
    """Micro-batches per optimizer step, instead of the derived one."""


@dataclass
class SubmitConfig:
    """Everything one submission needs; flags are generated from these fields."""

    phase1_data: str = ""
    """Phase-1 HDF5 folder: azureml://datastores/<store>/paths/<dir>/, azureml:<asset>:<version> or a URL."""
    phase2_data: str = ""
    """Phase-2 HDF5 folder, same forms as --phase1-data."""
    init_checkpoint: Optional[str] = None
    """Phase 1's starting weights (continued pretraining): a Hugging Face folder, an NVIDIA .pt or a checkpoint of
    this bundle, as a datastore URI, data asset, URL or local path (uploaded); default: random initialization."""
    tokenizer: Optional[str] = None
    """The tokenizer the data was made with (vocab.txt or a tokenizer folder), same forms; default: the one inside the
    data folder that data_prep's manifest names."""
    output_path: Optional[str] = None
    """Datastore folder for the outputs (azureml://datastores/<store>/paths/<dir>/); default: the workspace's."""
    workspace_config: str = "config.json"
    """config.json downloaded from the workspace page (used unless all three ids below are given)."""
    subscription_id: Optional[str] = None
    """Azure subscription id (instead of config.json)."""
    resource_group: Optional[str] = None
    """Resource group of the workspace."""
    workspace_name: Optional[str] = None
    """Azure ML workspace name."""
    compute: str = "gpu-cluster"
    """Compute cluster to run on."""
    vm_size: str = "Standard_ND40rs_v2"
    """VM size of the cluster; picks GPUs per node and the batch defaults."""
    nodes: int = 1
    """VMs per phase (instance_count)."""
    gpus_per_node: Optional[int] = None
    """Processes per VM (default: the VM size's GPU count)."""
    environment: Optional[str] = None
    """Registered environment (azureml:<name>:<version>) instead of building docker/Dockerfile."""
    recipe: str = TABLE_RECIPE
    """Recipe (ort_training/recipes/NAME.yaml or a path): every setting not given here."""
    bert_config: Optional[str] = None
    """BERT config: tiny, base, large or a path inside the uploaded code (default: the recipe's)."""
    precision: Optional[Literal["fp16", "bf16", "fp32"]] = None
    """Training precision (default: the recipe's)."""
    backend: Optional[Literal["ort", "eager", "compile"]] = None
    """ort = ORTModule, eager = plain PyTorch, compile = torch.compile (default: the recipe's)."""
    seed: Optional[int] = None
    """Random seed (default: the recipe's, else the trainer's)."""
    num_steps_per_checkpoint: Optional[int] = None
    """Checkpoint interval in optimizer steps (default: the recipe's)."""
    shm_size: str = "16g"
    """/dev/shm of the job containers (NCCL and DataLoader workers use it)."""
    experiment_name: str = "bert-ort-pretraining"
    """Azure ML experiment."""
    phase1: PhaseConfig = field(default_factory=PhaseConfig)
    """Phase 1 (seq 128)."""
    phase2: PhaseConfig = field(default_factory=PhaseConfig)
    """Phase 2 (seq 512)."""
    dry_run: bool = False
    """Write the job YAML and stop: needs no credentials and no network."""
    output_yaml: Optional[str] = None
    """Where to write the job YAML (required with --dry-run)."""
    code_dir: Optional[str] = None
    """Where to stage the code snapshot the jobs upload (the allow-listed tracked files only; default:
    $XDG_CACHE_HOME/ort-bert-pretraining/azureml-code/code-<content hash>, outside the checkout)."""
    stream: bool = False
    """After submitting, stream the logs until the pipeline ends."""

    @property
    def processes_per_node(self) -> int:
        return self.gpus_per_node if self.gpus_per_node is not None else VM_SIZES[self.vm_size].gpus

    def resolve(self, plans: list | None = None) -> "SubmitConfig":
        """Check every value with the trainer's own config class and derive each phase's per-GPU batch and
        accumulation from the recipe's global batch for GPUs x --nodes; raises ValueError naming the flag (with
        the arithmetic where the batch does not split). Afterwards phase1/phase2 hold the values the jobs run
        with; `plans`, when given, receives each phase's BatchPlan."""
        if not self.phase1_data or not self.phase2_data:
            raise ValueError("--phase1-data and --phase2-data are required (datastore paths or data assets)")
        if self.nodes < 1:
            raise ValueError(f"--nodes must be >= 1, got {self.nodes}")
        if self.gpus_per_node is None and self.vm_size not in VM_SIZES:
            raise ValueError(f"--vm-size {self.vm_size} is not in the table {sorted(VM_SIZES)}; pass --gpus-per-node")
        if self.processes_per_node < 1:
            raise ValueError(f"--gpus-per-node must be >= 1, got {self.gpus_per_node}")
        if self.dry_run and not self.output_yaml:
            raise ValueError("--dry-run needs --output-yaml PATH")
        check_init_checkpoint(load_recipe(self.recipe), self.init_checkpoint, "--init-checkpoint")
        size = VM_SIZES.get(self.vm_size)
        for index, phase in enumerate((self.phase1, self.phase2)):
            if phase.micro_batch_size is None and size is not None:
                phase.micro_batch_size = size.micro_batch_size[index]
        resolved_plans: list = []
        for phase, resolved in zip((self.phase1, self.phase2), self.phase_configs(resolved_plans)):
            for name in ("learning_rate", "warmup_proportion", "max_steps", "train_batch_size", "gradient_accumulation_steps"):
                setattr(phase, name, getattr(resolved, name))
        if plans is not None:
            plans.extend(resolved_plans)
        return self

    def phase_configs(self, plans: list | None = None):
        """The trainer configs of both phases: the recipe < these overrides, with Azure ML's mounted paths."""
        both = {"config_file": self.bert_config, "precision": self.precision, "backend": self.backend, "seed": self.seed,
                "num_steps_per_checkpoint": self.num_steps_per_checkpoint, "disable_progress_bar": True}
        both = {k: v for k, v in both.items() if v is not None}
        per_phase = [{k: v for k, v in dataclasses.asdict(p).items() if v is not None} for p in (self.phase1, self.phase2)]
        p1, p2 = phase_configs(load_recipe(self.recipe), both, *per_phase, output_dir="/outputs",
                               nproc_per_node=self.processes_per_node, nnodes=self.nodes, plans=plans)
        # ${{...}} are filled in by Azure ML with the mounted paths. A retried or preempted step continues
        # from its own newest checkpoint; phase 2 starts from phase 1's output (a separate step's folder).
        tokenizer = {"vocab_file": "${{inputs.tokenizer}}"} if self.tokenizer else {}
        p1 = dataclasses.replace(p1, input_dir="${{inputs.data}}", output_dir="${{outputs.output}}", **tokenizer,
                                 init_checkpoint="${{inputs.init_checkpoint}}" if self.init_checkpoint else None)
        p2 = dataclasses.replace(p2, input_dir="${{inputs.data}}", output_dir="${{outputs.output}}", **tokenizer,
                                 init_checkpoint="${{inputs.phase1_output}}")
        return p1, p2


PLACEHOLDER = re.compile(r"^\$\{\{[\w.]+\}\}$")


def _train_command(cfg) -> str:
    """The trainer's command line of one phase (Azure ML's PyTorchDistribution starts one per GPU). Values are
    shell-quoted (a path with a space stays one argument); the ${{...}} placeholders stay bare, Azure ML
    substitutes them in the text before the shell reads it."""
    args = ["python", "-m", "ort_training.run_pretraining", *trainer_args(cfg)]
    return " ".join(a if PLACEHOLDER.match(a) else shlex.quote(a) for a in args)


def _input_path(value: str) -> str:
    """A datastore URI, data asset or URL as given; a local path made absolute (Azure ML uploads it at submission;
    never an azureml: reference, which would name an asset that does not exist)."""
    if re.match(r"^(azureml:|azureml://|https?://|wasbs?://|abfss?://|adl://)", value):
        return value
    path = Path(value).expanduser()
    if not path.exists():
        raise ValueError(f"{value}: not a datastore URI (azureml://...), data asset (azureml:<name>:<version>) or URL, "
                         "and no such local file or folder to upload")
    return str(path.resolve())


def code_files(repo: Path = REPO_ROOT) -> list[str]:
    """The snapshot's files, relative to `repo`: the tracked files under CODE_ALLOWLIST (a checkout), else a walk of
    those folders keeping source files only (an unpacked copy without .git)."""
    allow = [name for name in CODE_ALLOWLIST if (repo / name).exists()]
    if (repo / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--", *allow], capture_output=True, check=True).stdout
        files = [f for f in listed.decode().split("\0") if f and (repo / f).is_file()]  # a tracked file deleted here: skipped
        untracked = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--others", "--", *allow], capture_output=True,
                                   check=True).stdout.decode().split("\0")
        left = sorted(f for f in untracked if f and not NOT_SOURCE.search(f))
        if left:
            logger.warning("not in the code snapshot (untracked; `git add` what the job needs): %s%s", ", ".join(left[:10]),
                           f" and {len(left) - 10} more" if len(left) > 10 else "")
        return sorted(files)
    files = []
    for name in allow:
        path = repo / name
        candidates = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for p in candidates:
            rel = p.relative_to(repo).as_posix()
            if p.is_file() and not NOT_SOURCE.search(rel) and (p.suffix in SOURCE_SUFFIXES or p.name.startswith("Dockerfile")
                                                               or rel in CODE_ALLOWLIST):
                files.append(rel)
    return sorted(files)


def default_code_dir(files: list[str], repo: Path = REPO_ROOT) -> Path:
    """A folder named by the snapshot's content (the same code reuses the folder, and Azure ML its uploaded snapshot and
    image), in the user's cache: outside the checkout, where nothing else is written."""
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode() + b"\0" + (repo / rel).read_bytes() + b"\0")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ort-bert-pretraining" / "azureml-code" / f"code-{digest.hexdigest()[:16]}"


def stage_code(code_dir: str | os.PathLike | None = None, repo: Path = REPO_ROOT) -> Path:
    """Copy the allow-listed files (`code_files`) into a clean folder and return it: the jobs' `code=` and the image's
    build context. The folder is rebuilt from scratch (a stale file never stays) and swapped in whole."""
    repo = Path(repo).resolve()
    files = code_files(repo)
    if not files:
        raise ValueError(f"{repo}: none of {', '.join(CODE_ALLOWLIST)} found; run submit.py from the bundle's checkout")
    dest = Path(code_dir).expanduser().resolve() if code_dir else default_code_dir(files, repo)
    if dest == repo or repo in dest.parents and not dest.is_relative_to(repo / "azureml" / "outputs"):
        raise ValueError(f"--code-dir {dest}: inside the checkout; give a folder outside it (or under azureml/outputs/)")
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel in files:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, tmp / rel)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    logger.info("code snapshot: %d files (%s) staged in %s", len(files), ", ".join(a for a in CODE_ALLOWLIST if (repo / a).exists()), dest)
    return dest


def build_pipeline_job(cfg: SubmitConfig, code_dir: str | os.PathLike | None = None):
    """Build the two-phase PipelineJob (no network). `code_dir`: the staged code snapshot (default: `stage_code`,
    with --code-dir); it is also the Docker build context. Never the checkout itself."""
    from azure.ai.ml import Input, Output, PyTorchDistribution, command
    from azure.ai.ml.constants import AssetTypes, InputOutputModes
    from azure.ai.ml.dsl import pipeline
    from azure.ai.ml.entities import BuildContext, Environment

    code_dir = str(code_dir if code_dir is not None else stage_code(cfg.code_dir))
    phase1_cfg, phase2_cfg = cfg.phase_configs()
    # Anonymous environment: Azure ML names it by a hash of the build context and reuses the image
    # until docker/ or the code changes (--environment skips the build entirely).
    environment = cfg.environment or Environment(
        description="docker/Dockerfile: CUDA 11.8, torch 2.6.0, onnxruntime-training 1.19.2, torch-ort",
        build=BuildContext(path=code_dir, dockerfile_path="docker/Dockerfile"),
    )
    common = dict(
        code=code_dir,
        environment=environment,
        compute=cfg.compute,
        distribution=PyTorchDistribution(process_count_per_instance=cfg.processes_per_node),
        instance_count=cfg.nodes,
        shm_size=cfg.shm_size,
        environment_variables={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "NCCL_DEBUG": "WARN"},
    )
    data_in = Input(type=AssetTypes.URI_FOLDER, mode=InputOutputModes.RO_MOUNT)
    folder_out = Output(type=AssetTypes.URI_FOLDER, mode=InputOutputModes.RW_MOUNT)
    extra_inputs = {}
    if cfg.tokenizer:
        kind = AssetTypes.URI_FILE if Path(cfg.tokenizer).suffix in (".txt", ".json") else AssetTypes.URI_FOLDER
        extra_inputs["tokenizer"] = Input(type=kind, mode=InputOutputModes.RO_MOUNT)
    init_inputs = {"init_checkpoint": Input(type=AssetTypes.URI_FILE if cfg.init_checkpoint.endswith(".pt") else AssetTypes.URI_FOLDER,
                                            mode=InputOutputModes.RO_MOUNT)} if cfg.init_checkpoint else {}
    phase1_step = command(
        name="bert_phase1",
        display_name="phase 1 (seq 128)",
        command=_train_command(phase1_cfg),
        inputs={"data": data_in, **extra_inputs, **init_inputs},
        outputs={"output": folder_out},
        **common,
    )
    phase2_step = command(
        name="bert_phase2",
        display_name="phase 2 (seq 512)",
        command=_train_command(phase2_cfg),
        inputs={"data": data_in, "phase1_output": Input(type=AssetTypes.URI_FOLDER, mode=InputOutputModes.RO_MOUNT), **extra_inputs},
        outputs={"output": folder_out},
        **common,
    )

    def job_input(value: str, kind: str):
        return Input(type=kind, path=_input_path(value), mode=InputOutputModes.RO_MOUNT)

    pipeline_inputs = {"phase1_data": job_input(cfg.phase1_data, AssetTypes.URI_FOLDER),
                       "phase2_data": job_input(cfg.phase2_data, AssetTypes.URI_FOLDER)}
    if cfg.tokenizer:
        pipeline_inputs["tokenizer"] = job_input(cfg.tokenizer, extra_inputs["tokenizer"].type)
    if cfg.init_checkpoint:
        pipeline_inputs["init_checkpoint"] = job_input(cfg.init_checkpoint, init_inputs["init_checkpoint"].type)

    @pipeline(name="bert_ort_pretraining", description="BERT pretraining with ONNX Runtime: phase 1 then phase 2")
    def two_phase(phase1_data, phase2_data, tokenizer=None, init_checkpoint=None):
        shared = {"tokenizer": tokenizer} if cfg.tokenizer else {}
        first = {"init_checkpoint": init_checkpoint} if cfg.init_checkpoint else {}
        phase1 = phase1_step(data=phase1_data, **shared, **first)
        phase2 = phase2_step(data=phase2_data, phase1_output=phase1.outputs.output, **shared)
        return {"phase1_output": phase1.outputs.output, "phase2_output": phase2.outputs.output}

    job = two_phase(**pipeline_inputs)
    job.experiment_name = cfg.experiment_name
    job.settings.default_compute = cfg.compute
    if cfg.output_path:
        base = cfg.output_path.rstrip("/")
        for name in ("phase1_output", "phase2_output"):
            job.outputs[name].path = f"{base}/{name}/"
    return job


def write_job_yaml(cfg: SubmitConfig, path: str | os.PathLike) -> Path:
    """Write the job as YAML, atomically (`az ml job create --file` submits it; code and Docker
    build context are the absolute path of the staged snapshot, which stays until the next change of the code)."""
    return dump_job(build_pipeline_job(cfg), path)


def dump_job(job, path: str | os.PathLike) -> Path:
    """A built job as YAML at `path`, atomically, its local inputs' paths as given (submit_task.py's jobs too)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        job.dump(tmp)  # the temporary name does not exist yet: dump() refuses to overwrite a file
        _unprefix_local_inputs(Path(tmp))
    return path


def _unprefix_local_inputs(path: Path) -> None:
    """azure-ai-ml 1.35's dump() writes a local input as `azureml:/abs/path`, which reads back as the name of
    a workspace asset that does not exist; the pipeline's inputs get their plain local path back (uploaded at
    submission). Datastore URIs (azureml://) and assets (azureml:<name>:<version>) never start with one slash."""
    import yaml

    raw = yaml.safe_load(path.read_text())
    fixed = False
    for spec in (raw.get("inputs") or {}).values():
        value = spec.get("path") if isinstance(spec, dict) else None
        if isinstance(value, str) and re.match(r"^azureml:/[^/]", value):
            spec["path"] = value.removeprefix("azureml:")
            fixed = True
    if fixed:
        path.write_text(yaml.safe_dump(raw, sort_keys=False))


def ml_client(cfg: SubmitConfig):
    """Workspace from the three ids when all are given, else from config.json."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential()
    ids = (cfg.subscription_id, cfg.resource_group, cfg.workspace_name)
    if all(ids):
        return MLClient(credential, *ids)
    if any(ids):
        raise ValueError("give all of --subscription-id, --resource-group and --workspace-name, or none (config.json)")
    if not Path(cfg.workspace_config).is_file():
        raise ValueError(f"--workspace-config {cfg.workspace_config} not found; download it from the workspace page or pass the three ids")
    return MLClient.from_config(credential=credential, path=cfg.workspace_config)


def submit(cfg: SubmitConfig):
    """Submit the pipeline and return the created job."""
    client = ml_client(cfg)
    job = client.jobs.create_or_update(build_pipeline_job(cfg), experiment_name=cfg.experiment_name)
    logger.info("submitted %s: %s", job.name, job.studio_url)
    if cfg.stream:
        client.jobs.stream(job.name)
    return job


# ---- flags generated from the dataclasses (bundle.cli: one helper for every entry point)
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python azureml/submit.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--list-vm-sizes", action="store_true", help="print the VM-size defaults table and exit")
    add_arguments(parser, SubmitConfig, dash=True)
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[SubmitConfig, argparse.Namespace]:
    ns = build_parser().parse_args(argv)
    values = {k.replace("-", "_"): v for k, v in vars(ns).items() if k != "list_vm_sizes"}
    return from_dict(SubmitConfig, nest(values), source="flags"), ns


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg, ns = parse_config(argv)
        if ns.list_vm_sizes:
            print(defaults_table())
            return 0
        cfg.resolve()
        if cfg.dry_run:
            path = write_job_yaml(cfg, cfg.output_yaml)
            logger.info("dry run: wrote %s (submit it with `az ml job create --file %s`)", path, path)
            return 0
        if cfg.output_yaml:
            write_job_yaml(cfg, cfg.output_yaml)
        submit(cfg)
    except ValueError as exc:
        print(f"submit.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
