"""Recipes: a two-phase run described once, in a YAML file under ort_training/recipes/.

A recipe has `both:` (settings of both phases), `phase1:` and `phase2:` (each a PretrainConfig
section plus the phase's batch: `global_batch_size`, sequences per optimizer step over all GPUs, and
`micro_batch_size`, the most sequences one GPU computes at once) and `launch:` (a LaunchConfig: device,
processes per node). Every entry point builds its phase commands from a recipe plus overrides through
`phase_configs` and `phase_command`, so the launcher script, Slurm, Azure ML and `python -m
ort_training.pretrain` run the same two commands; `plan_batch` turns the global batch into the per-GPU
batch and accumulation for the GPUs x nodes actually used, so the learning rate and warm-up a recipe
was tuned for always see the batch they were tuned for.

    python -m ort_training.recipe batch --recipe bert_large_biobert --gpus 8 --nodes 4   # the arithmetic
    python -m ort_training.recipe list                                                   # every recipe, one row each
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from bundle.cli import from_dict, to_argv
from ort_training.config import PretrainConfig, merge_settings, read_yaml
from ort_training.errors import UsageError

logger = logging.getLogger("ort_training.recipe")

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
class BatchConfig:
    """A phase's batch as a recipe states it (flags --global_batch_size, --phase1.micro_batch_size, ...)."""

    global_batch_size: Optional[int] = None
    """Sequences per optimizer step over all GPUs and nodes (the number a learning rate is tuned for); the per-GPU
    --train_batch_size and --gradient_accumulation_steps are derived from it for the GPUs x nodes used."""
    micro_batch_size: Optional[int] = None
    """At most this many sequences per GPU per forward pass (the memory bound); accumulation makes up the rest."""


BATCH_KEYS = tuple(BatchConfig.__dataclass_fields__)


@dataclass(frozen=True)
class BatchPlan:
    """How one phase's global batch is split: ranks x micro-batch x accumulation."""

    phase: str
    global_batch_size: int
    ranks: int
    train_batch_size: int
    """Sequences per rank per optimizer step (the trainer's --train_batch_size)."""
    micro_batch_size: int
    gradient_accumulation_steps: int

    def describe(self) -> str:
        return (f"{self.phase}: global batch {self.global_batch_size:,} = {self.ranks} GPU process(es) x "
                f"{self.micro_batch_size} sequences x {self.gradient_accumulation_steps} accumulation steps "
                f"(--train_batch_size {self.train_batch_size} per GPU)")


MAX_BATCH = 1 << 24
"""The largest global / micro / per-GPU batch accepted: 16,777,216 sequences, 256x NVIDIA's largest (65,536 in
BERT-large's phase 1). Anything above it is a typo, and refused in one line before any arithmetic."""


def check_batch_value(flag: str, value: int) -> None:
    """One line for a batch value no run has (< 1, or above MAX_BATCH), naming the flag."""
    if value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")
    if value > MAX_BATCH:
        raise ValueError(f"{flag} {value:,} is not a batch size (more than {MAX_BATCH:,} sequences); "
                         "NVIDIA's largest is 65,536")


