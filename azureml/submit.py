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
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

logger = logging.getLogger("azureml_submit")

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class VmSize:
    gpus: int
    """GPUs per VM (= processes per node)."""
    gpu_memory_gb: int
    """Memory of one GPU."""


VM_SIZES: dict[str, VmSize] = {
    "Standard_ND40rs_v2": VmSize(gpus=8, gpu_memory_gb=32),  # 8 x V100 32 GB, InfiniBand
    "Standard_NC24rs_v3": VmSize(gpus=4, gpu_memory_gb=16),  # 4 x V100 16 GB, InfiniBand
}

# (vm size, nodes) -> ((phase-1 train_batch_size, accumulation), (phase-2 train_batch_size, accumulation)).
# train_batch_size is per GPU per optimizer step. Copied from the original ORT bioBERT notebook, which
# tuned them to keep the global batch at ~65k (phase 1) and 32k (phase 2) sequences for BERT-large
# in fp16; other sizes or node counts need --train-batch-size/--gradient-accumulation-steps.
BATCH_DEFAULTS: dict[tuple[str, int], tuple[tuple[int, int], tuple[int, int]]] = {
    ("Standard_ND40rs_v2", 1): ((8192, 64), (4096, 256)),
    ("Standard_ND40rs_v2", 2): ((4096, 32), (2048, 128)),
    ("Standard_ND40rs_v2", 4): ((2048, 16), (1024, 64)),
    ("Standard_ND40rs_v2", 8): ((1024, 8), (512, 32)),
    ("Standard_NC24rs_v3", 1): ((16320, 340), (8192, 1024)),
    ("Standard_NC24rs_v3", 2): ((8160, 170), (4096, 512)),
    ("Standard_NC24rs_v3", 4): ((4080, 85), (2048, 256)),
    ("Standard_NC24rs_v3", 8): ((2016, 42), (1024, 128)),
    ("Standard_NC24rs_v3", 16): ((1008, 21), (512, 64)),
}


