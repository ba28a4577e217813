"""Submit fine-tuning or scoring to Azure Machine Learning (SDK v2) as one command job.

    python azureml/submit_task.py finetune --compute gpu-cluster --gpus-per-node 4 --init-checkpoint results/phase2/hf_model \\
        --train-file train.csv --validation-file dev.csv --test-file test.csv --dry-run --output-yaml ft.yaml \\
        -- --text_column note --label_column readmitted --long_text window --max_seq_length 512
    python azureml/submit_task.py score --compute gpu-cluster --gpus-per-node 4 --model-dir ft/hf_model \\
        --input-file azureml:notes:1 --output-name scored.csv --dry-run --output-yaml score.yaml \\
        -- --text_column note_text --id_column note_id --engine torch --device cuda --precision bf16

Each named file or folder (`--train-file`, `--model-dir`, ...) is a job input: a datastore URI, a data asset, a URL,
or a local path that Azure ML uploads at submission, and nothing else is (the code snapshot is submit.py's
allow-list, never the checkout). The arguments after `--` go to `python -m ort_training.finetune` /
`python -m ort_training.predict` as they are; the job runs them under `PyTorchDistribution`, one process per GPU:
fine-tuning trains with DDP, scoring splits the input over the ranks (predict's shards) and the last rank merges.
Outputs land in the job's `output` folder (OUTPUT_DIR of the fine-tune; the scored file of `score`). The bundle's
own checks run first (`--dry-run` of the command, here, before anything is built).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the bundle's packages sit beside azureml/



def _submit_module():
    """submit.py (the pretraining submitter: code snapshot, inputs, VM table, client), loaded from its file: the name
    `azureml` is also Microsoft's SDK namespace package, so `import azureml.submit` could find the wrong one."""
    import importlib.util

    name = "bert_azureml_submit"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("submit.py"))
        sys.modules[name] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]


_submit = _submit_module()
PLACEHOLDER, VM_SIZES, _input_path = _submit.PLACEHOLDER, _submit.VM_SIZES, _submit._input_path

logger = logging.getLogger("azureml_submit_task")

# task -> (module, {flag of this script: (the module's flag, what it names)})
TASKS = {
    "finetune": ("ort_training.finetune", {"init_checkpoint": ("--init_checkpoint", "folder"), "train_file": ("--train_file", "file"),
                                           "validation_file": ("--validation_file", "file"), "test_file": ("--test_file", "file")}),
    "score": ("ort_training.predict", {"model_dir": ("--model_dir", "folder"), "input_file": ("--input_file", "file")}),
}


@dataclass
class TaskJob:
    task: Literal["finetune", "score"] = "finetune"
    compute: str = ""
    gpus_per_node: Optional[int] = None
    vm_size: Optional[str] = None
    nodes: int = 1
    init_checkpoint: Optional[str] = None
    train_file: Optional[str] = None
    validation_file: Optional[str] = None
    test_file: Optional[str] = None
    model_dir: Optional[str] = None
    input_file: Optional[str] = None
    output_name: str = "scored.csv"
    environment: Optional[str] = None
    experiment_name: str = "bert-ort-tasks"
    code_dir: Optional[str] = None
    dry_run: bool = False
    output_yaml: Optional[str] = None
    stream: bool = False
    subscription_id: Optional[str] = None
    resource_group: Optional[str] = None
    workspace_name: Optional[str] = None
    workspace_config: str = "config.json"
    passthrough: list[str] = field(default_factory=list)

    @property
    def processes_per_node(self) -> int:
        if self.gpus_per_node is not None:
            return self.gpus_per_node
        if self.vm_size in VM_SIZES:
            return VM_SIZES[self.vm_size].gpus
        raise ValueError("give --gpus-per-node N, or a --vm-size of the table (python azureml/submit.py --list-vm-sizes)")

    def inputs(self) -> dict[str, tuple[str, str, str]]:
        """name -> (value as given, the module's flag, file or folder)."""
        return {name: (getattr(self, name), flag, kind) for name, (flag, kind) in TASKS[self.task][1].items() if getattr(self, name)}

    def check(self) -> None:
        """What the job needs, said before anything is built; then the command's own dry run on these settings."""
        if not self.compute:
            raise ValueError("--compute is required (the cluster the job runs on)")
        if self.nodes < 1 or self.processes_per_node < 1:
            raise ValueError("--nodes and --gpus-per-node must be >= 1")
        if self.dry_run and not self.output_yaml:
            raise ValueError("--dry-run needs --output-yaml PATH")
        required = {"finetune": ("train_file",), "score": ("model_dir", "input_file")}[self.task]
        missing = [f"--{n.replace('_', '-')}" for n in required if not getattr(self, n)]
        if missing:
            raise ValueError(f"{self.task} needs {' and '.join(missing)}")
        if "/" in self.output_name or self.output_name in ("", ".", ".."):
            raise ValueError(f"--output-name {self.output_name!r}: a file name, not a path")
        owned = {flag for _, flag, _ in self.inputs().values()} | {"--output_dir", "--output_file"}
        clash = sorted(a.split("=")[0] for a in self.passthrough if a.split("=")[0] in owned)
        if clash:
            raise ValueError(f"{', '.join(clash)} after --: the job sets them from its inputs and output; give the files as "
                             "this script's flags instead")
        for value, _, _ in self.inputs().values():
            _input_path(value)  # a local path must exist (it is uploaded); a URI or asset is taken as given

    def command(self) -> str:
        module = TASKS[self.task][0]
        args = ["python", "-m", module]
        for name, (_, flag, _) in self.inputs().items():
            args += [flag, f"${{{{inputs.{name}}}}}"]
        args += ["--output_dir", "${{outputs.output}}"] if self.task == "finetune" else \
            ["--output_file", "${{outputs.output}}/" + self.output_name]
        args += ["--disable_progress_bar", *self.passthrough]
        return " ".join(a if PLACEHOLDER.match(a) or a.startswith("${{outputs.output}}") else shlex.quote(a) for a in args)


