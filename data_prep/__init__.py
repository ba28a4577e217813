"""Corpus -> NVIDIA-schema BERT pretraining HDF5: download, format, shard, vocab, hdf5 (see docs/data_prep.md)."""

from .manifest import DataPrepError

__all__ = ["DataPrepError"]
