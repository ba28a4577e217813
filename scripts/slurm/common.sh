#!/usr/bin/env bash
# Shared by pretrain_1node.sbatch and pretrain_multinode.sbatch (sourced; not a job script itself).
#
# Settings (environment variables; sbatch passes the submitting shell's environment by default):
#   RECIPE          recipe name or YAML (default bert_large_biobert)
#   OUTPUT_DIR      results folder, on a filesystem every node sees (default $CODEDIR/results/$SLURM_JOB_NAME)
#   PHASE1_DIR      phase-1 HDF5 folder (seq 128)          PHASE2_DIR  phase-2 HDF5 folder (seq 512)
#   VOCAB_FILE      vocab.txt for the exported tokenizer (optional)
#   GPUS_PER_NODE   processes per node, one per GPU (default: the GPUs Slurm gave the job, else 1)
#   DEVICE          cuda | cpu | auto (default auto: cuda where torch sees a GPU)
#   CODEDIR         the checkout (default: the folder sbatch was called from)
#   PYTHON          interpreter with the project's dependencies (default $CODEDIR/.venv/bin/python, else python3)
#   EXTRA_ARGS      more flags for `python -m ort_training.pretrain` (e.g. "--phase1.max_steps 100")
#   CONTAINER_IMAGE an Apptainer/Singularity image (.sif) to run in: `apptainer exec --nv IMAGE ...` (container_wrap)
#
# Batch: the runner splits the recipe's global batch (sequences per optimizer step) over GPUS_PER_NODE x
# nodes, so 4 nodes train with the batch the learning rate was tuned for, not 4x it; a GPU count it does
# not divide is refused with the arithmetic. Check first: python -m ort_training.recipe batch --recipe R --gpus 8 --nodes 4
#
# Preemption contract: Slurm signals the batch shell (--signal=B:TERM@SECONDS before the time limit,
# or SIGTERM on preemption/scancel --signal=TERM --batch); the shell forwards SIGTERM to the runner,
# every rank checkpoints and the runner exits 143; the job then requeues itself (`scontrol requeue`,
# allowed by --requeue) and the rerun resumes each phase from its newest checkpoint (a finished phase
# is skipped). Any other non-zero status fails the job.

slurm_log() { echo "[slurm $(date '+%F %T') job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}] $*" >&2; }

slurm_settings() {
  CODEDIR=${CODEDIR:-${SLURM_SUBMIT_DIR:-$PWD}}
  [[ -d "${CODEDIR}/ort_training" ]] || { slurm_log "error: CODEDIR=${CODEDIR} is not the checkout (no ort_training/); submit from it or set CODEDIR"; exit 2; }
  if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "${CODEDIR}/.venv/bin/python" ]]; then PYTHON=${CODEDIR}/.venv/bin/python; else PYTHON=python3; fi
  fi
  RECIPE=${RECIPE:-bert_large_biobert}
  OUTPUT_DIR=${OUTPUT_DIR:-${CODEDIR}/results/${SLURM_JOB_NAME:-bert-pretrain}}
  : "${PHASE1_DIR:?set PHASE1_DIR to the phase-1 (seq 128) HDF5 folder}"
  : "${PHASE2_DIR:?set PHASE2_DIR to the phase-2 (seq 512) HDF5 folder}"
  if [[ -z "${GPUS_PER_NODE:-}" ]]; then
    # SLURM_GPUS_ON_NODE is set by --gpus-per-node / --gres=gpu:N; a CPU job runs one process per node.
    GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE##*:}}
    GPUS_PER_NODE=${GPUS_PER_NODE:-1}
  fi
  [[ "${GPUS_PER_NODE}" =~ ^[1-9][0-9]*$ ]] || { slurm_log "error: GPUS_PER_NODE must be a positive integer, got '${GPUS_PER_NODE}'"; exit 2; }
  export PYTHONPATH="${CODEDIR}${PYTHONPATH:+:${PYTHONPATH}}" PYTHONUNBUFFERED=1
  export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
  # One CPU thread pool per rank: the ranks of a node share its cores.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_ON_NODE:-$(nproc)} / GPUS_PER_NODE > 0 ? ${SLURM_CPUS_ON_NODE:-$(nproc)} / GPUS_PER_NODE : 1 ))}
}

