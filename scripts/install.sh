#!/usr/bin/env bash
# One install for every place hvdtrain runs (a laptop, CI, both Docker images):
#   1. a virtualenv with the pinned frameworks,
#   2. Horovod 0.28.1 built from PyPI's sdist with the fixes today's torch/TF need,
#      cached as a wheel outside the repo so later installs take seconds,
#   3. hvdtrain itself (editable), then a build check.
# Idempotent: re-running with nothing changed does no network or compile work.
#
# Environment:
#   HVDTRAIN_VENV    virtualenv to create/update (default: <repo>/.venv; "system" = current python)
#   HVDTRAIN_FLAVOR  cpu | gpu  (requirements/<flavor>.txt; default cpu)
#   HVDTRAIN_CACHE   wheel + log cache (default: ${XDG_CACHE_HOME:-~/.cache}/hvdtrain)
#   HOROVOD_VERSION  default 0.28.1
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
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
bash "$REPO/scripts/system-packages.sh" build

# --- 1. virtualenv + pinned frameworks ---------------------------------------------------------
REQ="$REPO/requirements/$FLAVOR.txt"
[[ -f "$REQ" ]] || { echo "[install] unknown HVDTRAIN_FLAVOR '$FLAVOR': use cpu or gpu" >&2; exit 2; }
if [[ "$VENV" == "system" ]]; then
    PY="$(command -v python3)"
else
    if ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then  # missing, or half-made (no pip)
        say "creating virtualenv $VENV"
        run "create virtualenv" "$LOG_DIR/venv.log" python3 -m venv --clear "$VENV"
    fi
    PY="$VENV/bin/python"
fi
PIP=("$PY" -m pip --disable-pip-version-check)

# A stamp of the requirement files' content skips pip entirely when nothing changed.
REQ_HASH="$(cat "$REQ" "$REPO/requirements/common.txt" | sha256sum | cut -c1-16)"
STAMP="$("$PY" -c 'import sys; print(sys.prefix)')/.hvdtrain-req-$REQ_HASH"
if [[ ! -f "$STAMP" ]]; then
    say "installing pinned frameworks from requirements/$FLAVOR.txt (a few minutes the first time)"
    run "install frameworks" "$LOG_DIR/requirements.log" "${PIP[@]}" install -r "$REQ"
    touch "$STAMP"
else
    say "frameworks already installed (requirements/$FLAVOR.txt unchanged)"
fi

# --- 2. Horovod, built once per (versions, flags) ---------------------------------------------
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
# NCCL for the GPU flavour only: a CUDA build of torch on a machine without the CUDA toolkit
# (PyPI's default torch wheel on x86) still gets a working Gloo build.
if [[ "$FLAVOR" == "gpu" && "$TORCH_CUDA" != "none" ]]; then
    # NCCL from the nvidia-nccl-cu12 wheel when no system NCCL is configured.
    if [[ -z "${HOROVOD_NCCL_HOME:-}" ]]; then
        NCCL_HOME="$("$PY" -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__) if nvidia.nccl.__file__ else list(nvidia.nccl.__path__)[0])' 2>/dev/null || true)"
        if [[ -n "$NCCL_HOME" ]]; then
            # The wheel ships only libnccl.so.2; Horovod's CMake looks for libnccl.so.
            [[ -e "$NCCL_HOME/lib/libnccl.so" ]] || ln -s libnccl.so.2 "$NCCL_HOME/lib/libnccl.so"
            FLAGS+=("HOROVOD_NCCL_INCLUDE=$NCCL_HOME/include" "HOROVOD_NCCL_LIB=$NCCL_HOME/lib")
        fi
    fi
    FLAGS+=(HOROVOD_GPU_OPERATIONS=NCCL)
fi
if command -v mpicc >/dev/null 2>&1; then FLAGS+=(HOROVOD_WITH_MPI=1); else FLAGS+=(HOROVOD_WITHOUT_MPI=1); fi

