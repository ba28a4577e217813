"""Recipes: a two-phase run described once, in a YAML file under ort_training/recipes/.

A recipe has `both:` (settings of both phases), `phase1:` and `phase2:` (each a PretrainConfig
section) and `launch:` (a LaunchConfig: device, processes per node). Every entry point builds its
phase commands from a recipe plus overrides through `phase_configs` and `phase_command`, so the
launcher script, Azure ML and `python -m ort_training.pretrain` run the same two commands.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from bundle.cli import from_dict, to_argv
from ort_training.config import PretrainConfig, merge_settings, read_yaml
from ort_training.errors import UsageError

RECIPES_DIR = Path(__file__).parent / "recipes"
PHASES = ("phase1", "phase2")
TRAINER_MODULE = "ort_training.run_pretraining"


@dataclass
class LaunchConfig:
    """How the phases are started: one process, or torchrun on one or several nodes."""

    device: Literal["auto", "cuda", "cpu"] = "auto"
    """cuda: one process per GPU, refused where fewer GPUs exist; cpu: hide GPUs; auto: whatever torch sees."""
    nproc_per_node: int = 1
    """Processes per node (per GPU on cuda); more than 1, or --nnodes > 1, starts torchrun."""
    nnodes: int = 1
    """Nodes of the job; each runs this command (Slurm: one task per node)."""
    node_rank: Optional[int] = None
    """This node's rank (default: from SLURM_NODEID, else 0); only used with a static --master_addr."""
    rdzv_endpoint: Optional[str] = None
    """HOST:PORT of the c10d rendezvous on the first node (several nodes; default 127.0.0.1:29400 on one)."""
    rdzv_id: str = "bert-pretraining"
    """Rendezvous id shared by the job's nodes (Slurm: the job id)."""
    max_restarts: int = 0
    """torchrun restarts of the worker group after a failure (elastic); each restart resumes from the newest checkpoint."""
    resume: bool = True
    """Continue each phase from its newest checkpoint (a rerun completes what is missing); --no-resume refuses an
    output dir that already holds checkpoints."""
    log_to_file: bool = True
    """Also write each phase's output to OUTPUT_DIR/phaseN/train.log."""
    python: str = sys.executable
    """Interpreter that runs the trainer (with the project's dependencies)."""

    def __post_init__(self) -> None:
        for name in ("nproc_per_node", "nnodes"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_restarts < 0:
            raise UsageError(f"--max_restarts must be >= 0, got {self.max_restarts}")

    @property
    def distributed(self) -> bool:
        return self.nproc_per_node > 1 or self.nnodes > 1


@dataclass
class Recipe:
    name: str
    description: str
    launch: dict
    both: dict
    phase1: dict
    phase2: dict


def recipe_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(f.stem for f in RECIPES_DIR.glob("*.yaml") if "vm_sizes" not in f.stem)
    raise UsageError(f"--recipe {name_or_path}: no such file and no shipped recipe of that name (shipped: {', '.join(names)})")


def load_recipe(name_or_path: str | Path) -> Recipe:
    path = recipe_path(name_or_path)
    raw = read_yaml(path)
    unknown = set(raw) - {"description", "launch", "both", *PHASES}
    if unknown:
        raise UsageError(f"{path}: unknown sections {sorted(unknown)}; a recipe has description, launch, both, phase1, phase2")
    sections = {k: raw.get(k) or {} for k in ("launch", "both", *PHASES)}
    for key, value in sections.items():
        if not isinstance(value, dict):
            raise UsageError(f"{path}: section {key!r} must be a mapping of settings")
    return Recipe(path.stem, raw.get("description", ""), **sections)


def phase_configs(recipe: Recipe, both: dict | None = None, phase1: dict | None = None, phase2: dict | None = None,
                  output_dir: str | None = None, resume: bool = True) -> tuple[PretrainConfig, PretrainConfig]:
    """The two phases' configs: recipe < overrides, plus the wiring that makes them one run. Phase 2
    starts from phase 1's newest checkpoint (fresh optimizer and schedule) and numbers its steps after
    phase 1's; each phase keeps its own output folder, so phase 1's model, metrics and summary stay."""
    both = {**recipe.both, **(both or {})}
    out = Path(output_dir or both.pop("output_dir", None) or "results")
    both.pop("output_dir", None)
    configs = []
    for name, extra in zip(PHASES, (phase1, phase2)):
        values = merge_settings(both, getattr(recipe, name), extra or {})
        values["output_dir"] = str(out / name)
        values["resume_from_checkpoint"] = resume or values.get("resume_from_checkpoint", False)
        if name == "phase2":
            values.update(phase2=True, resume_from_checkpoint=True, init_checkpoint=str(out / "phase1"))
        try:
            cfg = from_dict(PretrainConfig, values, source=f"recipe {recipe.name} [{name}]")
        except ValueError as exc:
            raise UsageError(f"{name}: {exc}") from None
        configs.append(cfg)
    p1, p2 = configs
    p2.phase1_end_step = p1.max_steps
    if p2.config_file is None and p1.init_checkpoint:  # phase 1 took its architecture from the published model
        p2.config_file = p1.model_config_path()
    return p1, p2


def launch_prefix(launch: LaunchConfig, node_rank: int = 0) -> list[str]:
    """`python -m` for one process, or torchrun (as a module of the same interpreter) for several."""
    if not launch.distributed:
        return [launch.python, "-m", TRAINER_MODULE]
    cmd = [launch.python, "-m", "torch.distributed.run", f"--nnodes={launch.nnodes}", f"--nproc_per_node={launch.nproc_per_node}"]
    if launch.nnodes == 1 and launch.rdzv_endpoint is None:
        cmd.append("--standalone")
    else:
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={launch.rdzv_endpoint or '127.0.0.1:29400'}",
                f"--rdzv_id={launch.rdzv_id}"]
    if launch.max_restarts:
        cmd.append(f"--max_restarts={launch.max_restarts}")
    return cmd + ["-m", TRAINER_MODULE]


def trainer_args(cfg: PretrainConfig) -> list[str]:
    """The trainer flags that rebuild `cfg` (settings equal to the trainer's defaults are left out)."""
    return to_argv(cfg, skip=("fp16", "bf16"))


def phase_command(cfg: PretrainConfig, launch: LaunchConfig) -> list[str]:
    return launch_prefix(launch) + trainer_args(cfg)


def quote(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)

