"""Suite-wide setup: import the checkout's packages and keep every test offline."""
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# Nothing may reach the Hugging Face hub (no internet here, and tests must not depend on it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Rust tokenizers' thread pool must be off before tests fork worker processes.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
