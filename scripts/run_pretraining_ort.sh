#!/usr/bin/env bash
# Two-phase BERT pretraining with the ORT bioBERT example's 27 positional slots.
#
# This script only maps its slots (or their environment variables) onto overrides of a recipe and
# hands them to `python -m ort_training.pretrain`, which owns everything else: the recipe's numbers
# (ort_training/recipes/$RECIPE.yaml, default bert_large_biobert), every check, phase-2 wiring, the
# preemption contract (exit 143; rerun to continue) and the dry run. An empty or missing slot takes
# its environment variable (upper-case name, e.g. TRAIN_BATCH_SIZE=64), then the recipe's value.
#
#   scripts/run_pretraining_ort.sh --help
#   DRY_RUN=1 scripts/run_pretraining_ort.sh 64 1e-3 fp32 0   # validate and print the two commands only
#
# Batch: the recipe states each phase's global batch (sequences per optimizer step over all GPUs); the
# runner derives the per-GPU batch and accumulation for slot 4's GPU count (or refuses, showing the
# arithmetic). Slot 1 / 17 set the per-GPU batch instead (the global batch then follows, with a warning
# where it differs from the recipe's).
#
# Fixed against the original: phase 2 has its own accumulation steps (slot 21; the original read
# slot 11 twice), numbers such as 08 are decimal, and a machine with fewer GPUs than slot 4 asks for
# stops with one message instead of one traceback per worker.
set -euo pipefail

SCRIPT_NAME=$(basename "$0")
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# slot|name|override it maps to|meaning. Slot "-" = environment only.
SLOTS=(
  "1|train_batch_size|--phase1.train_batch_size|phase-1 sequences per GPU per optimizer step (default: from the global batch)"
  "2|learning_rate|--phase1.learning_rate|phase-1 peak LAMB learning rate"
  "3|precision|--precision|fp16, bf16 or fp32"
  "4|num_gpus|(launch)|GPUs on this machine, one process each; 0 = CPU, one process"
  "5|warmup_proportion|--phase1.warmup_proportion|phase-1 fraction of steps spent warming up"
  "6|train_steps|--phase1.max_steps|phase-1 optimizer steps"
  "7|save_checkpoint_steps|--num_steps_per_checkpoint|steps between checkpoints (both phases)"
  "8|resume_training|--resume/--no-resume|true: continue from the newest checkpoints (false: refuse an output dir that has some)"
  "9|create_logfile|--log_to_file/--no-log_to_file|true: also write RESULTS_DIR/phaseN/train.log"
  "10|accumulate_gradients|(accumulation)|false: no accumulation (1 micro-batch per step) in both phases"
  "11|gradient_accumulation_steps|--phase1.gradient_accumulation_steps|phase-1 micro-batches per optimizer step"
  "12|seed|--seed|random seed"
  "13|job_name|--rdzv_id|name of the run (the rendezvous id under torchrun)"
  "14|allreduce_post_accumulation|--allreduce_post_accumulation|accepted for NVIDIA compatibility"
  "15|allreduce_post_accumulation_fp16|--allreduce_post_accumulation_fp16|accepted for NVIDIA compatibility"
  "16|unused|(unused)|unused, as in the original"
  "17|train_batch_size_phase2|--phase2.train_batch_size|phase-2 sequences per GPU per optimizer step (default: from the global batch)"
  "18|learning_rate_phase2|--phase2.learning_rate|phase-2 peak learning rate"
  "19|warmup_proportion_phase2|--phase2.warmup_proportion|phase-2 warm-up fraction"
  "20|train_steps_phase2|--phase2.max_steps|phase-2 optimizer steps"
  "21|gradient_accumulation_steps_phase2|--phase2.gradient_accumulation_steps|phase-2 micro-batches per optimizer step"
  "22|DATA_DIR_PHASE1|--phase1.input_dir|folder of phase-1 HDF5 shards (seq 128)"
  "23|DATA_DIR_PHASE2|--phase2.input_dir|folder of phase-2 HDF5 shards (seq 512)"
  "24|CODEDIR|(PYTHONPATH)|project checkout"
  "25|init_checkpoint|--phase1.init_checkpoint|weights to start from: HF folder, NVIDIA .pt or a checkpoint; None = random"
  "26|gpu_memory_limit_gb|(environment)|exported as BERT_ORT_GPU_MEMORY_LIMIT_GB (informational)"
  "27|deepspeed_zero_stage|--deepspeed|false, true (= 1), 0, 1, 2, or a DeepSpeed JSON file"
  "-|GLOBAL_BATCH_SIZE|--phase1.global_batch_size|phase-1 sequences per optimizer step, all GPUs (default: the recipe's)"
  "-|GLOBAL_BATCH_SIZE_PHASE2|--phase2.global_batch_size|phase-2 sequences per optimizer step, all GPUs (default: the recipe's)"
  "-|RECIPE|--recipe|recipe name or YAML path (default bert_large_biobert)"
  "-|RESULTS_DIR|--output_dir|phase1/ and phase2/ go here (default CODEDIR/results)"
  "-|BERT_CONFIG|--config_file|BERT config JSON or tiny, base, large"
  "-|VOCAB_FILE|--vocab_file|WordPiece vocab for the exported tokenizer"
  "-|BACKEND|--backend|ort, eager or compile"
  "-|PYTHON|--python|interpreter with the project's dependencies (default python)"
  "-|EXTRA_ARGS|(as given)|more runner flags, word-split (e.g. --phase2.objective mlm)"
  "-|DRY_RUN|--dry-run|1: validate both phases and print their commands; run nothing"
)

