#!/usr/bin/env bash
# Two-phase BERT pretraining (phase 1: seq 128, phase 2: seq 512) with ONNX Runtime on one GPU VM
# or a CPU box. Positional slots follow the ORT bioBERT example's run_pretraining_ort.sh so existing
# launch lines keep working; every slot can also be given by name as an environment variable
# (upper-case name, e.g. TRAIN_BATCH_SIZE=64). Precedence: positional > environment > default.
#
# Fixed against the original: phase 2 has its own accumulation steps (slot 21); the original read
# slot 11 twice, so phase 2 silently used phase 1's value. All values are checked before anything
# is created or launched.
#
#   scripts/run_pretraining_ort.sh --help
#   DRY_RUN=1 scripts/run_pretraining_ort.sh 64 6e-3 fp32 0   # print the commands only
# Every parameter variable (train_batch_size, ...) is assigned from the PARAMS table with printf -v,
# which shellcheck cannot follow:
# shellcheck disable=SC2154
set -euo pipefail

SCRIPT_NAME=$(basename "$0")
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
INVOCATION="$0${*:+ $*}"

# slot|name|default|help. Slot "-" = environment only. Slots 16 and 21 were unused in the original
# (16 stays unused; 21 is the phase-2 accumulation fix). One table drives parsing and --help.
PARAMS=(
  "1|train_batch_size|4096|phase-1 batch per GPU per optimizer step (split into accumulation steps)"
  "2|learning_rate|6e-3|phase-1 peak learning rate (LAMB)"
  "3|precision|fp16|fp16, bf16 or fp32 (fp16 needs a GPU)"
  "4|num_gpus|8|processes on this machine (torchrun); 0 = CPU; 0 or 1 runs a single process without torchrun"
  "5|warmup_proportion|0.2843|phase-1 fraction of steps spent warming up"
  "6|train_steps|7038|phase-1 optimizer steps"
  "7|save_checkpoint_steps|200|steps between checkpoints (both phases)"
  "8|resume_training|false|true: phase 1 resumes from the newest checkpoint in the results"
  "9|create_logfile|true|true: tee each phase into RESULTS_DIR/<job_name>.<tag>.<date>.log"
  "10|accumulate_gradients|true|false: ignore the accumulation steps (use 1)"
  "11|gradient_accumulation_steps|32|phase-1 micro-batches per optimizer step"
  "12|seed|42|random seed"
  "13|job_name|biobert_pretraining|prefix of the log file names"
  "14|allreduce_post_accumulation|true|all-reduce once per optimizer step, not per micro-batch"
  "15|allreduce_post_accumulation_fp16|true|do that all-reduce in fp16"
  "17|train_batch_size_phase2|4096|phase-2 batch per GPU per optimizer step"
  "18|learning_rate_phase2|4e-3|phase-2 peak learning rate"
  "19|warmup_proportion_phase2|0.128|phase-2 warm-up fraction"
  "20|train_steps_phase2|1563|phase-2 optimizer steps"
  "21|gradient_accumulation_steps_phase2|256|phase-2 micro-batches per optimizer step"
  "22|DATA_DIR_PHASE1|/data/phase1|folder of phase-1 HDF5 shards (seq 128)"
  "23|DATA_DIR_PHASE2|/data/phase2|folder of phase-2 HDF5 shards (seq 512)"
  "24|CODEDIR|${REPO_ROOT}|project checkout (put on PYTHONPATH)"
  "25|init_checkpoint|None|checkpoint to start phase 1 from (None = random init)"
  "26|gpu_memory_limit_gb|32|GPU memory per device in GB; exported as BERT_ORT_GPU_MEMORY_LIMIT_GB (informational)"
  "27|deepspeed_zero_stage|false|false, true (= stage 1), 0, 1, 2, or a DeepSpeed JSON config file"
  "-|RESULTS_DIR|<CODEDIR>/results|logs here; each phase's trainer output (checkpoints/, hf_model/) in phase1/, phase2/"
  "-|BERT_CONFIG||BERT config JSON or a shipped name: tiny, base, large (empty = the trainer's default)"
  "-|VOCAB_FILE||WordPiece vocab for the exported tokenizer (empty = the trainer's default)"
  "-|BACKEND|ort|ort, eager or compile"
  "-|PYTHON|python|Python interpreter that has the project's dependencies"
  "-|EXTRA_ARGS||extra trainer flags added to both phases (word-split)"
  "-|DRY_RUN|0|1: validate, print the commands of both phases, run nothing"
)

