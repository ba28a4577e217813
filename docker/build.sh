#!/usr/bin/env bash
# Build the training image from the repository root (the build context needs constraints.txt,
# pyproject.toml and the scripts).
#
#   docker/build.sh [--cpu | --current] [--tag NAME] [-- extra docker build args...]
#
# Images: default docker/Dockerfile (ORT training, CUDA 11.8), --cpu docker/Dockerfile.cpu, --current
# docker/Dockerfile.current (current stack, PyPI's CUDA torch on a plain Debian base).
# Environment: IMAGE (default ort-bert-pretraining:gpu / :cpu / :current), EXTRAS (pyproject extras baked in),
# DOCKER (engine command, default docker), DRY_RUN=1 (print the command instead of running it).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dockerfile="${repo}/docker/Dockerfile"
flavour=gpu
image=${IMAGE:-}
extra=()
while (($#)); do
  case "$1" in
    --cpu) dockerfile="${repo}/docker/Dockerfile.cpu"; flavour=cpu ;;
    --current) dockerfile="${repo}/docker/Dockerfile.current"; flavour=current ;;
    --tag) image=${2:?--tag needs a value}; shift ;;
    --) shift; extra=("$@"); break ;;
    -h | --help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
image=${image:-ort-bert-pretraining:${flavour}}
[[ -f "${repo}/constraints.txt" ]] || { echo "build.sh: ${repo}/constraints.txt is missing; the image installs from it" >&2; exit 2; }

read -r -a engine <<<"${DOCKER:-docker}" # may be several words, e.g. "sudo docker"
cmd=("${engine[@]}" build -f "${dockerfile}" -t "${image}")
[[ -n "${EXTRAS+x}" ]] && cmd+=(--build-arg "EXTRAS=${EXTRAS}")
cmd+=("${extra[@]}" "${repo}")
if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%q ' "${cmd[@]}" | sed 's/ $/\n/'
else
  "${cmd[@]}"
fi
