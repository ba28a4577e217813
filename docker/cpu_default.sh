#!/usr/bin/env bash
# The CPU image's default command: both phases of a CPU-sized recipe (default tiny_cpu: a tiny BERT,
# a few eager steps per phase) through `python -m ort_training.pretrain`.
#
# Data: the HDF5 folders docker/launch.sh mounts (DATA_DIR_PHASE1/2, default /data/phase1 and
# /data/phase2); when they hold no *training* shards, small synthetic ones are written to /tmp so a
# plain `docker run IMAGE` shows the whole path. Vocab: VOCAB_FILE (launch.sh mounts it), else the
# synthetic one; the export then carries a tokenizer. Results: RESULTS_DIR (default
# /workspace/bert/results). RECIPE picks another recipe; extra arguments go to the runner.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

phase1=${DATA_DIR_PHASE1:-/data/phase1}
phase2=${DATA_DIR_PHASE2:-/data/phase2}
results=${RESULTS_DIR:-/workspace/bert/results}
vocab=${VOCAB_FILE:-}

has_shards() { [[ -n "$(find "$1" -name '*training*.hdf5' -print -quit 2>/dev/null)" ]]; }
if ! has_shards "${phase1}" || ! has_shards "${phase2}"; then
  synthetic=${TMPDIR:-/tmp}/bert-synthetic
  echo "cpu_default: no *training*.hdf5 under ${phase1} and ${phase2}: writing synthetic shards to ${synthetic}" \
    "(mount real ones with docker/launch.sh)" >&2
  python - "${synthetic}" <<'PY'
import sys
from ort_training.data.synthetic import write_dataset, write_vocab
root = sys.argv[1]
write_dataset(f"{root}/phase1", 2, 32, seq_len=128, max_pred=20, vocab_size=1000, seed=1)
write_dataset(f"{root}/phase2", 2, 16, seq_len=512, max_pred=80, vocab_size=1000, seed=2)
write_vocab(f"{root}/vocab.txt", 1000)
PY
  phase1=${synthetic}/phase1 phase2=${synthetic}/phase2
  vocab=${vocab:-${synthetic}/vocab.txt}
fi
[[ -n "${vocab}" ]] || echo "cpu_default: warning: no VOCAB_FILE; the exported model will have no tokenizer" >&2

cmd=(python -m ort_training.pretrain --recipe "${RECIPE:-tiny_cpu}" --output_dir "${results}"
  --phase1.input_dir "${phase1}" --phase2.input_dir "${phase2}")
[[ -n "${vocab}" ]] && cmd+=(--vocab_file "${vocab}")
cmd+=("$@")
echo "cpu_default: ${cmd[*]}" >&2
exec "${cmd[@]}"