pretrain_command() { # the runner's command line, without the per-node launch flags
  local -a extra=()
  read -r -a extra <<<"${EXTRA_ARGS:-}"
  PRETRAIN_CMD=("${PYTHON}" -m ort_training.pretrain --recipe "${RECIPE}" --output_dir "${OUTPUT_DIR}"
    --phase1.input_dir "${PHASE1_DIR}" --phase2.input_dir "${PHASE2_DIR}" --nproc_per_node "${GPUS_PER_NODE}")
  [[ -n "${VOCAB_FILE:-}" ]] && PRETRAIN_CMD+=(--vocab_file "${VOCAB_FILE}")
  [[ -n "${DEVICE:-}" ]] && PRETRAIN_CMD+=(--device "${DEVICE}")
  PRETRAIN_CMD+=("${extra[@]}")
}

run_with_requeue() { # COMMAND...: run it, forward SIGTERM, requeue the job on the runner's exit 143
  local child rc
  slurm_log "nodes ${SLURM_JOB_NODELIST:-$(hostname)}; running: $*"
  "$@" &
  child=$!
  trap 'slurm_log "SIGTERM: forwarding to the runner (checkpoint, then exit 143)"; kill -TERM "${child}" 2>/dev/null' TERM
  while true; do
    rc=0
    wait "${child}" || rc=$?
    kill -0 "${child}" 2>/dev/null || break # wait also returns when the trap ran; go on waiting for the child
  done
  trap - TERM
  if ((rc == 143)); then
    slurm_log "preempted after a checkpoint: requeueing job ${SLURM_JOB_ID} (a rerun resumes it)"
    scontrol requeue "${SLURM_JOB_ID}" || slurm_log "scontrol requeue failed (already being requeued by Slurm?)"
    exit 143
  fi
  if ((rc != 0)); then slurm_log "failed with exit status ${rc}; see ${OUTPUT_DIR}/phase*/train.log"; exit "${rc}"; fi
  slurm_log "both phases done: ${OUTPUT_DIR}/phase2/hf_model"
}

container_wrap() { # CONTAINER_IMAGE=path.sif: run PRETRAIN_CMD inside it, `apptainer exec --nv IMAGE python -m ...`
  # The image brings the environment (its python: CONTAINER_PYTHON, default `python` on the image's PATH);
  # the checkout's code runs (CODEDIR on PYTHONPATH, as without a container). CODEDIR, the data, vocab
  # and output folders are bound at their own paths; CONTAINER_BIND adds more (apptainer's --bind syntax).
  # CONTAINER_RUNTIME: apptainer (default, else singularity when only that is installed).
  [[ -n "${CONTAINER_IMAGE:-}" ]] || return 0
  [[ -e "${CONTAINER_IMAGE}" ]] || { slurm_log "error: CONTAINER_IMAGE=${CONTAINER_IMAGE} does not exist (apptainer build: docs/clusters.md)"; exit 2; }
  local runtime=${CONTAINER_RUNTIME:-apptainer}
  if [[ -z "${CONTAINER_RUNTIME:-}" ]] && ! command -v apptainer >/dev/null 2>&1 && command -v singularity >/dev/null 2>&1; then runtime=singularity; fi
  command -v "${runtime}" >/dev/null 2>&1 || { slurm_log "error: CONTAINER_IMAGE is set but '${runtime}' is not on PATH (module load apptainer?)"; exit 2; }
  mkdir -p "${OUTPUT_DIR}"
  local -a wrap=("${runtime}" exec) binds=("${CODEDIR}" "${PHASE1_DIR}" "${PHASE2_DIR}" "${OUTPUT_DIR}")
  [[ "${DEVICE:-auto}" == cpu ]] || wrap+=(--nv) # the host's NVIDIA driver libraries and GPUs
  [[ -n "${VOCAB_FILE:-}" ]] && binds+=("$(dirname "${VOCAB_FILE}")")
  local path seen=" "
  for path in "${binds[@]}"; do
    path=$(realpath -s -m "${path}")
    [[ "${seen}" == *" ${path} "* ]] || wrap+=(--bind "${path}")
    seen+="${path} "
  done
  [[ -n "${CONTAINER_BIND:-}" ]] && wrap+=(--bind "${CONTAINER_BIND}")
  # --env: the image's own PYTHONPATH would otherwise win over the host's.
  wrap+=(--env "PYTHONPATH=${PYTHONPATH:-}" "${CONTAINER_IMAGE}" "${CONTAINER_PYTHON:-python}")
  PRETRAIN_CMD=("${wrap[@]}" "${PRETRAIN_CMD[@]:1}")
}