usage() {
  cat <<EOF
Usage: ${SCRIPT_NAME} [train_batch_size [learning_rate [... [deepspeed_zero_stage]]]]

Maps the ORT bioBERT example's positional slots onto \`python -m ort_training.pretrain\` overrides
(see its --help). Values not given come from the recipe.

slot  environment variable                maps to
EOF
  local row slot name target help
  for row in "${SLOTS[@]}"; do
    IFS='|' read -r slot name target help <<<"${row}"
    printf '%-5s %-35s %-40s %s\n' "${slot}" "${name^^}" "${target}" "${help}"
  done
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  usage
  exit 0
fi
if (($# > 27)); then
  echo "${SCRIPT_NAME}: error: at most 27 positional parameters, got $# (see --help)" >&2
  exit 2
fi

ARGS=("$@")
value_of() { # slot, name: positional slot > environment variable > "" (the recipe's value)
  local slot=$1 env_name=${2^^}
  if [[ "${slot}" != "-" && -n "${ARGS[slot - 1]:-}" ]]; then
    printf '%s' "${ARGS[slot - 1]}"
  else
    printf '%s' "${!env_name:-}"
  fi
}

CODEDIR=$(value_of 24 CODEDIR)
CODEDIR=${CODEDIR:-${REPO_ROOT}}
PYTHON=$(value_of - PYTHON)
PYTHON=${PYTHON:-python}
RECIPE=$(value_of - RECIPE)
RESULTS_DIR=$(value_of - RESULTS_DIR)
FLAGS=(--recipe "${RECIPE:-bert_large_biobert}" --output_dir "${RESULTS_DIR:-${CODEDIR}/results}" --python "${PYTHON}")

for row in "${SLOTS[@]}"; do
  IFS='|' read -r slot name target _ <<<"${row}"
  value=$(value_of "${slot}" "${name}")
  [[ -n "${value}" && "${target}" == --* ]] || continue
  case "${name}" in
    RECIPE | RESULTS_DIR | PYTHON) ;; # handled above
    resume_training | create_logfile)
      case "${value}" in
        true) FLAGS+=("${target%%/*}") ;;
        false) FLAGS+=("${target##*/}") ;;
        *) FLAGS+=("${target%%/*}=${value}") ;; # the runner refuses it, naming the flag
      esac
      ;;
    allreduce_post_accumulation | allreduce_post_accumulation_fp16)
      if [[ "${value}" == "false" ]]; then FLAGS+=("--no-${target#--}"); else FLAGS+=("${target}"); fi
      ;;
    init_checkpoint) [[ "${value}" == "None" ]] || FLAGS+=("${target}" "${value}") ;;
    deepspeed_zero_stage)
      case "${value}" in
        false | 0) ;;
        true) FLAGS+=(--deepspeed zero1) ;;
        1 | 2) FLAGS+=(--deepspeed "zero${value}") ;;
        *) FLAGS+=(--deepspeed "${value}") ;;
      esac
      ;;
    DRY_RUN) if [[ "${value}" == "1" ]]; then FLAGS+=(--dry-run); fi ;;
    *) FLAGS+=("${target}" "${value}") ;;
  esac
done

num_gpus=$(value_of 4 num_gpus)
if [[ -n "${num_gpus}" ]]; then
  if [[ "${num_gpus}" =~ ^[0-9]+$ ]] && ((10#${num_gpus} == 0)); then
    FLAGS+=(--device cpu --nproc_per_node 1)
  else
    FLAGS+=(--device cuda --nproc_per_node "${num_gpus}") # the runner checks the value and the GPUs present
  fi
fi
if [[ "$(value_of 10 accumulate_gradients)" == "false" ]]; then
  FLAGS+=(--phase1.gradient_accumulation_steps 1 --phase2.gradient_accumulation_steps 1)
fi
read -r -a EXTRA <<<"$(value_of - EXTRA_ARGS)"
FLAGS+=("${EXTRA[@]}")

gpu_memory_limit_gb=$(value_of 26 gpu_memory_limit_gb)
export BERT_ORT_GPU_MEMORY_LIMIT_GB="${gpu_memory_limit_gb:-32}"
export PYTHONPATH="${CODEDIR}${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON}" -m ort_training.pretrain "${FLAGS[@]}"