usage() {
  cat <<EOF
Usage: ${SCRIPT_NAME} [train_batch_size [learning_rate [... [deepspeed_zero_stage]]]]
       ${SCRIPT_NAME} --help

Runs phase 1, then phase 2 only if phase 1 succeeded. A preempted phase (SIGTERM: the trainer
checkpoints and exits 143) stops the script with status 143; rerun with RESUME_TRAINING=true to
continue it. Positional slots follow the ORT bioBERT
example; empty or missing slots fall back to the environment variable, then to the default.

slot  environment variable                default             meaning
EOF
  local row slot name default help
  for row in "${PARAMS[@]}"; do
    IFS='|' read -r slot name default help <<<"${row}"
    printf '%-5s %-35s %-19s %s\n' "${slot}" "${name^^}" "${default:-\"\"}" "${help}"
  done
  cat <<EOF
16    (unused, as in the original)

Example (CPU, tiny run):
  DRY_RUN=1 DATA_DIR_PHASE1=out/phase1 DATA_DIR_PHASE2=out/phase2 BACKEND=eager \\
    ${SCRIPT_NAME} 16 1e-3 fp32 0 0.1 4 2 false true true 2 42 demo true false "" 8 1e-3 0.1 2 4
EOF
}

die() {
  echo "${SCRIPT_NAME}: error: $*" >&2
  echo "Run '${SCRIPT_NAME} --help' for the parameters." >&2
  exit 2
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  usage
  exit 0
fi
if (($# > 27)); then
  die "at most 27 positional parameters, got $#"
fi

# ---- resolve every parameter: positional slot > environment (upper-case name) > default
ARGS=("$@")
declare -A ORIGIN=()
for row in "${PARAMS[@]}"; do
  IFS='|' read -r slot name default _ <<<"${row}"
  env_name=${name^^}
  value=""
  if [[ "${slot}" != "-" && -n "${ARGS[slot - 1]:-}" ]]; then
    value=${ARGS[slot - 1]}
    ORIGIN[${name}]="slot ${slot}"
  elif [[ -n "${!env_name:-}" ]]; then
    value=${!env_name}
    ORIGIN[${name}]="from \$${env_name}"
  else
    value=${default}
    ORIGIN[${name}]="default"
  fi
  printf -v "${name}" '%s' "${value}"
done
[[ "${RESULTS_DIR}" == "<CODEDIR>/results" ]] && RESULTS_DIR="${CODEDIR}/results"

# ---- validate everything before any directory is created or any process started
where() { echo "$1 (${ORIGIN[$1]})"; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_float() { [[ "$1" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]]; }

for name in train_batch_size train_steps save_checkpoint_steps gradient_accumulation_steps \
  train_batch_size_phase2 train_steps_phase2 gradient_accumulation_steps_phase2; do
  if ! is_uint "${!name}" || ((10#${!name} == 0)); then
    die "$(where "${name}") must be a positive integer, got '${!name}'"
  fi
done
is_uint "${num_gpus}" || die "$(where num_gpus) must be an integer >= 0, got '${num_gpus}'"
is_uint "${seed}" || die "$(where seed) must be an integer >= 0, got '${seed}'"
is_float "${gpu_memory_limit_gb}" || die "$(where gpu_memory_limit_gb) must be a number, got '${gpu_memory_limit_gb}'"
for name in learning_rate learning_rate_phase2; do
  is_float "${!name}" || die "$(where "${name}") must be a positive number like 6e-3, got '${!name}'"
done
for name in warmup_proportion warmup_proportion_phase2; do
  # < 1 like the trainer's check: a whole-run warm-up never reaches the peak learning rate.
  if ! is_float "${!name}" || ! awk -v v="${!name}" 'BEGIN { exit !(v >= 0 && v < 1) }'; then
    die "$(where "${name}") must be a number in [0, 1), got '${!name}'"
  fi
done
for name in resume_training create_logfile accumulate_gradients allreduce_post_accumulation \
  allreduce_post_accumulation_fp16; do
  [[ "${!name}" == "true" || "${!name}" == "false" ]] || die "$(where "${name}") must be true or false, got '${!name}'"
done
case "${precision}" in
  fp16 | bf16 | fp32) ;;
  *) die "$(where precision) must be fp16, bf16 or fp32, got '${precision}'" ;;
esac
if [[ "${precision}" == "fp16" ]] && ((num_gpus == 0)); then
  die "$(where precision)=fp16 needs a GPU but num_gpus=0; use fp32 or bf16 on CPU"
fi
case "${BACKEND}" in
  ort | eager | compile) ;;
  *) die "$(where BACKEND) must be ort, eager or compile, got '${BACKEND}'" ;;
esac
[[ "${job_name}" =~ ^[A-Za-z0-9._-]+$ ]] || die "$(where job_name) may hold only letters, digits, '.', '_' and '-' (it names the log files), got '${job_name}'"

if [[ "${accumulate_gradients}" == "false" ]]; then
  gradient_accumulation_steps=1
  gradient_accumulation_steps_phase2=1
fi
if ((train_batch_size % gradient_accumulation_steps != 0)); then
  die "$(where train_batch_size)=${train_batch_size} is not divisible by gradient_accumulation_steps=${gradient_accumulation_steps} (slot 11); pick values whose quotient is the micro-batch"
fi
if ((train_batch_size_phase2 % gradient_accumulation_steps_phase2 != 0)); then
  die "$(where train_batch_size_phase2)=${train_batch_size_phase2} is not divisible by gradient_accumulation_steps_phase2=${gradient_accumulation_steps_phase2} (slot 21); pick values whose quotient is the micro-batch"
fi

# The trainer searches the folder recursively for *training*.hdf5 (NVIDIA's layout nests them).
has_hdf5() { [[ -n "$(find "$1" -name '*training*.hdf5' -print -quit 2>/dev/null)" ]]; }
for name in DATA_DIR_PHASE1 DATA_DIR_PHASE2; do
  [[ -d "${!name}" ]] || die "$(where "${name}")='${!name}' is not a directory; create the HDF5 shards with scripts/create_datasets_from_start.sh or pass the folder that holds them"
  has_hdf5 "${!name}" || die "$(where "${name}")='${!name}' holds no *training*.hdf5 file (searched recursively); pass the folder that holds the shards"
done
[[ -d "${CODEDIR}/ort_training" ]] || die "$(where CODEDIR)='${CODEDIR}' does not contain ort_training/; pass the project checkout"
if [[ "${init_checkpoint}" != "None" && ! -e "${init_checkpoint}" ]]; then
  die "$(where init_checkpoint)='${init_checkpoint}' does not exist; pass a checkpoint path or None"
fi
if [[ -n "${VOCAB_FILE}" && ! -f "${VOCAB_FILE}" ]]; then
  die "$(where VOCAB_FILE)='${VOCAB_FILE}' is not a file"
fi
if [[ -n "${BERT_CONFIG}" && ! -f "${BERT_CONFIG}" && ! -f "${CODEDIR}/ort_training/configs/bert_${BERT_CONFIG}_config.json" ]]; then
  die "$(where BERT_CONFIG)='${BERT_CONFIG}' is neither a file nor a shipped config (tiny, base, large)"
fi
if [[ -e "${RESULTS_DIR}" && ! -d "${RESULTS_DIR}" ]]; then
  die "$(where RESULTS_DIR)='${RESULTS_DIR}' exists and is not a directory"
fi

case "${deepspeed_zero_stage}" in
  false | 0 | "") deepspeed_zero_stage="" ;;
  true) deepspeed_zero_stage=1 ;;
  1 | 2)
    # The trainer refuses it too (rank 0 alone saves the partitioned optimizer state); fail before any work.
    ((10#${num_gpus} <= 1)) || die "$(where deepspeed_zero_stage)=${deepspeed_zero_stage} with num_gpus=${num_gpus} is not supported: ZeRO 1/2 checkpoints hold only rank 0's optimizer partition; use false (DDP) for several GPUs"
    ;;
  *) [[ -f "${deepspeed_zero_stage}" ]] || die "$(where deepspeed_zero_stage) must be false, true, 0, 1, 2 or an existing JSON file (the trainer supports ZeRO 1 and 2), got '${deepspeed_zero_stage}'" ;;
esac
read -r -a EXTRA <<<"${EXTRA_ARGS}"

# The trainer runs from CODEDIR (so `python -m` imports that checkout, not one in the caller's
# directory); make every path absolute first so relative arguments keep their meaning.
abspath() { realpath -m -- "$1"; }
CODEDIR=$(abspath "${CODEDIR}")
DATA_DIR_PHASE1=$(abspath "${DATA_DIR_PHASE1}")
DATA_DIR_PHASE2=$(abspath "${DATA_DIR_PHASE2}")
RESULTS_DIR=$(abspath "${RESULTS_DIR}")
[[ "${init_checkpoint}" != "None" ]] && init_checkpoint=$(abspath "${init_checkpoint}")
[[ -n "${VOCAB_FILE}" ]] && VOCAB_FILE=$(abspath "${VOCAB_FILE}")
[[ -f "${BERT_CONFIG}" ]] && BERT_CONFIG=$(abspath "${BERT_CONFIG}")
DEEPSPEED_ARGS=()
DEEPSPEED_CONFIG="" # a stage number: this file is written at launch (a dry run or bad value leaves none)
if [[ "${deepspeed_zero_stage}" =~ ^[12]$ ]]; then
  DEEPSPEED_CONFIG="${RESULTS_DIR}/deepspeed_zero${deepspeed_zero_stage}.json"
  DEEPSPEED_ARGS=(--deepspeed "${DEEPSPEED_CONFIG}")
elif [[ -n "${deepspeed_zero_stage}" ]]; then
  DEEPSPEED_ARGS=(--deepspeed "$(abspath "${deepspeed_zero_stage}")")
fi

# ---- build the two commands
if ((num_gpus > 1)); then
  # torchrun as a module of $PYTHON, so the launcher and the workers use the same interpreter.
  LAUNCH=("${PYTHON}" -m torch.distributed.run --standalone --nnodes=1 "--nproc_per_node=${num_gpus}" -m ort_training.run_pretraining)
else
  LAUNCH=("${PYTHON}" -m ort_training.run_pretraining)
fi
PREC=()
[[ "${precision}" == "fp16" ]] && PREC=(--fp16)
[[ "${precision}" == "bf16" ]] && PREC=(--bf16)
ALLREDUCE=()
[[ "${allreduce_post_accumulation}" == "true" ]] && ALLREDUCE+=(--allreduce_post_accumulation)
[[ "${allreduce_post_accumulation_fp16}" == "true" ]] && ALLREDUCE+=(--allreduce_post_accumulation_fp16)
COMMON=(--seed "${seed}" --num_steps_per_checkpoint "${save_checkpoint_steps}"
  --backend "${BACKEND}" "${PREC[@]}" "${ALLREDUCE[@]}" "${DEEPSPEED_ARGS[@]}")
[[ -n "${BERT_CONFIG}" ]] && COMMON+=(--config_file "${BERT_CONFIG}")
[[ -n "${VOCAB_FILE}" ]] && COMMON+=(--vocab_file "${VOCAB_FILE}")
COMMON+=("${EXTRA[@]}")

PHASE1=("${LAUNCH[@]}" --input_dir "${DATA_DIR_PHASE1}" --output_dir "${RESULTS_DIR}/phase1" --train_batch_size "${train_batch_size}"
  --learning_rate "${learning_rate}" --warmup_proportion "${warmup_proportion}" --max_steps "${train_steps}"
  --gradient_accumulation_steps "${gradient_accumulation_steps}" "${COMMON[@]}")
[[ "${resume_training}" == "true" ]] && PHASE1+=(--resume_from_checkpoint)
[[ "${init_checkpoint}" != "None" ]] && PHASE1+=(--init_checkpoint "${init_checkpoint}")

# Phase 2 has its own output dir (so phase 1's model, metrics and summary stay): it takes the weights
# of phase 1's newest checkpoint and numbers its steps after phase 1's; on a rerun it resumes from
# its own newest checkpoint instead. Azure ML's pipeline (azureml/submit.py) does the same.
PHASE2=("${LAUNCH[@]}" --input_dir "${DATA_DIR_PHASE2}" --output_dir "${RESULTS_DIR}/phase2" --train_batch_size "${train_batch_size_phase2}"
  --learning_rate "${learning_rate_phase2}" --warmup_proportion "${warmup_proportion_phase2}"
  --max_steps "${train_steps_phase2}" --gradient_accumulation_steps "${gradient_accumulation_steps_phase2}"
  "${COMMON[@]}" --phase2 --resume_from_checkpoint --init_checkpoint "${RESULTS_DIR}/phase1" --phase1_end_step "${train_steps}")

log_name() { # phase, batch: the original's name, <job>.pyt_bert_pretraining_phaseN_<prec>_gbs<B*gpus>.<date>.log
  local gbs=$(($2 * (num_gpus > 0 ? num_gpus : 1)))
  echo "${RESULTS_DIR}/${job_name}.pyt_bert_pretraining_phase$1_${precision}_gbs${gbs}.$(date +'%y%m%d%H%M%S').log"
}

quote() { printf '%q ' "$@" | sed 's/ $//'; }

export PYTHONPATH="${CODEDIR}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1
# The original passed --gpu_memory_limit_gb to its trainer; ours has no such flag (ORTModule sizes
# its arena itself), so the value is only exported for wrappers and logs.
export BERT_ORT_GPU_MEMORY_LIMIT_GB="${gpu_memory_limit_gb}"

if [[ "${DRY_RUN}" == "1" ]]; then
  echo "# phase 1"
  quote "${PHASE1[@]}"
  echo
  echo "# phase 2 (runs only if phase 1 succeeds)"
  quote "${PHASE2[@]}"
  echo
  exit 0
fi

run_phase() { # phase number, batch, command...
  local phase=$1 batch=$2
  shift 2
  local logfile=""
  [[ "${create_logfile}" == "true" ]] && logfile=$(log_name "${phase}" "${batch}")
  echo "phase ${phase}: $(quote "$@")"
  if [[ -z "${logfile}" ]]; then
    "$@"
  else
    echo "Logs written to ${logfile}"
    {
      echo "# invoked as: ${INVOCATION}"
      echo "# command: $(quote "$@")"
    } >"${logfile}"
    "$@" 2>&1 | tee -a "${logfile}"
  fi
}

mkdir -p "${RESULTS_DIR}"
cd "${CODEDIR}"
if [[ -n "${DEEPSPEED_CONFIG}" ]]; then
  # Only the stage: the trainer fills batch, accumulation and precision from its own flags.
  tmp=$(mktemp "${DEEPSPEED_CONFIG}.XXXXXX")
  printf '{"zero_optimization": {"stage": %d}}\n' "${deepspeed_zero_stage}" >"${tmp}"
  mv "${tmp}" "${DEEPSPEED_CONFIG}"
fi

# pipefail makes a failed phase 1 stop the script even though its output goes through tee.
# A preempted trainer (SIGTERM) checkpoints and exits 143 (128 + SIGTERM): stop with that status so
# phase 2 never starts on half-trained weights, and say how to continue. The trainer also leaves
# OUTPUT_DIR/preempted.json, which counts when a launcher (torchrun) turns 143 into another status.
PREEMPTED=143
for phase in 1 2; do
  if [[ "${phase}" == 1 ]]; then cmd=("${PHASE1[@]}") batch=${train_batch_size}; else cmd=("${PHASE2[@]}") batch=${train_batch_size_phase2}; fi
  rc=0
  run_phase "${phase}" "${batch}" "${cmd[@]}" || rc=$?
  # Under torchrun the launcher's status is its own; the trainer's marker file says it was preempted.
  if ((rc != 0)) && [[ -f "${RESULTS_DIR}/phase${phase}/preempted.json" ]]; then rc=${PREEMPTED}; fi
  if ((rc == PREEMPTED)); then
    echo "${SCRIPT_NAME}: phase ${phase} was preempted (SIGTERM) after writing a checkpoint; rerun the same command" \
      "with RESUME_TRAINING=true (slot 8) to continue it" >&2
    exit "${PREEMPTED}"
  elif ((rc != 0)); then
    exit "${rc}"
  fi
  echo "finished phase ${phase}"
done
