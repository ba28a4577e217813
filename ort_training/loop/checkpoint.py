"""Checkpoints in OUTPUT_DIR/checkpoints/step-N/checkpoint.pt, atomic, newest K kept.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(weights_only=True)` (no pickled code runs). It holds everything a bitwise resume needs:
model, optimizer, grad scaler, scheduler, train state (global step, phase step, phase), data
position and the RNG states of torch, CUDA, numpy and Python's `random`.

Under ZeRO (DeepSpeed stage 1/2) the optimizer state is partitioned over the ranks: each rank writes its own
partition beside checkpoint.pt as `optimizer-rank{R}.pt` (`save_checkpoint(..., shard=...)`, called by every rank),
and checkpoint.pt's "optimizer" entry only says how many shards there are (`{"zero_shards": N, ...}`); on resume each
rank reads its own (`load_optimizer_shard`). The step-N folder appears, atomically, only once every shard is in it.
"""

from __future__ import annotations

import errno
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from bundle.atomic import atomic_dir, tmp_name
from ort_training.errors import UsageError
from ort_training.loop import distributed

logger = logging.getLogger(__name__)

CKPT_FILE = "checkpoint.pt"
SHARD_FILE = "optimizer-rank{rank}.pt"  # one per rank under ZeRO (module docstring)
_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        # numpy's state tuple holds an ndarray, which weights_only refuses: store it as a tensor.
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (their file exists) as (step, dir), oldest first."""
    root = Path(output_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _STEP_DIR.match(d.name)
            if m and (d / CKPT_FILE).is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint.pt from: the file, a step-N folder, a checkpoints/ folder or an output dir (newest)."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / CKPT_FILE).is_file():
        return p / CKPT_FILE
    for root in (p, p.parent if p.name == "checkpoints" else None):
        if root is not None and (found := list_checkpoints(root)):
            return found[-1][1] / CKPT_FILE
    raise FileNotFoundError(f"{p}: no checkpoint found (expected a step-N/{CKPT_FILE} under {p}/checkpoints)")


def save_checkpoint(output_dir: str | Path, step: int, state: dict | None, keep: int, shard: dict | None = None,
                    rank: int = 0) -> Path:
    """Write step-N atomically (temp folder + rename); keep it and the `keep` - 1 newest others.

    Without `shard` only rank 0 calls it, with the whole `state`. With `shard` (this rank's ZeRO partition of the
    optimizer state) every rank calls it: each writes its shard to a hidden temporary file beside the folder, the
    paths meet on rank 0 (an all-gather, which is also where a rank's write error reaches every rank), and rank 0
    moves them into the temporary folder with checkpoint.pt before the one rename. The checkpoints folder must be on
    storage every rank sees (as resuming already needs)."""
    final = Path(output_dir) / "checkpoints" / f"step-{step}"
    shard_paths = None
    if shard is not None:
        shard_paths = _gather_shards(final, shard, rank)
        if rank != 0:
            return final
    with atomic_dir(final) as tmp:
        _write(state, tmp / CKPT_FILE, final / CKPT_FILE)
        for r, path in enumerate(shard_paths or []):
            Path(path).replace(tmp / SHARD_FILE.format(rank=r))
    # Never the one just written, even when older runs left higher step numbers in the folder.
    others = [d for _, d in list_checkpoints(output_dir) if d != final]
    for old in others[:max(len(others) - (keep - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def _gather_shards(final: Path, shard: dict, rank: int) -> list[str]:
    """Write this rank's shard to a hidden temporary file (pid-named, so clean_stale_temps removes one a killed run
    left); return every rank's path, in rank order, on every rank. A failed write on any rank raises on all of them."""
    path = tmp_name(final.with_name(f"{final.name}-{SHARD_FILE.format(rank=rank)}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write(shard, path, final / SHARD_FILE.format(rank=rank))
        outcome = str(path)
    except OSError as exc:
        outcome = {"error": f"rank {rank}: {exc}", "errno": exc.errno}
    outcomes = distributed.all_gather_object(outcome)
    failed = [o for o in outcomes if isinstance(o, dict)]
    if failed:
        path.unlink(missing_ok=True)
        raise OSError(failed[0]["errno"], f"optimizer shard not written ({'; '.join(o['error'] for o in failed)})", str(final))
    return outcomes


def load_optimizer_shard(optimizer_entry: dict, rank: int, world_size: int) -> dict:
    """This rank's ZeRO optimizer shard of a checkpoint whose "optimizer" entry is `{"zero_shards": N, "folder": ...}`
    (load_checkpoint adds the folder)."""
    saved = optimizer_entry["zero_shards"]
    if saved != world_size:
        raise UsageError(f"{optimizer_entry['folder']}: the optimizer state is partitioned over {saved} ranks (ZeRO), this "
                         f"run has {world_size}; resume on {saved} ranks, or start in a new --output_dir")
    path = Path(optimizer_entry["folder"]) / SHARD_FILE.format(rank=rank)
    if not path.is_file():
        raise UsageError(f"{path}: missing; the checkpoint's ZeRO optimizer state needs one shard per rank "
                         f"({SHARD_FILE.format(rank='R')} for R < {saved})")
    return torch.load(path, map_location="cpu", weights_only=True)


class _WholeWrites:
    """The file torch.save writes to: every write() writes all its bytes or raises the OSError (ENOSPC), and keeps it.
    torch's own writer turned a short write on a full disk into "unexpected pos N vs M"."""

    def __init__(self, raw):
        self.raw, self.error = raw, None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                n = self.raw.write(view[done:])
                if not n:
                    raise OSError(errno.ENOSPC, "No space left on device")
                done += n
        except OSError as exc:
            self.error = self.error or exc
            raise
        return done

    def flush(self) -> None:
        self.raw.flush()


def _write(state: dict, tmp: Path, final: Path) -> None:
    """torch.save through `_WholeWrites`: a full disk is an OSError with its errno (ENOSPC) naming the checkpoint. The
    temporary folder is removed by atomic_dir and the older checkpoints stay as they were."""
    out = None
    try:
        with open(tmp, "wb", buffering=0) as raw:
            out = _WholeWrites(raw)
            torch.save(state, out)
    except (OSError, RuntimeError) as exc:
        error = exc if isinstance(exc, OSError) else (out.error if out is not None else None)
        if error is None:
            raise
        raise OSError(error.errno, error.strerror or str(error), str(final)) from None


def load_checkpoint(path: str | Path, step: int | None = None) -> dict:
    """The newest readable checkpoint under `path` (see resolve_checkpoint), or the one of global `step`.

    A newest checkpoint that cannot be read (a disk error, a file truncated by something other than
    our atomic save) is skipped with a warning for the previous complete one."""
    if step is None:
        candidates = [d / CKPT_FILE for _, d in reversed(list_checkpoints(path))]
        if not candidates:
            candidates = [resolve_checkpoint(path)]
        for i, ckpt in enumerate(candidates):
            try:
                logger.info("loading checkpoint %s", ckpt)
                return _read(ckpt)
            except Exception as exc:  # truncated zip, bad pickle, I/O error
                if i + 1 == len(candidates):
                    raise UsageError(f"{ckpt}: cannot read checkpoint ({exc}) and no older complete one exists; "
                                       "start a new --output_dir") from exc
                logger.warning("%s: cannot read checkpoint (%s); falling back to %s", ckpt, exc, candidates[i + 1])
    else:
        found = dict(list_checkpoints(path))
        if step not in found:
            raise FileNotFoundError(f"--resume_step {step}: no complete checkpoint of that step in {path}/checkpoints "
                                    f"(found steps {sorted(found)}); pass one of them or -1 for the newest")
        ckpt = found[step] / CKPT_FILE
    logger.info("loading checkpoint %s", ckpt)
    return _read(ckpt)


def _read(ckpt: Path) -> dict:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    optimizer = state.get("optimizer")
    if isinstance(optimizer, dict) and "zero_shards" in optimizer:  # the shards lie beside it: say where
        optimizer["folder"] = str(ckpt.parent)
    return state