def defaults_table() -> str:
    """The VM-size table as Markdown (printed by --list-vm-sizes and shown in the notebook)."""
    rows = [
        "| VM size | nodes | GPUs | GPU memory | phase-1 batch / accumulation | phase-2 batch / accumulation |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for (vm, nodes), ((b1, a1), (b2, a2)) in BATCH_DEFAULTS.items():
        size = VM_SIZES[vm]
        rows.append(f"| {vm} | {nodes} | {nodes * size.gpus} | {size.gpu_memory_gb} GB | {b1} / {a1} | {b2} / {a2} |")
    return "\n".join(rows)


@dataclass
class PhaseConfig:
    """Hyperparameters of one phase; batch and accumulation default from BATCH_DEFAULTS."""

    learning_rate: float
    """Peak LAMB learning rate."""
    warmup_proportion: float
    """Fraction of the phase's steps spent warming up."""
    max_steps: int
    """Optimizer steps of the phase."""
    train_batch_size: Optional[int] = None
    """Sequences per GPU per optimizer step (None: from the VM-size table)."""
    gradient_accumulation_steps: Optional[int] = None
    """Micro-batches per optimizer step (None: from the VM-size table)."""


@dataclass
class SubmitConfig:
    """Everything one submission needs; flags are generated from these fields."""

    phase1_data: str = ""
    """Phase-1 HDF5 folder: azureml://datastores/<store>/paths/<dir>/, azureml:<asset>:<version> or a URL."""
    phase2_data: str = ""
    """Phase-2 HDF5 folder, same forms as --phase1-data."""
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
    bert_config: str = "large"
    """BERT config: tiny, base, large or a path inside the uploaded code."""
    precision: Literal["fp16", "bf16", "fp32"] = "fp16"
    """Training precision."""
    backend: Literal["ort", "eager", "compile"] = "ort"
    """ort = ORTModule, eager = plain PyTorch, compile = torch.compile."""
    seed: int = 42
    """Random seed."""
    num_steps_per_checkpoint: int = 200
    """Checkpoint interval in optimizer steps."""
    shm_size: str = "16g"
    """/dev/shm of the job containers (NCCL and DataLoader workers use it)."""
    experiment_name: str = "bert-ort-pretraining"
    """Azure ML experiment."""
    phase1: PhaseConfig = field(default_factory=lambda: PhaseConfig(6e-3, 0.2843, 7038))
    """Phase 1 (seq 128): the original recipe's 7038 steps."""
    phase2: PhaseConfig = field(default_factory=lambda: PhaseConfig(4e-3, 0.128, 1563))
    """Phase 2 (seq 512): the original recipe's 1563 steps."""
    dry_run: bool = False
    """Write the job YAML and stop: needs no credentials and no network."""
    output_yaml: Optional[str] = None
    """Where to write the job YAML (required with --dry-run)."""
    stream: bool = False
    """After submitting, stream the logs until the pipeline ends."""

    @property
    def processes_per_node(self) -> int:
        return self.gpus_per_node if self.gpus_per_node is not None else VM_SIZES[self.vm_size].gpus

    def resolve(self) -> "SubmitConfig":
        """Fill table defaults and check values; raises ValueError naming the flag."""
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
        table = BATCH_DEFAULTS.get((self.vm_size, self.nodes))
        for index, (name, phase) in enumerate((("phase1", self.phase1), ("phase2", self.phase2))):
            if phase.train_batch_size is None or phase.gradient_accumulation_steps is None:
                if table is None:
                    known = ", ".join(f"{vm} x {n}" for vm, n in BATCH_DEFAULTS)
                    raise ValueError(
                        f"no batch defaults for {self.vm_size} x {self.nodes} nodes (known: {known}); "
                        f"pass --{name}.train-batch-size and --{name}.gradient-accumulation-steps"
                    )
                batch, accumulation = table[index]
                phase.train_batch_size = phase.train_batch_size or batch
                phase.gradient_accumulation_steps = phase.gradient_accumulation_steps or accumulation
            if phase.train_batch_size % phase.gradient_accumulation_steps:
                raise ValueError(
                    f"--{name}.train-batch-size {phase.train_batch_size} is not divisible by "
                    f"--{name}.gradient-accumulation-steps {phase.gradient_accumulation_steps}"
                )
            if phase.max_steps < 1 or not 0 <= phase.warmup_proportion < 1:
                raise ValueError(f"--{name}.max-steps must be >= 1 and --{name}.warmup-proportion in [0, 1)")
        return self


def _train_command(cfg: SubmitConfig, phase: PhaseConfig, *, phase2: bool) -> str:
    """The trainer's command line; ${{...}} are filled in by Azure ML with the mounted paths."""
    args = [
        "python -m ort_training.run_pretraining",
        "--input_dir ${{inputs.data}}",
        "--output_dir ${{outputs.output}}",
        f"--config_file {cfg.bert_config}",
        f"--train_batch_size {phase.train_batch_size}",
        f"--gradient_accumulation_steps {phase.gradient_accumulation_steps}",
        f"--learning_rate {phase.learning_rate}",
        f"--warmup_proportion {phase.warmup_proportion}",
        f"--max_steps {phase.max_steps}",
        f"--num_steps_per_checkpoint {cfg.num_steps_per_checkpoint}",
        f"--seed {cfg.seed}",
        f"--precision {cfg.precision}",
        f"--backend {cfg.backend}",
        "--disable_progress_bar",
        # A retried or preempted step continues from its own newest checkpoint (none yet: fresh start).
        "--resume_from_checkpoint",
    ]
    if phase2:
        # Without a phase-2 checkpoint of its own: weights from phase 1's newest checkpoint, fresh
        # optimizer and schedule, steps numbered after phase 1's.
        args += ["--phase2", "--init_checkpoint ${{inputs.phase1_output}}", f"--phase1_end_step {cfg.phase1.max_steps}"]
    return " ".join(args)


def build_pipeline_job(cfg: SubmitConfig, code_dir: str | os.PathLike = REPO_ROOT):
    """Build the two-phase PipelineJob (no network). `code_dir` is also the Docker build context."""
    from azure.ai.ml import Input, Output, PyTorchDistribution, command
    from azure.ai.ml.constants import AssetTypes, InputOutputModes
    from azure.ai.ml.dsl import pipeline
    from azure.ai.ml.entities import BuildContext, Environment

    code_dir = str(code_dir)
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
    phase1_step = command(
        name="bert_phase1",
        display_name="phase 1 (seq 128)",
        command=_train_command(cfg, cfg.phase1, phase2=False),
        inputs={"data": data_in},
        outputs={"output": folder_out},
        **common,
    )
    phase2_step = command(
        name="bert_phase2",
        display_name="phase 2 (seq 512)",
        command=_train_command(cfg, cfg.phase2, phase2=True),
        inputs={"data": data_in, "phase1_output": Input(type=AssetTypes.URI_FOLDER, mode=InputOutputModes.RO_MOUNT)},
        outputs={"output": folder_out},
        **common,
    )

    @pipeline(name="bert_ort_pretraining", description="BERT pretraining with ONNX Runtime: phase 1 then phase 2")
    def two_phase(phase1_data, phase2_data):
        phase1 = phase1_step(data=phase1_data)
        phase2 = phase2_step(data=phase2_data, phase1_output=phase1.outputs.output)
        return {"phase1_output": phase1.outputs.output, "phase2_output": phase2.outputs.output}

    job = two_phase(
        phase1_data=Input(type=AssetTypes.URI_FOLDER, path=cfg.phase1_data, mode=InputOutputModes.RO_MOUNT),
        phase2_data=Input(type=AssetTypes.URI_FOLDER, path=cfg.phase2_data, mode=InputOutputModes.RO_MOUNT),
    )
    job.experiment_name = cfg.experiment_name
    job.settings.default_compute = cfg.compute
    if cfg.output_path:
        base = cfg.output_path.rstrip("/")
        for name in ("phase1_output", "phase2_output"):
            job.outputs[name].path = f"{base}/{name}/"
    return job


def write_job_yaml(cfg: SubmitConfig, path: str | os.PathLike) -> Path:
    """Write the job as YAML, atomically (`az ml job create --file` submits it; code and Docker
    build context are absolute paths to this checkout)."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    job = build_pipeline_job(cfg)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.unlink(tmp)  # dump() refuses to overwrite an existing file
    try:
        job.dump(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


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


# ---- flags generated from the dataclasses (one place for names, defaults and help)
def _add_fields(parser: argparse.ArgumentParser, defaults, prefix: str = "") -> None:
    """One flag per field of the dataclass instance `defaults` (nested ones as --phase1.field)."""
    cls = type(defaults)
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            _add_fields(parser, default, prefix=f"{f.name}.")
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        base = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if typing.get_origin(tp) is typing.Union else tp
        help_ = docs.get(f.name, "") + ("" if default in (None, "") else f" (default: {default})")
        kw: dict = {"dest": prefix + f.name, "default": argparse.SUPPRESS, "help": help_}
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is Literal:
            kw["choices"] = list(typing.get_args(base))
        else:
            kw["type"] = base
        parser.add_argument(flag, **kw)


def _field_docs(cls) -> dict[str, str]:
    """Field docstrings (the string literal under each field) as help texts."""
    import ast
    import inspect

    docs, previous = {}, None
    for node in ast.parse(inspect.getsource(cls)).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            previous = node.target.id
        elif previous and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            docs[previous] = str(node.value.value)
            previous = None
    return docs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python azureml/submit.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--list-vm-sizes", action="store_true", help="print the VM-size defaults table and exit")
    _add_fields(parser, SubmitConfig())
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[SubmitConfig, argparse.Namespace]:
    ns = build_parser().parse_args(argv)
    cfg = SubmitConfig()
    for key, value in vars(ns).items():
        if key == "list_vm_sizes":
            continue
        target = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, value)
    return cfg, ns


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg, ns = parse_config(argv)
    if ns.list_vm_sizes:
        print(defaults_table())
        return 0
    try:
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
