#!/usr/bin/env bash
# make image: builds hvdtrain's Docker image from the top-level Dockerfile.
#   bash scripts/image.sh [cpu|gpu]      (make image [FLAVOR=gpu] [EXTRAS=spark] [TAG=...])
# Environment: EXTRAS (requirement groups for the image, e.g. "spark"; default none), TAG (default
# hvdtrain:<flavour>), CPU_BASE (default python:3.11-slim-bookworm; where no registry answers, a
# Debian base made by scripts/docker-base.sh).
# pip's settings and CA reach the build as secrets (scripts/image_inputs.py); BuildKit caches the
# frameworks stage and the compiled Horovod wheel, so a rebuild after a source change takes a minute
# or two. Prints the image's tag, size and build time; a failure prints its step and log.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FLAVOR="${1:-cpu}"
EXTRAS="${EXTRAS:-}"
TAG="${TAG:-hvdtrain:$FLAVOR}"
LOG="${HVDTRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvdtrain}/logs/image-$FLAVOR.log"
mkdir -p "$(dirname "$LOG")"
cd "$REPO"

DOCKER="$(bash scripts/docker-engine.sh)"
case "$FLAVOR" in
    cpu) BASE="$(bash scripts/docker-base.sh "$DOCKER" "${CPU_BASE:-python:3.11-slim-bookworm}")"
         BASE_ARGS=(--build-arg "CPU_BASE=$BASE") ;;
    gpu) BASE="$(sed -n 's/^ARG GPU_BASE=//p' Dockerfile)"
         BASE_ARGS=()
         if ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1 && ! "$DOCKER" pull -q "$BASE" >/dev/null 2>&1; then
             echo "[image] the GPU image needs NVIDIA's base $BASE, which is not here and cannot be pulled" >&2
             exit 1
         fi ;;
    *) echo "[image] unknown flavour '$FLAVOR': use cpu or gpu" >&2; exit 2 ;;
esac

SECRETS="$(mktemp -d)"
trap 'rm -rf "$SECRETS"' EXIT
BASE_OS="$("$DOCKER" run --rm --network none --entrypoint cat "$BASE" /etc/os-release)"
PY="$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)"
INPUTS="$("$PY" scripts/image_inputs.py "$SECRETS" "$FLAVOR" "$EXTRAS" "$BASE_OS")"
sed -n 's/^staged=/[image] local wheel: /p' <<<"$INPUTS" >&2
ARGS=(--build-arg "FLAVOR=$FLAVOR" --build-arg "EXTRAS=$EXTRAS" "${BASE_ARGS[@]}")
grep -qx "torch_cpu_index=no" <<<"$INPUTS" && ARGS+=(--build-arg "TORCH_CPU_INDEX=")
for secret in pip_conf pip_ca; do
    [[ -f "$SECRETS/$secret" ]] && ARGS+=(--secret "id=$secret,src=$SECRETS/$secret")
done

echo "[image] building $TAG on $BASE (log: $LOG)" >&2
start=$SECONDS
if ! DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain "${ARGS[@]}" -t "$TAG" . >"$LOG" 2>&1; then
    echo "[image] docker build of $TAG failed after $((SECONDS - start)) s; log: $LOG" >&2
    grep -E '^#[0-9]+ ERROR|^ERROR|error:' "$LOG" | tail -n 3 | sed 's/^/[image]   | /' >&2
    tail -n 12 "$LOG" | sed 's/^/[image]   | /' >&2
    exit 1
fi
size="$("$DOCKER" image inspect --format '{{.Size}}' "$TAG")"
echo "[image] built $TAG in $((SECONDS - start)) s: $((size / 1000000)) MB"
