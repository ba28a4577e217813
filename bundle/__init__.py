"""Pieces both halves of the bundle share (data_prep writes what ort_training reads).

- `cli`: typed dataclass configs -> argparse flags (one helper for every entry point);
- `atomic`: write-then-rename for files and folders (nothing half-written under a final name);
- `locking`: one run per output folder (a second run stops with a message naming the holder);
- `hdf5_schema`: NVIDIA's pretraining HDF5 schema, used by the writer, the reader and the tests;
- `packed_schema`: the packed token sequences format (long sequences, masked at load time), its writer,
  reader and validation;
- `layout`: data_prep's folder names (hdf5 and packed) and the lookup of finished data folders from their
  manifests (`python -m bundle.layout data-dir`), which scripts and tests ask instead of globbing names.
"""
