"""A training run's input, checked before the model is built: the files of --input_dir in either format
(NVIDIA HDF5 with stored masks, whose batches arrive made, or packed sequences that the objective's collator
makes into batches), what data_prep's manifest says about them (the tokenizer, the objective), and the loader
that reads them. The trainer asks this module; it holds no h5py, manifest or format knowledge of its own."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from bundle import hdf5_schema, packed_schema
from bundle.digest import file_sha256, tokenizer_file
from ort_training.config import PretrainConfig
from ort_training.data.hdf5 import DataError, PretrainingDataLoader, held_out_batches, list_hdf5_files, read_data_manifest
from ort_training.data.packed import PackedDataLoader, held_out_packed_batches, is_packed_folder
from ort_training.models import VOCAB_MULTIPLE, ModelFamily
from ort_training.errors import UsageError

logger = logging.getLogger(__name__)


@dataclass
class TrainingInput:
    files: list[Path]
    tokenizer: str | None
    """The tokenizer the export carries: --vocab_file, or the one data_prep's manifest names."""
    packed: packed_schema.PackedAttrs | None
    """The packed files' attributes; None for NVIDIA HDF5."""
    collator: object | None
    """Packed data: the objective's collator (ort_training.data.collate); None for NVIDIA HDF5 (batches arrive made)."""
    root: Path
    """--input_dir: the files are named relative to it in the input's identity."""
    type_vocab_size: int | None = None
    """Segment ids must be below it (the model reads segment ids); None: not read."""
    seq_len: int | None = None
    """Tokens per sequence of the files (what `--attention auto` chooses by); None if unreadable here."""

    @property
    def mask_rate(self) -> float | None:
        """The rate packed data is masked at as it is read (None: not masked here)."""
        return getattr(self.collator, "mask_rate", None)

    def loader(self, cfg: PretrainConfig, env, vocab_size: int):
        if self.packed is not None:
            return PackedDataLoader(self.files, cfg.micro_batch_size, cfg.seed, self.collator, env.rank, env.world_size,
                                    self.packed.max_seq_length, cfg.prefetch, vocab_size=vocab_size)
        return PretrainingDataLoader(self.files, cfg.micro_batch_size, cfg.seed, env.rank, env.world_size, cfg.prefetch,
                                     vocab_size=vocab_size, type_vocab_size=self.type_vocab_size)

    def identity(self) -> dict:
        """What this run trains on, recorded in its checkpoints (files_identity)."""
        return files_identity(self.root, self.files)


IDENTITY_EDGE = 64 * 1024
"""Bytes hashed at each end of a file for its identity: bounded, whatever the data's size."""


def files_identity(root: Path, files: list[Path]) -> dict:
    """A bounded fingerprint of a training input: each file's name (relative to `root`, so a moved folder keeps it),
    size and the sha256 of its first and last IDENTITY_EDGE bytes (HDF5 metadata and the first and last data
    chunks), not a full hash: reading terabytes at every start-up is not an option. {"digest", "describe"}."""
    h = hashlib.sha256()
    total = 0
    for f in files:
        size = f.stat().st_size
        total += size
        h.update(f"{f.relative_to(root) if f.is_relative_to(root) else f.name}\0{size}\0".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(IDENTITY_EDGE))
            if size > 2 * IDENTITY_EDGE:
                fh.seek(size - IDENTITY_EDGE)
                h.update(fh.read(IDENTITY_EDGE))
    return {"digest": h.hexdigest()[:16], "describe": f"{root} ({len(files)} files, {total} bytes, digest {h.hexdigest()[:12]})"}