def largest_divisor_at_most(n: int, bound: int) -> int:
    """The largest divisor of n that is <= bound: divisors come in pairs (d, n // d) with d <= sqrt(n), so
    O(sqrt(n)) steps whatever bound is (a search up to bound spun for minutes on a huge value)."""
    if n < 1 or bound < 1:
        raise ValueError(f"largest_divisor_at_most needs n and bound >= 1, got {n} and {bound}")
    if bound >= n:
        return n
    best = 1
    d = 1
    while d * d <= n:
        if n % d == 0:
            if d <= bound:
                best = max(best, d)
            if n // d <= bound:
                best = max(best, n // d)
        d += 1
    return best


def plan_batch(global_batch_size: int, micro_batch_size: Optional[int], nproc_per_node: int, nnodes: int,
               phase: str = "phase1") -> BatchPlan:
    """Per-GPU batch and accumulation that give exactly `global_batch_size` sequences per step on
    nproc_per_node x nnodes GPUs, the micro-batch at most `micro_batch_size`; ValueError shows the
    arithmetic when the global batch does not split evenly over the GPUs."""
    ranks = nproc_per_node * nnodes
    for name, value in (("global_batch_size", global_batch_size), ("micro_batch_size", micro_batch_size)):
        if value is not None:
            check_batch_value(f"--{phase}.{name}", value)
    if global_batch_size % ranks:
        lower, upper = global_batch_size // ranks * ranks, -(-global_batch_size // ranks) * ranks
        raise ValueError(
            f"{phase}: the global batch of {global_batch_size:,} sequences does not split over {nproc_per_node} GPU(s) x "
            f"{nnodes} node(s) = {ranks} processes ({global_batch_size:,} / {ranks} = {global_batch_size / ranks:,.2f}); "
            f"use a GPU count that divides it, or set --{phase}.global_batch_size to a multiple of {ranks} "
            f"(e.g. {lower or upper:,} or {upper:,}) knowing the recipe's learning rate was tuned for {global_batch_size:,}")
    per_rank = global_batch_size // ranks
    micro = largest_divisor_at_most(per_rank, micro_batch_size or per_rank)
    return BatchPlan(phase, global_batch_size, ranks, per_rank, micro, per_rank // micro)


@dataclass
class Recipe:
    name: str
    description: str
    launch: dict
    both: dict
    phase1: dict
    phase2: dict
    requires_init_checkpoint: bool = False
    """The recipe continues pretraining a published model (`requires_init_checkpoint: true` in its YAML): phase 1
    without --phase1.init_checkpoint would train from random weights with a learning rate and steps meant for a
    trained model, so every runner refuses it (`check_init_checkpoint`)."""


def check_init_checkpoint(recipe: Recipe, init_checkpoint: str | None, flag: str = "--phase1.init_checkpoint") -> None:
    """Refuse a continued-pretraining recipe without the weights it continues (the real run and its dry run alike)."""
    if recipe.requires_init_checkpoint and not init_checkpoint:
        raise UsageError(f"recipe {recipe.name} continues pretraining a published model and needs its weights: pass "
                         f"{flag} MODEL (a Hugging Face folder, an NVIDIA .pt or a checkpoint of this bundle); without it "
                         "phase 1 would train from random weights with settings tuned for a trained model")


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
    unknown = set(raw) - {"description", "requires_init_checkpoint", "launch", "both", *PHASES}
    if unknown:
        raise UsageError(f"{path}: unknown sections {sorted(unknown)}; a recipe has description, requires_init_checkpoint, "
                         "launch, both, phase1, phase2")
    sections = {k: raw.get(k) or {} for k in ("launch", "both", *PHASES)}
    for key, value in sections.items():
        if not isinstance(value, dict):
            raise UsageError(f"{path}: section {key!r} must be a mapping of settings")
    requires = raw.get("requires_init_checkpoint", False)
    if not isinstance(requires, bool):
        raise UsageError(f"{path}: requires_init_checkpoint must be true or false, got {requires!r}")
    return Recipe(path.stem, raw.get("description", ""), **sections, requires_init_checkpoint=requires)


def phase_batch(recipe_values: dict, overrides: dict, nproc_per_node: int, nnodes: int, phase: str) -> BatchPlan | None:
    """Pop the batch keys from `recipe_values` (recipe < overrides, merged) and set the trainer's
    train_batch_size / gradient_accumulation_steps from them. An explicit --train_batch_size wins (the
    global batch then follows from it, with a warning where it differs from the recipe's); None where the
    phase states no global batch (a recipe of per-GPU numbers, as before)."""
    batch = {k: recipe_values.pop(k, None) for k in BATCH_KEYS}
    if batch["global_batch_size"] is None:
        return None
    ranks = nproc_per_node * nnodes
    given_accumulation = overrides.get("gradient_accumulation_steps")
    if "train_batch_size" in overrides:
        per_rank = int(recipe_values["train_batch_size"])
        if per_rank < 1 or (given_accumulation is not None and int(given_accumulation) < 1):
            return None  # PretrainConfig refuses the value, naming the flag
        check_batch_value(f"--{phase}.train_batch_size", per_rank)
        if batch["micro_batch_size"] is not None:
            check_batch_value(f"--{phase}.micro_batch_size", int(batch["micro_batch_size"]))
        accumulation = int(given_accumulation) if given_accumulation is not None else \
            per_rank // largest_divisor_at_most(per_rank, batch["micro_batch_size"] or per_rank)
        plan = BatchPlan(phase, per_rank * ranks, ranks, per_rank, max(per_rank // accumulation, 1), accumulation)
        if plan.global_batch_size != batch["global_batch_size"]:
            logger.warning("%s: --train_batch_size %d x %d processes = %s sequences per step, but the recipe's global batch is %s "
                           "(its learning rate and warm-up were tuned for that)", phase, per_rank, ranks,
                           f"{plan.global_batch_size:,}", f"{batch['global_batch_size']:,}")
    else:
        plan = plan_batch(int(batch["global_batch_size"]), batch["micro_batch_size"] and int(batch["micro_batch_size"]),
                          nproc_per_node, nnodes, phase)
        if given_accumulation is not None:  # the user's accumulation, the recipe's global batch
            accumulation = int(given_accumulation)
            if accumulation < 1:
                recipe_values["train_batch_size"] = plan.train_batch_size
                return None
            plan = BatchPlan(phase, plan.global_batch_size, ranks, plan.train_batch_size,
                             max(plan.train_batch_size // accumulation, 1), accumulation)
    recipe_values["train_batch_size"] = plan.train_batch_size
    recipe_values["gradient_accumulation_steps"] = plan.gradient_accumulation_steps
    return plan


def phase_configs(recipe: Recipe, both: dict | None = None, phase1: dict | None = None, phase2: dict | None = None,
                  output_dir: str | None = None, resume: bool = True, nproc_per_node: int = 1, nnodes: int = 1,
                  plans: list | None = None) -> tuple[PretrainConfig, PretrainConfig]:
    """The two phases' configs: recipe < overrides, plus the wiring that makes them one run. Each
    phase's per-GPU batch and accumulation come from its global batch for nproc_per_node x nnodes GPUs
    (`plans`, when given, receives the BatchPlan of each phase). Phase 2 starts from phase 1's newest
    checkpoint (fresh optimizer and schedule) and numbers its steps after phase 1's; each phase keeps its
    own output folder, so phase 1's model, metrics and summary stay."""
    overrides_both = dict(both or {})
    both = {**recipe.both, **overrides_both}
    out = Path(output_dir or both.pop("output_dir", None) or "results")
    both.pop("output_dir", None)
    configs = []
    for name, extra in zip(PHASES, (phase1, phase2)):
        values = merge_settings(both, getattr(recipe, name), extra or {})
        plan = phase_batch(values, {**overrides_both, **(extra or {})}, nproc_per_node, nnodes, name)
        if plans is not None:
            plans.append(plan)
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


def shipped_recipes() -> list[str]:
    """The recipe names under ort_training/recipes/ (the VM-size table is not a recipe)."""
    return sorted(f.stem for f in RECIPES_DIR.glob("*.yaml") if "vm_sizes" not in f.stem)


def recipe_summary(recipe: Recipe) -> dict:
    """What `recipe list` shows of one recipe, read from its file; a setting it leaves out is the trainer's default
    (PretrainConfig), so the list says what a run does. The docs' test (tests/unit/test_recipe_docs.py) holds the
    README and docs to these values."""
    defaults = {name: f.default for name, f in PretrainConfig.__dataclass_fields__.items()}
    both = {**defaults, **recipe.both}
    phases = {}
    for name in PHASES:
        values = {**both, **getattr(recipe, name)}
        phases[name] = {key: values.get(key) for key in ("max_seq_length", "global_batch_size", "micro_batch_size", "max_steps",
                                                         "learning_rate")}
    return {"name": recipe.name, "device": recipe.launch.get("device", "auto"), "gpus": int(recipe.launch.get("nproc_per_node", 1)),
            "precision": both["precision"], "backend": both["backend"], "objective": both["objective"],
            "config_file": both["config_file"], "requires_init_checkpoint": bool(getattr(recipe, "requires_init_checkpoint", False)),
            "phases": phases, "description": recipe.description}


def recipe_list_table(summaries: list[dict]) -> str:
    """`recipe list` as Markdown: one row per recipe."""
    def phase(p: dict) -> str:
        seq = p["max_seq_length"] or "data's"
        batch = f"{p['global_batch_size']:,}" if p["global_batch_size"] else "per-GPU"
        return f"seq {seq}, global batch {batch} (micro {p['micro_batch_size']}), {p['max_steps']:,} steps, lr {p['learning_rate']}"

    rows = ["| recipe | GPUs (device) | precision | backend | objective | phase 1 | phase 2 | init checkpoint |",
            "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        gpus = "CPU" if s["device"] == "cpu" else f"{s['gpus']} ({s['device']})"
        init = "required (continued pretraining)" if s["requires_init_checkpoint"] else "optional (without: from scratch)"
        rows.append(f"| {s['name']} | {gpus} | {s['precision']} | {s['backend']} | {s['objective']} | {phase(s['phases']['phase1'])} | "
                    f"{phase(s['phases']['phase2'])} | {init} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """`batch`: a recipe's per-GPU batch and accumulation for a GPU count (what every launcher runs); `list`: every
    shipped recipe with its GPUs, precision, global batch, phases and whether it needs an init checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m ort_training.recipe", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    batch = sub.add_parser("batch", help="print each phase's batch split for --gpus x --nodes")
    batch.add_argument("--recipe", required=True, help="a shipped recipe name or a YAML path")
    batch.add_argument("--gpus", type=int, default=None, help="GPU processes per node (default: the recipe's nproc_per_node)")
    batch.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    listing = sub.add_parser("list", help="print every shipped recipe: GPUs, precision, global batch, phases, init checkpoint")
    listing.add_argument("--json", action="store_true", help="print the list as JSON instead of a Markdown table")
    args = parser.parse_args(argv)
    if args.command == "list":
        try:
            summaries = [recipe_summary(load_recipe(name)) for name in shipped_recipes()]
        except ValueError as exc:
            print(f"recipe: error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(summaries, indent=2) if args.json else recipe_list_table(summaries))
        return 0
    try:
        recipe = load_recipe(args.recipe)
        gpus = args.gpus if args.gpus is not None else int(recipe.launch.get("nproc_per_node", 1))
        launch = LaunchConfig(nproc_per_node=gpus, nnodes=args.nodes)
        plans: list = []
        phase_configs(recipe, nproc_per_node=launch.nproc_per_node, nnodes=launch.nnodes, plans=plans)
    except ValueError as exc:
        print(f"recipe: error: {exc}", file=sys.stderr)
        return 2
    for name, plan in zip(PHASES, plans):
        print(plan.describe() if plan else f"{name}: no global batch in the recipe (per-GPU numbers as written)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

