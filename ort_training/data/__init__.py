"""Reading training data: NVIDIA HDF5 (hdf5.py), packed sequences masked as read (packed.py), text tables for
fine-tuning (text.py), the run's checked input (inputs.py) and synthetic shards for tests (synthetic.py)."""