def build_job(cfg: TaskJob, code_dir=None):
    """The command job (no network)."""
    from azure.ai.ml import Input, Output, PyTorchDistribution, command
    from azure.ai.ml.constants import AssetTypes, InputOutputModes
    from azure.ai.ml.entities import BuildContext, Environment

    code_dir = str(code_dir if code_dir is not None else _submit.stage_code(cfg.code_dir))
    environment = cfg.environment or Environment(description="docker/Dockerfile", build=BuildContext(path=code_dir, dockerfile_path="docker/Dockerfile"))
    inputs = {}
    for name, (value, _, kind) in cfg.inputs().items():
        is_file = kind == "file" or Path(value).suffix in (".pt", ".csv", ".tsv", ".parquet", ".jsonl")
        inputs[name] = Input(type=AssetTypes.URI_FILE if is_file else AssetTypes.URI_FOLDER, path=_input_path(value),
                             mode=InputOutputModes.RO_MOUNT)
    job = command(
        code=code_dir, command=cfg.command(), environment=environment, compute=cfg.compute, inputs=inputs,
        outputs={"output": Output(type=AssetTypes.URI_FOLDER, mode=InputOutputModes.RW_MOUNT)},
        distribution=PyTorchDistribution(process_count_per_instance=cfg.processes_per_node), instance_count=cfg.nodes,
        environment_variables={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "NCCL_DEBUG": "WARN"},
        experiment_name=cfg.experiment_name, display_name=f"{cfg.task} ({cfg.processes_per_node} GPU(s) x {cfg.nodes} node(s))")
    return job


def write_job_yaml(cfg: TaskJob, path) -> Path:
    return _submit.dump_job(build_job(cfg), path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python azureml/submit_task.py", description=__doc__.split("\n\n")[0],
                                epilog="Arguments after -- go to the command (finetune or predict) unchanged.")
    p.add_argument("task", choices=sorted(TASKS), help="finetune (python -m ort_training.finetune) or score (python -m ort_training.predict)")
    p.add_argument("--compute", default="", help="The Azure ML compute cluster.")
    p.add_argument("--gpus-per-node", type=int, default=None, help="Processes (GPUs) per node; default: the --vm-size's GPUs.")
    p.add_argument("--vm-size", default=None, help="A VM size of submit.py's table (its GPU count).")
    p.add_argument("--nodes", type=int, default=1, help="Nodes of the job.")
    for name, (flag, kind) in {**TASKS["finetune"][1], **TASKS["score"][1]}.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=f"{flag} of the command: a {kind} (job input).")
    p.add_argument("--output-name", default="scored.csv", help="score: the scored file's name in the job's output folder.")
    for name in ("environment", "code-dir", "output-yaml", "subscription-id", "resource-group", "workspace-name"):
        p.add_argument(f"--{name}", dest=name.replace("-", "_"), default=None)
    p.add_argument("--experiment-name", default="bert-ort-tasks")
    p.add_argument("--workspace-config", default="config.json")
    p.add_argument("--dry-run", action="store_true", help="Write --output-yaml and submit nothing (no credentials, no network).")
    p.add_argument("--stream", action="store_true", help="Stream the job's log after submitting.")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    try:
        cfg = TaskJob(**vars(build_parser().parse_args(own)), passthrough=passthrough)
        cfg.check()
        if cfg.dry_run:
            path = write_job_yaml(cfg, cfg.output_yaml)
            logger.info("dry run: wrote %s (submit it with `az ml job create --file %s`)", path, path)
            return 0
        if cfg.output_yaml:
            write_job_yaml(cfg, cfg.output_yaml)
        client = _submit.ml_client(cfg)
        job = client.jobs.create_or_update(build_job(cfg), experiment_name=cfg.experiment_name)
        logger.info("submitted %s: %s", job.name, job.studio_url)
        if cfg.stream:
            client.jobs.stream(job.name)
    except ValueError as exc:
        print(f"submit_task.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
