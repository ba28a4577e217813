"""The pre-training refusals, written once: the trainer (`ort_training/loop/trainer.py`) makes them when it starts a
phase, and every `--dry-run` (`run_pretraining`, the two-phase runner `pretrain`) makes the same ones before it
prints its plan, so a dry run that passes is a run that starts.

`preflight` is the trainer's start-up checks in its order, without a process group, a device allocation or a
weight read into a real model (an init checkpoint's weights are matched against a model built on torch's meta
device: shapes only). What it cannot know without training (a full resume's saved settings, a GPU's memory) is
left to the run.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ort_training.errors import UsageError


def check_precision(backend: str, precision: str, device_type: str) -> None:
    """onnxruntime-training 1.19.2 on CPU fails to build the graph of an autocast model ("LayerNormalization bound to
    different types (bfloat16 and float)"): ORT on CPU trains in fp32 only. The trainer and the dry runs ask this."""
    if backend == "ort" and device_type == "cpu" and precision != "fp32":
        raise UsageError(f"--backend ort on CPU trains in fp32 only (got --precision {precision}); "
                         "use --backend eager or compile for bf16 on CPU, or a GPU for ORT mixed precision")


def device_type(device: str = "auto") -> str:
    """The device type the trainer will pick (`loop.distributed.init_distributed`: CUDA where torch sees it) for a
    launcher's --device (cpu hides the GPUs; cuda is asked for, and refused elsewhere by the launcher)."""
    if device in ("cpu", "cuda"):
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_init_checkpoint(cfg, family, model_config, objective=None) -> None:
    """--init_checkpoint must hold weights of this run's architecture: a Hugging Face folder, an NVIDIA file or a
    checkpoint of this bundle. The real run's own checks, called: `weights_import.load_into` on the model built on the
    meta device (config.json's fields, every tensor's shape; no memory for the weights), and for a bundle checkpoint
    the architecture record that `Trainer._load_weights` compares."""
    import torch

    from ort_training.models.pretraining import PretrainingModel
    from ort_training.weights_import import detect_format, load_into

    source = cfg.init_checkpoint
    fmt = detect_format(source)  # refuses a folder that holds neither weights nor a checkpoint
    with torch.device("meta"):
        model = PretrainingModel(model_config, cfg.dense_seq_output, objective or cfg.objective)
    if fmt != "bundle":
        load_into(model.hf_model, source)
        return
    from ort_training.loop.checkpoint import load_checkpoint

    ckpt = load_checkpoint(source)
    now = family.architecture(model_config, type(model.hf_model).__name__)
    saved = ckpt.get("architecture") or {k: (ckpt.get("model_config") or {}).get(k) for k in now}
    differ = {k: (saved[k], now[k]) for k in now if saved.get(k) is not None and saved[k] != now[k]}
    if differ:
        raise UsageError(f"{source}: the checkpoint holds a {saved.get('class', 'model')} ({', '.join(f'{k} {v}' for k, v in saved.items())}), "
                         f"this run builds a {now['class']} (differ: {', '.join(f'{k} {a} vs {b}' for k, (a, b) in differ.items())}); "
                         "pass the checkpoint's --config_file / --objective")


def check_unlocked(folder, what: str) -> None:
    """bundle.locking.RunLock's refusal of a folder another run holds, probed without taking the lock or writing."""
    import fcntl

    from bundle.locking import RunLock, RunLockedError

    path = RunLock(folder, what).path
    if not path.is_file():
        return
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = fh.read().strip() or "unknown process"
            raise RunLockedError(f"{path.parent} is in use by another {what} run ({holder}); wait for it to finish or "
                                 "stop it, or use another folder") from None


def preflight(cfg, device: str = "auto", data: bool = True) -> list[str]:
    """The refusals `Trainer._setup` and `_restore` make before the first step, for a run on `device` (a launcher's
    --device, or auto); UsageError / FileNotFoundError / FileExistsError name the flag or file, as the run's do.
    `data=False` (a dry run made before data_prep ran) skips the --input_dir checks. Returns notes (what was not
    checked). `cfg` is not changed (the data's manifest may set settings on a copy)."""
    from ort_training.loop.checkpoint import list_checkpoints
    from ort_training.models import family_of_file

    cfg = dataclasses.replace(cfg)
    notes: list[str] = []
    from ort_training.objectives import get_objective

    kind = device_type(device)
    check_precision(cfg.backend, cfg.precision, kind)
    config_file = cfg.model_config_path()
    family = family_of_file(config_file)
    family.check_backend(cfg.backend)
    objective = get_objective(cfg.objective)
    model_config = family.load_config(config_file, cfg.dropout)
    if cfg.export_onnx:
        from ort_training.export import check_onnx_available

        check_onnx_available()
    vocab_file, seq_len = cfg.vocab_file, cfg.max_seq_length
    if data:  # refuses a missing --input_dir as the run does
        from ort_training.data.inputs import open_training_input

        opened = open_training_input(cfg, family, model_config, objective)
        vocab_file, seq_len = opened.tokenizer, opened.seq_len
    model_config._attn_implementation = family.resolve_attention(cfg.attention, cfg.backend, kind, seq_len)
    if vocab_file:
        from ort_training.export import tokenizer_size
        from ort_training.models.pretraining import check_vocab_fits

        if not Path(vocab_file).exists():
            raise FileNotFoundError(f"--vocab_file {vocab_file}: no such file or folder")
        check_vocab_fits(tokenizer_size(vocab_file, cfg.do_lower_case), f"--vocab_file {vocab_file}", model_config, config_file)
    # _restore's refusals, in its order.
    has_checkpoints = bool(list_checkpoints(cfg.output_dir))
    if not cfg.resume_from_checkpoint and not cfg.phase2 and has_checkpoints:
        found = list_checkpoints(cfg.output_dir)
        raise FileExistsError(f"--output_dir {cfg.output_dir} already holds checkpoints (newest step {found[-1][0]}); "
                              "pass --resume_from_checkpoint to continue that run, or use a new --output_dir")
    if cfg.resume_from_checkpoint and not has_checkpoints and cfg.phase2 and not cfg.init_checkpoint:
        raise FileNotFoundError(f"--phase2 --resume_from_checkpoint: no checkpoint in {cfg.output_dir}/checkpoints; "
                                "run phase 1 with the same --output_dir or pass --init_checkpoint")
    if cfg.resume_from_checkpoint and has_checkpoints:
        notes.append(f"{cfg.output_dir} holds checkpoints: the run resumes from the newest and checks its settings then")
    elif cfg.init_checkpoint and Path(cfg.init_checkpoint).exists():
        check_init_checkpoint(cfg, family, model_config, objective)
    elif cfg.init_checkpoint:
        if not cfg.phase2:
            raise FileNotFoundError(f"--init_checkpoint {cfg.init_checkpoint}: no such file or folder")
        notes.append(f"{cfg.init_checkpoint} does not exist yet (phase 1 writes it): its architecture check runs when phase 2 starts")
    return notes
