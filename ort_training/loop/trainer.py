"""The training loop: restore -> per step (micro-batches, LAMB step, schedule, log, checkpoint) -> export."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from bundle.atomic import atomic_write_text, clean_stale_temps
from bundle.digest import file_sha256, tokenizer_file
from ort_training.checks import check_precision
from ort_training.config import PretrainConfig
from ort_training.data.inputs import held_out_input, open_training_input
from ort_training.loop import distributed
from ort_training.loop.backends import wrap_model
from ort_training.loop.checkpoint import list_checkpoints, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ort_training.loop.engine import build_engine
from ort_training.loop.evaluation import PeriodicEvaluation
from ort_training.loop.metrics import MetricsLogger, read_metrics
from ort_training.loop.optim import build_optimizer, build_scheduler
from ort_training.loop.preemption import Preemption
from ort_training.models import family_of_file
from ort_training.models.pretraining import PretrainingModel, check_vocab_fits
from ort_training.objectives import get_objective
from ort_training.run_status import EXPORT_DIR, PREEMPTED_MARKER, phase_finished
from ort_training.errors import UsageError

logger = logging.getLogger(__name__)

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _describe(architecture: dict) -> str:
    """'BertForPreTraining (bert: hidden_size 32, num_hidden_layers 2, ...)'."""
    fields = ", ".join(f"{k} {v}" for k, v in architecture.items() if k not in ("family", "class"))
    return f"{architecture.get('class', 'model')} ({architecture.get('family', '?')}: {fields})"


def tokenizer_identity(source: str | None) -> dict | None:
    """{"file", "sha256"} of the file that defines the tokenizer at `source` (vocab.txt, tokenizer.json), or None."""
    if not source:
        return None
    found = tokenizer_file(source)
    if found is None or not found.is_file():
        return None
    return {"file": found.name, "sha256": file_sha256(found)}


class NonFiniteError(RuntimeError):
    """The loss or the weights became NaN/inf: the run stops instead of saving or exporting them."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """One phase of pretraining. `hooks` are called as hook(trainer, record) after every step."""

    def __init__(self, cfg: PretrainConfig, objective=None, loader=None):
        """`objective` (an Objective instance, default: cfg.objective by name) and `loader` (default: the
        HDF5 reader of cfg.input_dir; any iterable of batch dicts with close/state_dict/load_state_dict)
        let other tasks reuse this loop: fine-tuning passes its own (ort_training/finetune.py)."""
        self.preemption = Preemption()  # from the first moment: a SIGTERM during start-up also ends with the 143 contract
        try:
            self._setup(cfg, objective, loader)
        except BaseException:
            self.preemption.restore()
            raise

    def _setup(self, cfg: PretrainConfig, objective, loader) -> None:
        self.cfg = cfg
        self.env, self.device = distributed.init_distributed()
        self.is_main = self.env.rank == 0
        self._preempted_marker = Path(cfg.output_dir) / PREEMPTED_MARKER
        if self.is_main:  # a new attempt: whatever happens next, the old preemption is not its outcome
            self._preempted_marker.unlink(missing_ok=True)
        check_precision(cfg.backend, cfg.precision, self.device.type)  # the dry runs ask the same function
        self.phase = 2 if cfg.phase2 else 1
        self.step_offset = cfg.phase1_end_step if cfg.phase2 else 0
        self.phase_step = 0
        self.hooks: list[Callable[["Trainer", dict], None]] = []
        self.already_finished = False  # set by _restore: this phase reached its last step, or phase 2 started
        self._finished_here = False  # already finished in this output dir: its export/summary may still be missing
        self.finished_early = False  # a hook sets it (early stopping): checkpoint, then end like a finished phase
        self._restored_optimizer_state = None

        # Same seed on every rank for the weights; then a per-rank seed so dropout differs by rank.
        seed_everything(cfg.seed)
        config_file = cfg.model_config_path()
        family = family_of_file(config_file)
        family.check_backend(cfg.backend)
        self.objective = objective if objective is not None else get_objective(cfg.objective)
        self.model_config = family.load_config(config_file, cfg.dropout)
        self.vocab_file = cfg.vocab_file  # or the tokenizer data_prep recorded for the data (data_inputs)
        if cfg.export_onnx:
            from ort_training.export import check_onnx_available

            check_onnx_available()
        # The data first: packed data carries the tokenizer's special ids, which a from-scratch config must take.
        self.input = None
        self._input_identity = None  # what this run trains on (rank 0 records and checks it)
        if loader is not None:
            files, self.loader = list(getattr(loader, "files", [])), loader
            self._input_identity = getattr(loader, "identity", None)
        else:
            self.input = open_training_input(cfg, family, self.model_config, self.objective)
            files, self.vocab_file = self.input.files, self.input.tokenizer
            if self.is_main:
                self._input_identity = self.input.identity()
        # Resolved once, here: `auto` chooses by the sequence length too, known once the data (or the fine-tuning
        # loader) is open.
        seq_len = self.input.seq_len if self.input is not None else getattr(self.loader, "seq_len", cfg.max_seq_length)
        self.attention = family.resolve_attention(cfg.attention, cfg.backend, self.device.type, seq_len)
        self.model_config._attn_implementation = self.attention
        self.model = PretrainingModel(self.model_config, cfg.dense_seq_output, self.objective).to(self.device)
        if cfg.checkpoint_activations and cfg.backend != "ort":  # ORT recomputes inside its graph instead (wrap_model)
            self.model.hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        seed_everything(cfg.seed + self.env.rank)

        self._tokenizer_identity = tokenizer_identity(self.vocab_file)
        self.optimizer = build_optimizer(self.model, cfg.learning_rate, cfg.weight_decay, cfg.max_grad_norm, cfg.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.warmup_proportion, cfg.max_steps, kind=cfg.lr_schedule)

        if self.vocab_file:
            from ort_training.export import tokenizer_size

            n_tokens = tokenizer_size(self.vocab_file, cfg.do_lower_case)
            check_vocab_fits(n_tokens, f"--vocab_file {self.vocab_file}", self.model_config, config_file)
        elif self.is_main and not cfg.skip_hf_export:
            logger.warning("no --vocab_file and no data_prep manifest naming one: the Hugging Face export will have no tokenizer")
        if self.input is not None:
            self.loader = self.input.loader(cfg, self.env, self.model_config.original_vocab_size)
        if self.is_main:
            for folder in (Path(cfg.output_dir), Path(cfg.output_dir) / "checkpoints"):
                clean_stale_temps(folder)  # what a killed export or checkpoint save left (.hf_model.tmp-PID, ...)

        self._restore()
        memory_opt_level = max(cfg.ort_memory_opt_level, 1) if cfg.checkpoint_activations else cfg.ort_memory_opt_level
        self.engine = build_engine(wrap_model(self.model, cfg.backend, cfg.ort_optimizations, memory_opt_level),
                                   self.optimizer, cfg, self.env, self.device)
        if self._restored_engine_state is not None:
            self.engine.load_state_dict(self._restored_engine_state)
        if self._restored_optimizer_state is not None:
            self.engine.load_optimizer_state(self._restored_optimizer_state)
        # On resume, records after the restored step (written before the kill) are dropped: they are redone.
        self.metrics = MetricsLogger(cfg.output_dir, cfg.log_dir, enabled=self.is_main and (self._finished_here or not self.already_finished),
                                     truncate_after=self.global_step if cfg.resume_from_checkpoint and not self.already_finished else None)
        self.periodic_eval = None
        if cfg.eval_every:
            if self.objective.eval_loss is None:
                raise UsageError(f"--eval_every: --objective {self.objective.name} has no held-out loss to evaluate")
            history = [r for r in read_metrics(Path(cfg.output_dir) / "metrics.jsonl") if self.step_offset < r["step"] <= self.global_step]
            self.periodic_eval = PeriodicEvaluation(cfg.eval_every, cfg.early_stopping_patience, self.objective.eval_loss,
                                                    history=history if cfg.resume_from_checkpoint else [],
                                                    output_dir=cfg.output_dir)
        if self.is_main:
            logger.info(
                "phase %d | %s | backend %s | attention %s | %s | %d files | batch %d/rank x %d ranks (micro-batch %d x %d "
                "accumulation) | steps %d..%d",
                self.phase, self.model.family.name, cfg.backend, self.attention, cfg.precision, len(files), cfg.train_batch_size, self.env.world_size,
                cfg.micro_batch_size, cfg.gradient_accumulation_steps, self.phase_step, cfg.max_steps,
            )

    @property
    def global_step(self) -> int:
        return self.step_offset + self.phase_step

    # ---------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.engine.optimizer_state_dict(),  # under ZeRO: the shard count (each rank writes its shard)
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.engine.state_dict(),
            "train_state": {"global_step": self.global_step, "phase_step": self.phase_step, "phase": self.phase,
                            **self._resume_settings()},
            # Ranks read different files with different batch counts: keep every rank's position.
            "data": distributed.all_gather_object(self.loader.state_dict()),
            "rng": distributed.all_gather_object(rng_state()),  # per rank: dropout streams differ by rank
            "model_config": self.model_config.to_dict(),
            "architecture": self.architecture(),
        }

    def architecture(self) -> dict:
        """The family, task class and shape fields of the weights (ModelFamily.architecture)."""
        return self.model.family.architecture(self.model_config, type(self.model.hf_model).__name__)

    def _resume_settings(self) -> dict:
        """Settings a checkpoint is only valid with: the data position counts micro-batches of one size
        in one seed's file order on one number of ranks, and the schedule's lambda reads lr/steps/warm-up."""
        cfg = self.cfg
        settings = {"world_size": self.env.world_size, "micro_batch_size": cfg.micro_batch_size, "seed": cfg.seed,
                    "learning_rate": cfg.learning_rate, "max_steps": cfg.max_steps, "warmup_proportion": cfg.warmup_proportion,
                    "optimizer": cfg.optimizer, "lr_schedule": cfg.lr_schedule}
        if self.input is not None and self.input.mask_rate is not None:  # masked as read: another rate is other batches
            settings["mask_rate"] = self.input.mask_rate
        if self._input_identity is not None:  # the same position in other data is other samples
            settings["inputs"] = self._input_identity
        if self._tokenizer_identity is not None:  # the same ids through another tokenizer are other words
            settings["tokenizer"] = self._tokenizer_identity
        return settings

    def _check_tokenizer(self, saved: dict, source) -> None:
        """Weights learnt on one tokenizer's ids continue only on data of that tokenizer (phase 2 after phase 1, a resume,
        an init from this bundle's checkpoint): compared by the digest of the file that defines it."""
        then, now = saved.get("tokenizer"), self._tokenizer_identity
        if then and now and then["sha256"] != now["sha256"]:
            raise UsageError(f"{source}: its weights were trained on the ids of tokenizer {then['file']} (sha256 {then['sha256'][:12]}), "
                             f"this run's data and --vocab_file use {now['file']} (sha256 {now['sha256'][:12]}); the same ids would be "
                             "other words. Make this phase's data with the checkpoint's tokenizer (data_prep --vocab-file / "
                             "--tokenizer), or start from scratch")

    def _check_resume_settings(self, saved: dict) -> None:
        flags = {"world_size": "number of ranks (WORLD_SIZE)", "micro_batch_size": "--train_batch_size / --gradient_accumulation_steps"}
        for key, now in self._resume_settings().items():
            if key == "tokenizer":
                self._check_tokenizer(saved, self.cfg.output_dir)
                continue
            if key == "inputs":
                if "inputs" in saved and saved["inputs"]["digest"] != now["digest"]:
                    raise UsageError(f"--resume_from_checkpoint: the checkpoint in {self.cfg.output_dir} was trained on "
                                     f"{saved['inputs']['describe']}, this run reads {now['describe']}; resuming would continue "
                                     "on other data. Resume with the checkpoint's input, or start in a new --output_dir")
                continue
            if key in saved and saved[key] != now:  # older checkpoints lack some keys: nothing to compare
                what = flags.get(key, f"--{key}")
                raise UsageError(f"--resume_from_checkpoint: the checkpoint in {self.cfg.output_dir} was written with {key}="
                                 f"{saved[key]}, this run has {now} ({what}); resuming would skip or repeat samples or change "
                                 f"the schedule. Use the checkpoint's value, or start in a new --output_dir.")

    def _restore(self) -> None:
        cfg = self.cfg
        ckpt, full = None, False
        self._restored_engine_state = None
        if not cfg.resume_from_checkpoint and not cfg.phase2 and (found := list_checkpoints(cfg.output_dir)):
            # A fresh run here would interleave its step-N folders with the old ones and prune them.
            raise FileExistsError(f"--output_dir {cfg.output_dir} already holds checkpoints (newest step {found[-1][0]}); "
                                  "pass --resume_from_checkpoint to continue that run, or use a new --output_dir")
        if cfg.resume_from_checkpoint:
            if list_checkpoints(cfg.output_dir):
                ckpt = load_checkpoint(cfg.output_dir, step=None if cfg.resume_step < 0 else cfg.resume_step)
                full = ckpt["train_state"]["phase"] == self.phase
                if not full and not cfg.phase2:
                    # The newest checkpoint is phase 2's: phase 1 is done (NVIDIA does the same). Training
                    # phase 1 again would start from scratch on phase-2 weights.
                    logger.info("phase 1 already finished (found a phase-2 checkpoint): step %d in %s", ckpt["train_state"]["global_step"], cfg.output_dir)
                    self.already_finished = True
                    self.step_offset = ckpt["train_state"]["global_step"]
                    return
            elif cfg.phase2 and not cfg.init_checkpoint:
                raise FileNotFoundError(f"--phase2 --resume_from_checkpoint: no checkpoint in {cfg.output_dir}/checkpoints; "
                                        "run phase 1 with the same --output_dir or pass --init_checkpoint")
            else:
                logger.info("--resume_from_checkpoint: no checkpoint in %s yet, starting from scratch", cfg.output_dir)
        if ckpt is None and cfg.init_checkpoint:
            from ort_training.weights_import import detect_format, load_into

            if detect_format(cfg.init_checkpoint) != "bundle":  # a published BERT: weights only
                load_into(self.model.hf_model, cfg.init_checkpoint)
                return
            ckpt = load_checkpoint(cfg.init_checkpoint)
        if ckpt is None:
            return
        source = cfg.output_dir if full or (cfg.phase2 and not cfg.init_checkpoint) else cfg.init_checkpoint
        state = ckpt["train_state"]
        if full:
            self._check_resume_settings(state)
        else:  # the tokenizer first: another vocabulary is the cause of the shapes that would differ below
            self._check_tokenizer(state, source)
        self._load_weights(ckpt, source)
        if not full:  # phase 2 / init_checkpoint: weights only, fresh optimizer, schedule and data order
            logger.info("initialised weights from a phase-%d checkpoint (step %d)", state["phase"], state["global_step"])
            if cfg.phase2 and state["phase"] == 1:
                if not cfg.phase1_end_step:
                    # Number phase-2 steps after phase 1's, so in a shared output dir they sort after it.
                    self.step_offset = state["global_step"]
                elif state["global_step"] != cfg.phase1_end_step:
                    logger.warning("phase-1 checkpoint is step %d but --phase1_end_step is %d", state["global_step"], cfg.phase1_end_step)
            return
        # Loaded by the engine once it exists (DeepSpeed regroups the optimizer's parameters when it wraps it).
        self._restored_optimizer_state = ckpt["optimizer"]
        self._restored_engine_state = ckpt["scaler"]
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.loader.load_state_dict(ckpt["data"][self.env.rank])
        self.phase_step = state["phase_step"]
        self.step_offset = state["global_step"] - state["phase_step"]  # phase 2 may have taken it from phase 1
        set_rng_state(ckpt["rng"][self.env.rank])
        logger.info("resumed phase %d at step %d", self.phase, self.global_step)
        if self.phase_step >= cfg.max_steps:  # a rerun of a finished phase: keep its export and summary
            logger.info("phase %d already finished (checkpoint at its last step %d)", self.phase, self.global_step)
            self.already_finished = self._finished_here = True

    def _load_weights(self, ckpt: dict, source) -> None:
        """The checkpoint's weights, refused by name when they are another architecture's (family, task class,
        sizes) rather than as load_state_dict's list of tensor mismatches."""
        now = self.architecture()
        saved = ckpt.get("architecture")
        if saved is None:  # written before checkpoints recorded it: the shape fields of its model config
            config = ckpt.get("model_config") or ckpt.get("bert_config") or {}
            saved = {k: config[k] for k in now if k in config}
        differ = {k: (saved[k], now[k]) for k in now if k in saved and saved[k] != now[k]}
        if differ:
            raise UsageError(f"{source}: the checkpoint holds a {_describe(saved)}, this run builds a {_describe(now)} "
                             f"(differ: {', '.join(f'{k} {a} vs {b}' for k, (a, b) in differ.items())}); pass the checkpoint's "
                             "--config_file / --objective, or start in a new --output_dir")
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:  # same record, other tensors (a hand-edited config or checkpoint)
            first = str(exc).strip().splitlines()
            raise UsageError(f"{source}: the checkpoint's weights do not fit this model ({' '.join(first[:3])[:400]}); pass the "
                             "checkpoint's --config_file / --objective, or start in a new --output_dir") from None

    def _check_finite_weights(self) -> None:
        """Never checkpoint or export non-finite weights: keep-last-K would prune the last good checkpoint."""
        bad = next((n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:
            raise NonFiniteError(f"step {self.global_step}: parameter {bad} is not finite (learning rate too high, or fp16 overflow "
                                 f"the scaler did not catch); nothing was saved, the newest checkpoint in {self.cfg.output_dir} "
                                 "is the last finite one. Lower --learning_rate or raise --warmup_proportion, then resume")

    def save(self) -> None:
        self._check_finite_weights()
        state = self.state_dict()
        shard = self.engine.optimizer_shard()  # this rank's ZeRO optimizer partition: then every rank takes part
        if self.is_main or shard is not None:
            save_checkpoint(self.cfg.output_dir, self.global_step, state, self.cfg.keep_checkpoints, shard, self.env.rank)
        distributed.barrier()

    # ---------------------------------------------------------------- loop
    def request_stop(self) -> None:
        """Checkpoint after the current step and end with the preemption contract (what SIGTERM does)."""
        self.preemption.request()

    def _micro_batches(self, it):
        for i in range(self.cfg.gradient_accumulation_steps):
            batch = next(it)
            yield i, {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self, it) -> dict:
        """One optimizer step over --gradient_accumulation_steps micro-batches."""
        cfg = self.cfg
        lr = self.scheduler.get_last_lr()[0]
        if cfg.backend == "ort":
            # ORT's dropout draws from ORT's own generator, whose state cannot be saved: re-seed it
            # from (seed, rank, step) every step so a resumed run draws the same masks.
            import onnxruntime

            onnxruntime.set_seed((cfg.seed * 1_000_003 + self.env.rank * 7919 + self.global_step) % 2**31)
        autocast = torch.autocast(self.device.type, dtype=_DTYPES.get(cfg.precision, torch.float32), enabled=cfg.precision != "fp32")
        self.engine.zero_grad()
        scale = self.engine.loss_scale
        loss_sum = torch.zeros((), device=self.device)
        stat_sums = torch.zeros(len(self.objective.stat_names), device=self.device)
        for i, batch in self._micro_batches(it):
            loss, stats = self.engine.forward_backward(self.objective.inputs(batch), i, autocast)
            loss_sum += loss.float()
            stat_sums += stats.float()
        skipped = self.engine.step()
        self.scheduler.step()
        return {"totals": torch.cat([loss_sum.reshape(1), stat_sums]), "lr": lr,
                "loss_scale": scale if cfg.precision == "fp16" else 1.0, "skipped": skipped}

    def _record(self, out: dict, step_time: float) -> dict:
        loss_sum, *stats = distributed.all_reduce_mean(out["totals"]).tolist()
        acc = self.cfg.gradient_accumulation_steps
        return {
            "step": self.global_step,
            "loss": loss_sum / acc,
            **self.objective.metrics(dict(zip(self.objective.stat_names, stats)), acc),
            "lr": out["lr"],
            "loss_scale": out["loss_scale"],
            "skipped": bool(out["skipped"]),
            "seq_per_sec": self.cfg.train_batch_size * self.env.world_size / step_time,
        }

    def train(self) -> dict:
        cfg = self.cfg
        if self.already_finished:
            if self._finished_here and self.is_main:
                self._complete_outputs()
            distributed.barrier()
            return {"phase": self.phase, "already_finished": True, "global_step": self.global_step}
        it = iter(self.loader)
        start_step = self.phase_step
        bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not self.is_main or cfg.disable_progress_bar, desc=f"phase {self.phase}")
        t_begin = time.perf_counter()
        t_after_first = None
        last_record: dict = {}
        saved_at = -1
        self.engine.model.train()
        while self.phase_step < cfg.max_steps and not self.preemption.requested and not self.finished_early:
            t0 = time.perf_counter()
            out = self.train_step(it)
            if not out["skipped"] and not bool(torch.isfinite(out["totals"][0])):  # fp16 overflow steps are skipped, not errors
                raise NonFiniteError(f"step {self.global_step + 1}: the loss is {float(out['totals'][0])}; training stopped without "
                                     f"saving, the newest checkpoint in {self.cfg.output_dir} is the last finite one. Lower "
                                     "--learning_rate or raise --warmup_proportion, then resume")
            self.phase_step += 1
            if self.phase_step == start_step + 1:
                t_after_first = time.perf_counter()  # the first step includes ORT export / compilation
            evaluate = self.periodic_eval is not None and self.periodic_eval.due(self.phase_step)
            if self.phase_step % cfg.log_freq == 0 or self.phase_step == cfg.max_steps or evaluate:
                last_record = self._record(out, time.perf_counter() - t0)
                if evaluate:  # merged into the step's record (may set finished_early)
                    last_record.update(self.periodic_eval(self))
                self.metrics.log(last_record)
                bar.set_postfix(loss=f"{last_record['loss']:.4f}", lr=f"{last_record['lr']:.2e}")
            bar.update(1)
            for hook in self.hooks:
                hook(self, last_record)
            stop = self.preemption.agreed(self.env, self.device)
            if self.phase_step % cfg.num_steps_per_checkpoint == 0 or stop or self.finished_early or self.phase_step == cfg.max_steps:
                self.save()
                saved_at = self.phase_step
        bar.close()
        t_end = time.perf_counter()
        if self.preemption.requested:
            if saved_at != self.phase_step and self.phase_step != start_step:  # nothing new to save if stopped before a step
                self.save()
            # Every step of this attempt is in a checkpoint (saved at the stop, or earlier when none was trained).
            summary = {"preempted": True, "global_step": self.global_step, "steps_this_attempt": self.phase_step - start_step}
            if self.is_main:
                atomic_write_text(self._preempted_marker, json.dumps(summary) + "\n")
            return summary
        timed_steps = self.phase_step - start_step - 1
        steady = (timed_steps * cfg.train_batch_size * self.env.world_size / (t_end - t_after_first)) if timed_steps > 0 and t_after_first else None
        summary = {
            "phase": self.phase,
            "backend": cfg.backend,
            "precision": cfg.precision,
            "global_step": self.global_step,
            "max_steps": cfg.max_steps,
            "training_sequences_per_second": steady,
            "final_loss": last_record.get("loss"),
            **self.objective.summary(last_record),
            "e2e_train_time": t_end - t_begin,
        }
        if self.is_main:
            self._write_outputs(summary)
        distributed.barrier()
        return summary

    def _write_outputs(self, summary: dict) -> None:
        """The export, then the summary: a phase counts as finished only once both exist (run_status)."""
        cfg = self.cfg
        best = self.periodic_eval.load_best(self.model.hf_model, self.global_step) if self.periodic_eval is not None else None
        if best is not None:  # early stopping: the export (and the summary's evaluation) is of the best evaluated weights
            summary["exported_weights"] = best
        if not cfg.skip_hf_export:
            from ort_training.export import export_hf

            export_hf(self.model, Path(cfg.output_dir) / EXPORT_DIR, self.vocab_file, cfg.do_lower_case, cfg.export_onnx)
        if cfg.eval_dir:
            summary.update(self.evaluate())
        self.metrics.summary(summary, self.objective.curves)
        if cfg.json_summary:
            atomic_write_text(cfg.json_summary, json.dumps(summary, indent=2) + "\n")

    def _complete_outputs(self) -> None:
        """A run killed after its last checkpoint but before (or during) the export: write what is missing."""
        if phase_finished(self.cfg.output_dir, self.cfg):
            return
        logger.warning("phase %d reached its last step but its export or summary is missing (stopped during the export?); "
                       "writing them now from the last checkpoint", self.phase)
        records = read_metrics(Path(self.cfg.output_dir) / "metrics.jsonl")
        last = records[-1] if records else {}
        self._write_outputs({"phase": self.phase, "backend": self.cfg.backend, "precision": self.cfg.precision,
                             "global_step": self.global_step, "max_steps": self.cfg.max_steps, "training_sequences_per_second": None,
                             "final_loss": last.get("loss"), **self.objective.summary(last), "completed_on_rerun": True})

    def evaluate(self) -> dict:
        """The objective's held-out metrics of the current weights on --eval_dir (eager model, rank 0), computed
        like `python -m ort_training.evaluate` computes them for an export."""
        held_out = held_out_input(self.cfg, self.model.family, self.model_config.original_vocab_size,  # each sequence at most once
                                  getattr(self.model_config, "type_vocab_size", None), self.objective)
        try:
            result = self.objective.evaluate(self.model.hf_model, ({k: v.to(self.device) for k, v in b.items()} for b in held_out))
        finally:
            self.model.train()
        return {f"eval_{k}": v for k, v in result.items()}

    def close(self) -> None:
        self.preemption.restore()
        self.loader.close()
        self.metrics.close()
        if not self.cfg.deepspeed:  # DeepSpeed caches its groups per process: leave its process group alive
            distributed.destroy()
