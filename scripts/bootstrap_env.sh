#!/usr/bin/env bash
# Create (once) the pinned ONNX Runtime training environment and print where it is.
#
# Used by `make test`, `make demo`, CI and both Dockerfiles, so there is one install recipe.
# The venv lives outside the checkout, keyed by a hash of constraints.txt, this script and the
# ORT flavour: a fresh clone on the same machine reuses it in seconds, and a change of pins
# builds a new one beside the old. `.venv` in the checkout is a symlink to it.
#
# Environment (all optional):
#   BERT_ORT_DEVICE   cpu | cuda    ORT/torch flavour (default: cuda if nvidia-smi sees a GPU, else cpu)
#   BERT_ORT_VENV     path          exact venv location (default: $BERT_ORT_VENV_ROOT/venv-<hash>)
#   BERT_ORT_VENV_ROOT path         cache folder for keyed venvs (default: ~/.cache/ort-bert-pretraining)
#   BERT_ORT_EXTRAS   a,b,c         pyproject extras to add (default: dev,azureml,deepspeed)
#   BERT_ORT_SKIP_CONFIGURE=1       skip building ORTModule's C++ extensions (not recommended)
#   PYTHON            interpreter   Python 3.10 or 3.11 (default: python3.11, else python3)
#   TORCH_CUDA_INDEX  url           index holding torch's CUDA 11.8 builds (for BERT_ORT_DEVICE=cuda)
#
# Usage: scripts/bootstrap_env.sh [--print-path]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lock="$repo/constraints.txt"
print_only=0
case "${1:-}" in
  --print-path) print_only=1 ;;
  -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "bootstrap_env.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

log() { echo "[bootstrap] $*" >&2; }
die() { echo "[bootstrap] ERROR: $*" >&2; exit 1; }

[[ -f "$lock" ]] || die "lock file $lock is missing; it pins every package of the environment"

device=${BERT_ORT_DEVICE:-}
if [[ -z "$device" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then device=cuda; else device=cpu; fi
fi
case "$device" in cpu|cuda) ;; *) die "BERT_ORT_DEVICE must be 'cpu' or 'cuda', got '$device'" ;; esac
extras=${BERT_ORT_EXTRAS-dev,azureml,deepspeed}

python=${PYTHON:-}
if [[ -z "$python" ]]; then
  if command -v python3.11 >/dev/null 2>&1; then python=python3.11; else python=python3; fi
fi
command -v "$python" >/dev/null 2>&1 || die "Python interpreter '$python' not found; set PYTHON=/path/to/python3.11"

key=$(cat "$lock" "${BASH_SOURCE[0]}" <(echo "$device $extras") | sha256sum | cut -c1-12)
venv=${BERT_ORT_VENV:-${BERT_ORT_VENV_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/ort-bert-pretraining}/venv-$device-$key}

link_checkout() {
  # Docker builds pass BERT_ORT_VENV and need no link; a checkout gets .venv -> the keyed venv.
  if [[ -z "${BERT_ORT_VENV:-}" ]]; then ln -sfn "$venv" "$repo/.venv"; fi
}

if [[ -f "$venv/.ready" ]]; then
  link_checkout
  echo "$venv"
  exit 0
fi
if [[ $print_only == 1 ]]; then echo "$venv"; exit 0; fi

mkdir -p "$(dirname "$venv")"
# One builder at a time per venv: two `make` runs started together must not interleave pip.
exec 9>"$venv.lock"
flock 9
if [[ -f "$venv/.ready" ]]; then link_checkout; echo "$venv"; exit 0; fi

"$python" - <<'EOF' || die "Python 3.10 or 3.11 is required (onnxruntime-training 1.19.2 has no wheels for newer ones); set PYTHON=python3.11"
import sys
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 11) else 1)
EOF

log "creating $venv ($device, extras: ${extras:-none}); this takes ~10 minutes once"
rm -rf "$venv"   # a half-built venv from a killed run has no .ready: start over
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip

# Requirements = pyproject's dependencies + the ORT wheel for this device + the chosen extras.
# The project itself is not installed: the checkout is put on PYTHONPATH, so one venv serves many clones.
# DeepSpeed is an sdist whose setup.py imports torch, so it is built afterwards against the venv's torch
# (--no-build-isolation); an isolated build would fetch an unpinned torch into its build environment.
reqs="$venv/requirements.txt"
late_reqs="$venv/requirements-no-build-isolation.txt"
"$venv/bin/python" - "$repo/pyproject.toml" "$device" "$extras" "$late_reqs" >"$reqs" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
optional = project["optional-dependencies"]
wanted = ["ort-" + sys.argv[2]] + [e for e in sys.argv[3].split(",") if e]
unknown = [e for e in wanted if e not in optional]
if unknown:
    sys.exit(f"unknown extras {unknown}; pyproject.toml defines {sorted(optional)}")
late = {"deepspeed"}
print("\n".join(project["dependencies"] + [r for e in wanted if e not in late for r in optional[e]]))
open(sys.argv[4], "w").write("".join(r + "\n" for e in wanted if e in late for r in optional[e]))
EOF

pip_args=(-c "$lock" -r "$reqs")
if [[ $device == cuda ]]; then
  # ONNX Runtime training's CUDA wheel is built for CUDA 11.8, so torch must be the cu118 build too.
  # `==2.6.0` in the lock file admits the local version 2.6.0+cu118.
  pip_args+=(--extra-index-url "${TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/cu118}")
  "${pip[@]}" install "${pip_args[@]}" "torch==$(sed -n 's/^torch==//p' "$lock")+cu118"
fi
"${pip[@]}" install "${pip_args[@]}"
if [[ -s "$late_reqs" ]]; then
  "${pip[@]}" install -c "$lock" setuptools wheel
  "${pip[@]}" install --no-build-isolation -c "$lock" -r "$late_reqs"
fi
# torch-ort's metadata pulls the CUDA onnxruntime-training wheel over the CPU one: install it alone.
"${pip[@]}" install --no-deps -c "$lock" torch-ort

if [[ "${BERT_ORT_SKIP_CONFIGURE:-0}" != 1 ]]; then
  log "building ORTModule's C++ extensions (python -m torch_ort.configure; ~6 minutes on 2 cores)"
  "$venv/bin/python" -m torch_ort.configure >"$venv/torch_ort_configure.log" 2>&1 \
    || die "python -m torch_ort.configure failed; see $venv/torch_ort_configure.log"
fi

"$venv/bin/python" -m pip freeze >"$venv/.ready"
link_checkout
log "environment ready: $venv"
echo "$venv"
