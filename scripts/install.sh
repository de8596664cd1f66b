#!/usr/bin/env bash
# One install for every place hvdtrain runs (a laptop, CI, both Docker images):
#   1. a virtualenv with the pinned frameworks,
#   2. Horovod 0.28.1 built from PyPI's sdist with the fixes today's torch/TF need,
#      cached as a wheel outside the repo so later installs take seconds,
#   3. hvdtrain itself (editable), then a build check.
# Idempotent: re-running with nothing changed does no network or compile work.
#   bash scripts/install.sh        all three
#   bash scripts/install.sh deps   1 and 2 only (the Docker image's frameworks layer: no hvdtrain source)
#   bash scripts/install.sh self   3 only, into a virtualenv that has 1 and 2 (the image's last layer)
#
# Environment:
#   HVDTRAIN_VENV    virtualenv to create/update (default: <repo>/.venv; "system" = current python)
#   HVDTRAIN_FLAVOR  cpu | gpu  (requirements/<flavor>.txt; default cpu; gpu also compiles
#                    Horovod's NCCL ops and needs the CUDA toolkit named in requirements/gpu.txt)
#   HVDTRAIN_EXTRAS  optional requirement groups, requirements/<name>.txt (default "dev spark": the
#                    tests and Spark; the images install none unless asked)
#   HVDTRAIN_CACHE   wheel + log cache (default: ${XDG_CACHE_HOME:-~/.cache}/hvdtrain)
#   HOROVOD_VERSION  default 0.28.1
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-all}"
case "$MODE" in all|deps|self) ;; *) echo "[install] unknown mode '$MODE': use all, deps or self" >&2; exit 2 ;; esac
FLAVOR="${HVDTRAIN_FLAVOR:-cpu}"
VENV="${HVDTRAIN_VENV:-$REPO/.venv}"
CACHE="${HVDTRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hvdtrain}"
HOROVOD_VERSION="${HOROVOD_VERSION:-0.28.1}"
LOG_DIR="$CACHE/logs"
mkdir -p "$LOG_DIR"
STEP="start"
LOG="$LOG_DIR/install.log"

say() { printf '[install] %s\n' "$*"; }
on_error() {
    local rc=$?
    printf '[install] FAILED at step "%s" (exit %d). Full log: %s\n' "$STEP" "$rc" "$LOG" >&2
    tail -n 15 -- "$LOG" 2>/dev/null | sed 's/^/[install]   | /' >&2 || true
    exit "$rc"
}
trap on_error ERR
# run STEP LOGFILE CMD...: run quietly, keeping the whole output in LOGFILE.
run() {
    STEP="$1"; LOG="$2"; shift 2
    "$@" >>"$LOG" 2>&1
}

# --- 0. system packages the build uses (Open MPI), when root with apt-get --------------------------
if [[ "$MODE" != self ]]; then bash "$REPO/scripts/system-packages.sh" build; fi

# --- 1. virtualenv + pinned frameworks ---------------------------------------------------------
REQ="$REPO/requirements/$FLAVOR.txt"
[[ -f "$REQ" ]] || { echo "[install] unknown HVDTRAIN_FLAVOR '$FLAVOR': use cpu or gpu" >&2; exit 2; }
REQS=("$REQ")
for extra in ${HVDTRAIN_EXTRAS-dev spark}; do
    [[ -f "$REPO/requirements/$extra.txt" && "$extra" != @(cpu|gpu|common) ]] ||
        { echo "[install] unknown HVDTRAIN_EXTRAS group '$extra': use dev, spark or none" >&2; exit 2; }
    REQS+=("$REPO/requirements/$extra.txt")
done
if [[ "$VENV" == "system" ]]; then
    PY="$(command -v python3)"
else
    if [[ "$MODE" == self && ! -x "$VENV/bin/python" ]]; then
        echo "[install] 'self' installs hvdtrain into a virtualenv made by install.sh; $VENV has none" >&2; exit 2
    elif ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then  # missing, or half-made (no pip)
        say "creating virtualenv $VENV"
        run "create virtualenv" "$LOG_DIR/venv.log" python3 -m venv --clear "$VENV"
    fi
    PY="$VENV/bin/python"
fi
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"  # absolute: the compile runs in another directory
PIP=("$PY" -m pip --disable-pip-version-check)

