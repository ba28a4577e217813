#!/usr/bin/env bash
# Fine-tune or score in the training image: one process per GPU (torchrun: DDP for fine-tuning, predict's shards for
# scoring), the data folder read-only, the results folder read-write, the model read-only.
#
#   docker/launch_task.sh finetune DATA_DIR RESULTS_DIR [finetune flags ...]
#   docker/launch_task.sh score    DATA_DIR RESULTS_DIR [predict flags ...]
#
# DATA_DIR is mounted read-only at /data (name its files as /data/NAME: --train_file /data/train.csv, --input_file
# /data/notes.parquet), RESULTS_DIR read-write at /results (--output_dir /results/ft, --output_file /results/scored.csv),
# INIT_CHECKPOINT (finetune: the pretrained model) or MODEL_DIR (score: the fine-tuned hf_model/) read-only at /model,
# passed as --init_checkpoint / --model_dir. The flags go to `python -m ort_training.finetune` / `python -m
# ort_training.predict` unchanged, under `torchrun --standalone --nproc_per_node NPROC` (default gpu: one process per
# GPU the container sees; 1 with GPUS=none).
#
# Environment: IMAGE (default ort-bert-pretraining:gpu), GPUS (--gpus value, default all; "none" for CPU), NPROC,
# SHM_SIZE (default 16g), INIT_CHECKPOINT / MODEL_DIR, DOCKER (engine command), DRY_RUN=1 (print the command only).
set -euo pipefail
usage() { sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "launch_task.sh: error: $*" >&2; exit 2; }
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then usage; exit 0; fi
(($# >= 3)) || { usage >&2; die "need TASK (finetune or score) DATA_DIR RESULTS_DIR"; }
task=$1 data=$2 results=$3
shift 3
case "${task}" in
  finetune) module=ort_training.finetune model=${INIT_CHECKPOINT:-} model_var=INIT_CHECKPOINT model_flag=--init_checkpoint ;;
  score) module=ort_training.predict model=${MODEL_DIR:-} model_var=MODEL_DIR model_flag=--model_dir ;;
  *) die "TASK must be finetune or score, got '${task}'" ;;
esac
[[ -d "${data}" ]] || die "DATA_DIR '${data}' is not a folder"
[[ ! -e "${results}" || -d "${results}" ]] || die "RESULTS_DIR '${results}' exists and is not a folder"
[[ -n "${model}" ]] || [[ "${task}" == finetune ]] || die "score needs MODEL_DIR (the fine-tuned hf_model/ folder)"
[[ -z "${model}" || -d "${model}" ]] || die "${model_var} '${model}' is not a folder (a Hugging Face model folder)"
for arg in "$@"; do
  case "${arg}" in --init_checkpoint|--init_checkpoint=*|--model_dir|--model_dir=*)
    [[ -z "${model}" ]] || die "${arg%%=*} is set from ${model_var}; give the model once" ;;
  esac
done
image=${IMAGE:-ort-bert-pretraining:gpu}
gpus=${GPUS:-all}
# torchrun's own "gpu": one process per GPU the container sees.
if [[ -n "${NPROC:-}" ]]; then nproc=${NPROC}; elif [[ "${gpus}" == none ]]; then nproc=1; else nproc=gpu; fi
[[ "${nproc}" == gpu || "${nproc}" =~ ^[1-9][0-9]*$ ]] || die "NPROC must be a positive number, got '${nproc}'"

read -r -a engine <<<"${DOCKER:-docker}"
cmd=("${engine[@]}" run --rm --init)
[[ -t 0 && -t 1 ]] && cmd+=(-it)
[[ "${gpus}" != "none" ]] && cmd+=(--gpus "${gpus}")
cmd+=(--shm-size "${SHM_SIZE:-16g}" --ulimit memlock=-1 --ulimit stack=67108864)
cmd+=(--user "$(id -u):$(id -g)" -e HOME=/tmp)
cmd+=(-v "$(realpath "${data}"):/data:ro" -v "$(realpath -m "${results}"):/results")
model_args=()
if [[ -n "${model}" ]]; then
  cmd+=(-v "$(realpath "${model}"):/model:ro")
  model_args=("${model_flag}" /model)
fi
cmd+=("${image}" torchrun --standalone --nproc_per_node "${nproc}" -m "${module}" "${model_args[@]}" "$@")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}" | sed 's/ $/\n/'
  exit 0
fi
mkdir -p "${results}"
exec "${cmd[@]}"