def open_training_input(cfg: PretrainConfig, family: ModelFamily, model_config, objective) -> TrainingInput:
    """List and check --input_dir (and --eval_dir, now rather than after hours of training) for `objective`. Packed
    data may set the config's special-token ids (`check_packed`); the manifest may set cfg.do_lower_case."""
    if cfg.input_dir is None:
        raise UsageError("--input_dir is required (folder of HDF5 files written by data_prep)")
    files = list_hdf5_files(cfg.input_dir, "training")
    eval_files = list_hdf5_files(cfg.eval_dir, "test", require_match=True) if cfg.eval_dir else []
    packed, collator = None, None
    if is_packed_folder(files):
        packed = check_packed(files[0], cfg, family, model_config)
        seq_len = packed.max_seq_length
        collator = objective.collator(family, cfg.mask_rate)
    else:
        objective.check_premasked(f"--input_dir {cfg.input_dir}")
        seq_len = check_shapes(files[0], cfg, family, model_config)
    if eval_files and not is_packed_folder(eval_files):
        objective.check_premasked(f"--eval_dir {cfg.eval_dir}")
    tokenizer = adopt_manifest(files, cfg, objective.name)
    return TrainingInput(files, tokenizer, packed, collator, Path(cfg.input_dir),
                         model_config.type_vocab_size if family.token_types and packed is None else None, seq_len)


def held_out_input(cfg: PretrainConfig, family: ModelFamily, vocab_size: int, type_vocab_size: int | None, objective):
    """Evaluation batches of --eval_dir (at most --eval_batches micro-batches, each sequence at most once), either format."""
    files = list_hdf5_files(cfg.eval_dir, "test", require_match=True)
    limit = cfg.eval_batches * cfg.micro_batch_size
    if is_packed_folder(files):  # collated as training collates epoch 0 of the seed: the same masks at every evaluation
        return held_out_packed_batches(files, cfg.micro_batch_size, limit, cfg.seed, objective.collator(family, cfg.mask_rate), vocab_size)
    return held_out_batches(files, cfg.micro_batch_size, limit, vocab_size, type_vocab_size if family.token_types else None)


def check_shapes(path: Path, cfg: PretrainConfig, family: ModelFamily, config) -> int | None:
    """--max_seq_length / --max_predictions_per_seq (NVIDIA's flags) must describe the data, and the model must have
    positions for its sequences. Returns the sequence length (None when the file cannot be read here)."""
    import h5py

    try:
        _, seq_len, _ = hdf5_schema.read_shape(path)
    except Exception:  # noqa: BLE001 -- corrupt or not the schema: load_shard names the problem when it opens the file
        seq_len = None
    if seq_len is not None:
        family.check_sequence_length(config, seq_len, str(path), cfg.model_config_path())
    expected = {"input_ids": cfg.max_seq_length, "masked_lm_positions": cfg.max_predictions_per_seq}
    if all(v is None for v in expected.values()):
        return seq_len
    with h5py.File(path, "r") as f:
        for key, want in expected.items():
            have = f[key].shape[1] if key in f else None
            if want is not None and have != want:
                flag = "--max_seq_length" if key == "input_ids" else "--max_predictions_per_seq"
                raise DataError(f"{flag} {want} but {path} has {key} of width {have}; pass the HDF5 folder made for "
                                f"{flag} {want} (data_prep writes one folder per phase) or fix the flag")
    return seq_len