# A stamp of the requirement files' content skips pip entirely when nothing changed.
REQ_HASH="$(cat "${REQS[@]}" "$REPO/requirements/common.txt" | sha256sum | cut -c1-16)"
STAMP="$("$PY" -c 'import sys; print(sys.prefix)')/.hvdtrain-req-$REQ_HASH"
REQ_NAMES="$(printf '%s\n' "${REQS[@]#"$REPO/"}" | paste -sd+)"
if [[ "$MODE" == self ]]; then
    :
elif [[ ! -f "$STAMP" ]]; then
    # tensorflow and tensorflow-cpu install the same `tensorflow` package: pip would lay the pinned
    # one over another already here (a venv made before cpu.txt moved to `tensorflow`), and removing
    # either later would break both. So every TF distribution goes first when one not pinned is here.
    STEP="remove another TensorFlow distribution"; LOG="$LOG_DIR/requirements.log"
    stale="$("$PY" - "$REQ" 2>>"$LOG" <<'EOF'
import importlib.metadata as md, re, sys
pinned = set(re.findall(r"^(tensorflow(?:-cpu|-gpu)?)==", open(sys.argv[1]).read(), re.M))
here = []
for dist in ("tensorflow", "tensorflow-cpu", "tensorflow-gpu"):
    try:
        md.version(dist)
        here.append(dist)
    except md.PackageNotFoundError:
        pass
print(" ".join(here) if pinned and set(here) - pinned else "")
EOF
)"
    if [[ -n "$stale" ]]; then
        read -ra stale_dists <<<"$stale"
        say "removing $stale: requirements/$FLAVOR.txt pins another TensorFlow distribution"
        run "remove another TensorFlow distribution" "$LOG" "${PIP[@]}" uninstall -y "${stale_dists[@]}"
    fi
    say "installing pinned frameworks from $REQ_NAMES (a few minutes the first time)"
    run "install frameworks" "$LOG_DIR/requirements.log" "${PIP[@]}" install "${REQS[@]/#/-r}"
    touch "$STAMP"
else
    say "frameworks already installed ($REQ_NAMES unchanged)"
fi
# gpu: torch, TensorFlow, the NCCL wheel and nvcc must make one CUDA stack (hvdtrain/cudastack.py);
# a combination that cannot work stops here with one line, before the long compile.
cuda_stack() {
    local out
    if ! out="$(PYTHONPATH="$REPO" TF_CPP_MIN_LOG_LEVEL=3 "$PY" -m hvdtrain.cudastack "$1" 2>"$LOG_DIR/cudastack.log")"; then
        printf '[install] the CUDA stack cannot work: %s\n' "$(tail -n 1 <<<"${out:-see $LOG_DIR/cudastack.log}")" >&2
        exit 1
    fi
    printf '%s\n' "$out" | sed 's/^/[install] CUDA stack: /'
}
if [[ "$FLAVOR" == "gpu" && "$MODE" != self ]]; then cuda_stack frameworks; fi

# --- 2. Horovod, built once per (versions, flags) ---------------------------------------------
if [[ "$MODE" != self ]]; then
STEP="detect build flags"; LOG="$LOG_DIR/detect.log"
read -r TORCH_V TF_V PY_V TORCH_CUDA < <("$PY" - 2>"$LOG" <<'EOF'
import sys, importlib.metadata as md
import torch
tf_v = None
for name in ("tensorflow", "tensorflow-cpu"):
    try:
        tf_v = md.version(name); break
    except md.PackageNotFoundError:
        pass
print(torch.__version__.split("+")[0], tf_v, f"{sys.version_info[0]}{sys.version_info[1]}", torch.version.cuda or "none")
EOF
)
FLAGS=(HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MXNET=1
       HOROVOD_CPU_OPERATIONS=gloo)
