#!/usr/bin/env bash
# Run a command in the training image with the data and results folders mounted.
#
#   docker/launch.sh PHASE1_HDF5_DIR PHASE2_HDF5_DIR RESULTS_DIR [command ...]
#
# The HDF5 folders are mounted read-only at /data/phase1 and /data/phase2 (the two-phase script's
# defaults) and RESULTS_DIR read-write at /workspace/bert/results; VOCAB_FILE (the data_prep vocab)
# read-only at /data/vocab/vocab.txt, so the exported model carries its tokenizer; INIT_CHECKPOINT (a
# published model's folder, an NVIDIA .pt or a checkpoint: continued pretraining) read-only at /data/init
# (a file: /data/init/NAME), named by INIT_CHECKPOINT in the container (the launcher's init_checkpoint
# slot, or pass --phase1.init_checkpoint /data/init to a given command). Without a command
# the image's own runs (GPU: scripts/run_pretraining_ort.sh; CPU: docker/cpu_default.sh, the tiny_cpu
# recipe); parameters as environment variables with ENV="TRAIN_BATCH_SIZE=64 NUM_GPUS=1", or give
# the whole command, e.g.
#   docker/launch.sh data/p1 data/p2 results python -m ort_training.pretrain --recipe bert_large_biobert \
#     --output_dir results --phase1.input_dir /data/phase1 --phase2.input_dir /data/phase2
#
# Environment: IMAGE (default ort-bert-pretraining:gpu), GPUS (--gpus value, default all; "none" for
# CPU), SHM_SIZE (default 16g: DataLoader workers share batches through /dev/shm), VOCAB_FILE, INIT_CHECKPOINT, ENV
# (extra variables for the container), DOCKER (engine command), DRY_RUN=1 (print the command only).
set -euo pipefail

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "launch.sh: error: $*" >&2; exit 2; }

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi
(($# >= 3)) || { usage >&2; die "need PHASE1_HDF5_DIR PHASE2_HDF5_DIR RESULTS_DIR"; }
phase1=$1 phase2=$2 results=$3
shift 3
[[ -d "${phase1}" ]] || die "phase-1 HDF5 folder '${phase1}' does not exist"
[[ -d "${phase2}" ]] || die "phase-2 HDF5 folder '${phase2}' does not exist"
[[ ! -e "${results}" || -d "${results}" ]] || die "results '${results}' exists and is not a folder"
vocab=${VOCAB_FILE:-}
[[ -z "${vocab}" || -f "${vocab}" ]] || die "VOCAB_FILE '${vocab}' is not a file"
[[ -n "${vocab}" ]] || echo "launch.sh: warning: no VOCAB_FILE given; the exported model will have no tokenizer" >&2
init=${INIT_CHECKPOINT:-}
[[ -z "${init}" || -e "${init}" ]] || die "INIT_CHECKPOINT '${init}' does not exist (a model folder, an NVIDIA .pt or a checkpoint)"

image=${IMAGE:-ort-bert-pretraining:gpu}
gpus=${GPUS:-all}
command_=("$@") # empty: the image's CMD

read -r -a engine <<<"${DOCKER:-docker}" # may be several words, e.g. "sudo docker"
cmd=("${engine[@]}" run --rm --init)
[[ -t 0 && -t 1 ]] && cmd+=(-it)
[[ "${gpus}" != "none" ]] && cmd+=(--gpus "${gpus}")
# NCCL and the DataLoader need shared memory; memlock/stack as NVIDIA recommends for its containers.
cmd+=(--shm-size "${SHM_SIZE:-16g}" --ulimit memlock=-1 --ulimit stack=67108864)
# Run as the calling user so files in RESULTS_DIR belong to them; HOME must then be writable.
cmd+=(--user "$(id -u):$(id -g)" -e HOME=/tmp)
cmd+=(-v "$(realpath "${phase1}"):/data/phase1:ro" -v "$(realpath "${phase2}"):/data/phase2:ro")
cmd+=(-v "$(realpath -m "${results}"):/workspace/bert/results")
cmd+=(-e DATA_DIR_PHASE1=/data/phase1 -e DATA_DIR_PHASE2=/data/phase2 -e RESULTS_DIR=/workspace/bert/results)
[[ -n "${vocab}" ]] && cmd+=(-v "$(realpath "${vocab}"):/data/vocab/vocab.txt:ro" -e VOCAB_FILE=/data/vocab/vocab.txt)
if [[ -d "${init}" ]]; then
  cmd+=(-v "$(realpath "${init}"):/data/init:ro" -e INIT_CHECKPOINT=/data/init)
elif [[ -n "${init}" ]]; then # one file (an NVIDIA .pt): keep its name, the trainer detects the format by it
  cmd+=(-v "$(realpath "${init}"):/data/init/$(basename "${init}"):ro" -e "INIT_CHECKPOINT=/data/init/$(basename "${init}")")
fi
read -r -a env_pairs <<<"${ENV:-}"
for pair in "${env_pairs[@]}"; do
  [[ "${pair}" == *=* ]] || die "ENV entries must look like NAME=value, got '${pair}'"
  cmd+=(-e "${pair}")
done
cmd+=("${image}" "${command_[@]}")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}" | sed 's/ $/\n/'
  exit 0
fi
mkdir -p "${results}"
exec "${cmd[@]}"