def check_packed(path: Path, cfg: PretrainConfig, family: ModelFamily, config) -> packed_schema.PackedAttrs:
    """Packed data: its length must fit the model's positions and --max_seq_length, and the config must use the
    tokenizer's special ids (a from-scratch config takes them; a published model's must already agree)."""
    attrs = packed_schema.read_attrs(path)
    if cfg.max_seq_length is not None and cfg.max_seq_length != attrs.max_seq_length:
        raise DataError(f"--max_seq_length {cfg.max_seq_length} but {path} holds packed sequences of up to {attrs.max_seq_length} "
                        f"tokens; pass the folder `data_prep packed --max-seq-length {cfg.max_seq_length}` wrote, or fix the flag")
    family.check_sequence_length(config, attrs.max_seq_length, str(path), cfg.model_config_path())
    ids = {"pad": attrs.pad_id, "cls": attrs.cls_id, "sep": attrs.sep_id, "mask": attrs.mask_id}
    changed = {f: ids[role] for f, role in family.special_token_fields.items() if getattr(config, f, None) != ids[role]}
    if changed and cfg.init_checkpoint and not cfg.phase2:
        raise DataError(f"{path}: the data's tokenizer has special ids {changed}, but the model config from {cfg.model_config_path()} "
                        f"has {({f: getattr(config, f, None) for f in changed})}: the data was made with another tokenizer "
                        "than the model's. Rebuild it with the model's tokenizer (data_prep packed --tokenizer MODEL_FOLDER)")
    for field_name, value in changed.items():
        setattr(config, field_name, value)
    if changed:
        logger.info("model config takes the data tokenizer's special ids: %s", changed)
    # From scratch, and wherever the weights come from a run of this bundle (phase 2, a resume, an init from its
    # checkpoint: trained on the same data tokenizer, which the checkpoint's tokenizer digest holds it to); never for a
    # published model's config, whose vocabulary the weights fix.
    own_weights = not cfg.init_checkpoint or not (Path(cfg.init_checkpoint) / "config.json").is_file()
    if family.vocab_from_data and own_weights and attrs.vocab_size < config.original_vocab_size:
        logger.info("vocabulary: the data tokenizer's %d ids (the config allows %d)", attrs.vocab_size, config.original_vocab_size)
        config.original_vocab_size = attrs.vocab_size
        config.vocab_size = attrs.vocab_size + -attrs.vocab_size % VOCAB_MULTIPLE
    return attrs


def adopt_manifest(files: list[Path], cfg: PretrainConfig, objective_name: str) -> str | None:
    """data_prep's manifest knows the tokenizer and the objective the data was made with: take the tokenizer when
    none is given (so every export carries it), refuse a different one, refuse a mismatched objective. Returns
    the tokenizer to export (or None)."""
    manifest = read_data_manifest(files)
    if manifest is None:
        return cfg.vocab_file
    where = Path(files[0]).parent / "manifest.json"
    # One case setting: the data's. Token ids were made with it; the export's tokenizer must case text the same way.
    data_lower = manifest.get("args", {}).get("lower_case")
    if data_lower is not None and bool(data_lower) != cfg.do_lower_case:
        logger.info("do_lower_case=%s from the data's manifest (data_prep %s)", bool(data_lower),
                    "--lower-case" if data_lower else "--no-lower-case")
        cfg.do_lower_case = bool(data_lower)
    if manifest.get("objective") == "mlm" and objective_name == "mlm_nsp":
        raise DataError(f"{where}: this data was written for --objective mlm (no next-sentence pairs); "
                        "train it with --objective mlm, or rebuild the data with data_prep's hdf5 stage and its default objective")
    recorded, digest = manifest.get("vocab_file"), manifest.get("vocab_sha256")
    if isinstance(manifest.get("tokenizer"), dict):  # the packed stage: any tokenizer kind
        tok = manifest["tokenizer"]
        recorded, digest = tok.get("folder") or tok.get("file"), tok.get("sha256")
    if cfg.vocab_file:
        given = tokenizer_file(cfg.vocab_file)
        if digest and (given is None or not given.is_file() or file_sha256(given) != digest):
            raise DataError(f"--vocab_file {cfg.vocab_file} is not the vocab the HDF5 in {where.parent} was made with "
                            f"({recorded}); token ids would mean other words. Pass that one, or rebuild the data with this one")
        return cfg.vocab_file
    if recorded:  # data_prep names the copy in the data folder relatively (an absolute path of older manifests stays as it is)
        recorded = str(where.parent / recorded)
    if recorded and (found := tokenizer_file(recorded)) is not None and found.is_file() and (not digest or file_sha256(found) == digest):
        logger.info("tokenizer from the data's manifest: %s", recorded)
        return recorded
    if recorded:  # the export would ship no tokenizer, or another one than the ids were made with
        raise DataError(f"{where} names the tokenizer {recorded}, which is missing or changed since the data was made (sha256 "
                        f"{(digest or '?')[:12]}); restore it, or pass --vocab_file with the tokenizer the data was made with")
    return None