PATCH_ARGS=()
BUILD_ENV=()   # paths for the compile that do not change what is built (not in the cache key)
CUDA_TAG="cuda$TORCH_CUDA"
if [[ "$FLAVOR" == "gpu" ]]; then
    # NCCL ops compiled by the CUDA toolkit cudastack checked, linked against the one NCCL wheel
    # (torch's): its directory is found again at run time through the extensions' RUNPATH.
    STEP="detect CUDA toolkit and NCCL"; LOG="$LOG_DIR/detect.log"
    read -r CUDA_HOME_DIR NVCC_V NCCL_HOME NCCL_V < <(PYTHONPATH="$REPO" "$PY" - 2>>"$LOG" <<'EOF'
import importlib.metadata as md
from pathlib import Path
from hvdtrain import cudastack
home = cudastack.cuda_home()
wheel = cudastack.nccl_wheels()[0]
nccl = Path(md.distribution(wheel.dist).locate_file("nvidia/nccl"))
print(home, cudastack.nvcc_version(home), nccl, wheel.version)
EOF
)
    [[ -n "${NCCL_V:-}" ]] || { echo "could not read the CUDA toolkit and NCCL paths" >>"$LOG"; false; }
    # The wheel ships only libnccl.so.2; Horovod's CMake looks for libnccl.so.
    [[ -e "$NCCL_HOME/lib/libnccl.so" ]] || ln -s libnccl.so.2 "$NCCL_HOME/lib/libnccl.so"
    # The GPUs the CUDA kernels are compiled for: Turing to Blackwell (CUDA 13 dropped older ones).
    FLAGS+=(HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED
            "HOROVOD_BUILD_CUDA_CC_LIST=${HVDTRAIN_CUDA_CC_LIST:-75,80,86,89,90,100,120}")
    BUILD_ENV+=("HOROVOD_CUDA_HOME=$CUDA_HOME_DIR" "CUDA_HOME=$CUDA_HOME_DIR"
                "HOROVOD_NCCL_INCLUDE=$NCCL_HOME/include" "HOROVOD_NCCL_LIB=$NCCL_HOME/lib")
    PATCH_ARGS+=(--gpu)
    CUDA_TAG="cuda$TORCH_CUDA-nvcc$NVCC_V-nccl$NCCL_V"
fi
if command -v mpicc >/dev/null 2>&1; then FLAGS+=(HOROVOD_WITH_MPI=1); else FLAGS+=(HOROVOD_WITHOUT_MPI=1); fi

FLAGS_HASH="$( { printf '%s\n' "${FLAGS[@]}"; "$PY" "$REPO/scripts/patch_horovod.py" --fingerprint "${PATCH_ARGS[@]}"; } \
               | sha256sum | cut -c1-10)"
KEY="horovod-$HOROVOD_VERSION-torch$TORCH_V-tf$TF_V-$CUDA_TAG-py$PY_V-$FLAGS_HASH"
WHEEL_DIR="$CACHE/wheels/$KEY"
BUILD_LOG="$LOG_DIR/build-$KEY.log"

installed_key="$("$PY" -c 'import sys, pathlib; p = pathlib.Path(sys.prefix, ".hvdtrain-horovod"); print(p.read_text().strip() if p.exists() else "")')"
BUILD_INFO="$("$PY" -c 'import sys; print(sys.prefix)')/.hvdtrain-horovod.json"
# Horovod's Python-only fixes (Keras 3) are applied to the installed files, not compiled: their own
# fingerprint stamps the venv, outside the cache key. Changed fixes start again from the wheel's files.
PY_FIXES="$("$PY" "$REPO/scripts/patch_horovod.py" --python-fingerprint)"
PY_STAMP="$("$PY" -c 'import sys; print(sys.prefix)')/.hvdtrain-horovod-python"
applied_fixes="$(cat "$PY_STAMP" 2>/dev/null || true)"
if [[ "$installed_key" == "$KEY" && -f "$BUILD_INFO" && ( -z "$applied_fixes" || "$applied_fixes" == "$PY_FIXES" ) ]]; then
    say "Horovod $HOROVOD_VERSION already installed for this build ($KEY)"