FLAGS_HASH="$( { printf '%s\n' "${FLAGS[@]}"; cat "$REPO/scripts/patch_horovod.py"; } | sha256sum | cut -c1-10)"
KEY="horovod-$HOROVOD_VERSION-torch$TORCH_V-tf$TF_V-cuda$TORCH_CUDA-py$PY_V-$FLAGS_HASH"
WHEEL_DIR="$CACHE/wheels/$KEY"
BUILD_LOG="$LOG_DIR/build-$KEY.log"

installed_key="$("$PY" -c 'import sys, pathlib; p = pathlib.Path(sys.prefix, ".hvdtrain-horovod"); print(p.read_text().strip() if p.exists() else "")')"
BUILD_INFO="$("$PY" -c 'import sys; print(sys.prefix)')/.hvdtrain-horovod.json"
if [[ "$installed_key" == "$KEY" && -f "$BUILD_INFO" ]]; then
    say "Horovod $HOROVOD_VERSION already installed for this build ($KEY)"
else
    if ! compgen -G "$WHEEL_DIR/horovod-*.whl" >/dev/null; then
        say "building Horovod $HOROVOD_VERSION ($KEY); about 12 minutes on 2 cores; log: $BUILD_LOG"
        : >"$BUILD_LOG"
        SRC="$(mktemp -d)"
        run "download Horovod sdist" "$BUILD_LOG" "${PIP[@]}" download --no-deps --no-binary :all: \
            -d "$SRC" "horovod==$HOROVOD_VERSION"
        run "unpack Horovod sdist" "$BUILD_LOG" tar -xzf "$SRC"/horovod-"$HOROVOD_VERSION".tar.gz -C "$SRC"
        run "patch Horovod sources" "$BUILD_LOG" "$PY" "$REPO/scripts/patch_horovod.py" "$SRC/horovod-$HOROVOD_VERSION"
        STEP="compile Horovod"; LOG="$BUILD_LOG"
        (cd "$SRC/horovod-$HOROVOD_VERSION" &&
         env "${FLAGS[@]}" CMAKE_POLICY_VERSION_MINIMUM=3.5 MAKEFLAGS="-j$(nproc)" \
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
    # Horovod's runtime deps (cloudpickle, psutil, pyyaml, packaging) without touching the frameworks.
    run "install Horovod runtime deps" "$BUILD_LOG" "${PIP[@]}" install cloudpickle psutil pyyaml packaging
    STEP="check Horovod build"; LOG="$LOG_DIR/check-build.log"
    "$(dirname "$PY")/horovodrun" --check-build >"$LOG" 2>&1
    for feature in TensorFlow PyTorch Gloo; do
        grep -qE "\[X\] $feature" "$LOG" || { echo "Horovod was built without $feature" >>"$LOG"; false; }
    done
    # The controllers built, so `hvdtrain run` need not probe them by importing TensorFlow (core/versions.py).
    "$PY" -c 'import json, re, sys, pathlib; pathlib.Path(sys.argv[1]).write_text(json.dumps({"key": sys.argv[2],
        "controllers": sorted({c.lower() for c in re.findall(r"\[X\] (Gloo|MPI)", open(sys.argv[3]).read())})}))' \
        "$BUILD_INFO" "$KEY" "$LOG"
    "$PY" -c 'import sys, pathlib; pathlib.Path(sys.prefix, ".hvdtrain-horovod").write_text(sys.argv[1])' "$KEY"
fi

# --- 3. hvdtrain itself ------------------------------------------------------------------------
# (Re)install when hvdtrain is missing or points at another checkout.
if ! (cd / && "$PY" -c 'import hvdtrain, sys; sys.exit(not hvdtrain.__file__.startswith(sys.argv[1]))' "$REPO/") \
        >/dev/null 2>&1; then
    run "install hvdtrain" "$LOG_DIR/hvdtrain.log" "${PIP[@]}" install --no-deps --no-build-isolation -e "$REPO"
fi
say "done: Horovod $HOROVOD_VERSION with PyTorch, TensorFlow and Gloo; python: $PY"