else
    if ! compgen -G "$WHEEL_DIR/horovod-*.whl" >/dev/null; then
        if [[ "$FLAVOR" == "gpu" ]]; then TAKES="30 minutes or more (CUDA kernels for 7 GPU generations)"
        else TAKES="about 12 minutes"; fi
        say "building Horovod $HOROVOD_VERSION ($KEY); $TAKES on 2 cores; log: $BUILD_LOG"
        : >"$BUILD_LOG"
        SRC="$(mktemp -d)"
        run "download Horovod sdist" "$BUILD_LOG" "${PIP[@]}" download --no-deps --no-binary :all: \
            -d "$SRC" "horovod==$HOROVOD_VERSION"
        run "unpack Horovod sdist" "$BUILD_LOG" tar -xzf "$SRC"/horovod-"$HOROVOD_VERSION".tar.gz -C "$SRC"
        run "patch Horovod sources" "$BUILD_LOG" "$PY" "$REPO/scripts/patch_horovod.py" "$SRC/horovod-$HOROVOD_VERSION" \
            "${PATCH_ARGS[@]}"
        STEP="compile Horovod"; LOG="$BUILD_LOG"
        (cd "$SRC/horovod-$HOROVOD_VERSION" &&
         env "${FLAGS[@]}" "${BUILD_ENV[@]}" CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" \
             PATH="$(dirname "$PY"):$PATH" \
             "${PIP[@]}" wheel --no-deps --no-build-isolation -w "$SRC/dist" . ) >>"$BUILD_LOG" 2>&1
        mkdir -p "$WHEEL_DIR"
        # Copy then rename so a killed install never leaves a half-written wheel in the cache.
        wheel="$(ls "$SRC"/dist/horovod-*.whl)"
        cp "$wheel" "$WHEEL_DIR/.partial" && mv "$WHEEL_DIR/.partial" "$WHEEL_DIR/$(basename "$wheel")"
        rm -rf "$SRC"
    else
        say "reusing cached Horovod wheel $WHEEL_DIR"
    fi
    run "install Horovod wheel" "$BUILD_LOG" "${PIP[@]}" install --no-deps --force-reinstall "$WHEEL_DIR"/horovod-*.whl
    rm -f "$PY_STAMP"  # the wheel's own files again
    # Horovod's runtime deps (cloudpickle, psutil, pyyaml, packaging) without touching the frameworks.
    run "install Horovod runtime deps" "$BUILD_LOG" "${PIP[@]}" install cloudpickle psutil pyyaml packaging
    STEP="check Horovod build"; LOG="$LOG_DIR/check-build.log"
    "$(dirname "$PY")/horovodrun" --check-build >"$LOG" 2>&1
    FEATURES=(TensorFlow PyTorch Gloo)
    if [[ "$FLAVOR" == "gpu" ]]; then FEATURES+=(NCCL); fi
    for feature in "${FEATURES[@]}"; do
        grep -qE "\[X\] $feature" "$LOG" || { echo "Horovod was built without $feature" >>"$LOG"; false; }
    done
    if [[ "$FLAVOR" == "gpu" ]]; then cuda_stack load; fi
    # The controllers built, so `hvdtrain run` need not probe them by importing TensorFlow (core/versions.py).
    "$PY" -c 'import json, re, sys, pathlib; pathlib.Path(sys.argv[1]).write_text(json.dumps({"key": sys.argv[2],
        "controllers": sorted({c.lower() for c in re.findall(r"\[X\] (Gloo|MPI)", open(sys.argv[3]).read())})}))' \
        "$BUILD_INFO" "$KEY" "$LOG"
    "$PY" -c 'import sys, pathlib; pathlib.Path(sys.prefix, ".hvdtrain-horovod").write_text(sys.argv[1])' "$KEY"
fi
if [[ "$(cat "$PY_STAMP" 2>/dev/null || true)" != "$PY_FIXES" ]]; then
    SITE="$("$PY" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("horovod").submodule_search_locations[0]))')"
    run "patch Horovod's Python files" "$LOG_DIR/patch-python.log" "$PY" "$REPO/scripts/patch_horovod.py" --python "$SITE"
    printf '%s\n' "$PY_FIXES" >"$PY_STAMP"
    say "Horovod's TensorFlow and Keras APIs patched for Keras 3 (fixes $PY_FIXES)"
fi
fi
if [[ "$MODE" == deps ]]; then say "done: frameworks and Horovod $HOROVOD_VERSION; python: $PY"; exit 0; fi

# --- 3. hvdtrain itself ------------------------------------------------------------------------
# (Re)install when hvdtrain is missing or points at another checkout. PEP 517 with the setuptools
# already here: nothing is fetched (the image's last stage has no index settings).
if ! (cd / && "$PY" -c 'import hvdtrain, sys; sys.exit(not hvdtrain.__file__.startswith(sys.argv[1]))' "$REPO/") \
        >/dev/null 2>&1; then
    run "install hvdtrain" "$LOG_DIR/hvdtrain.log" "${PIP[@]}" install --no-deps --no-build-isolation --use-pep517 -e "$REPO"
fi
if [[ "$FLAVOR" == "gpu" ]]; then BUILT="PyTorch, TensorFlow, Gloo and NCCL"; else BUILT="PyTorch, TensorFlow and Gloo"; fi
say "done: Horovod $HOROVOD_VERSION with $BUILT; python: $PY"
