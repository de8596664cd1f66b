"""Patch an unpacked Horovod 0.28.1 sdist so it builds against torch >= 2.1 and TF >= 2.16.

    python scripts/patch_horovod.py SRC [--gpu]      patch SRC (--gpu: the NCCL build's fixes too)
    python scripts/patch_horovod.py --fingerprint [--gpu]   print the fixes a build applies

Each fix is checked: if the text to replace is missing (a different Horovod), fail loudly
rather than build something untested. Why each fix: README.md, 'How Horovod is built'.
The GPU fixes only touch code compiled for NCCL builds; install.sh keys the wheel cache on the
fingerprint of the fixes a build applies, so changing a GPU fix never rebuilds the CPU wheel.
"""
import hashlib
import pathlib
import sys

FIXES = [
    # torch >= 2.1 and TF's abseil need C++17 (upstream PR #3998, never released).
    ("CMakeLists.txt", "set(CMAKE_CXX_STANDARD 14)", "set(CMAKE_CXX_STANDARD 17)"),
    ("horovod/torch/CMakeLists.txt", "set(CMAKE_CXX_STANDARD 14)", "set(CMAKE_CXX_STANDARD 17)"),
    # The optional XLA lowering needs highwayhash headers the TF 2.21 wheel does not ship.
    ("horovod/tensorflow/CMakeLists.txt",
     'list(APPEND TF_SOURCES "${PROJECT_SOURCE_DIR}/horovod/tensorflow/xla_mpi_ops.cc")',
     "# xla_mpi_ops.cc left out by hvdtrain (needs headers TF 2.21 does not ship)"),
    # Gloo controller bug: ``reserve`` leaves the rank list empty, so the stall inspector checks no
    # ranks and a job whose ranks diverged hangs forever without a warning.
    ("horovod/common/gloo/gloo_controller.cc", "  global_ranks_.reserve(size_);", "  global_ranks_.resize(size_);"),
]

# Only for the gpu flavour: its torch (2.14.1; the CPU flavour's 2.13.0 builds as C++17) and its
# NCCL ops. Kept apart so the CPU build stays byte-for-byte what it was.
GPU_FIXES = [
    # torch >= 2.14's headers use C++20 (std::strong_ordering, operator<=> in c10/util/intrusive_ptr.h).
    ("horovod/torch/CMakeLists.txt", "set(CMAKE_CXX_STANDARD 17)", "set(CMAKE_CXX_STANDARD 20)"),
    # TF >= 2.18 no longer exports stream_executor::gpu::AsGpuStreamValue, which 0.28.1 declares
    # and calls for the cudaStream_t of a TF op: the extension fails to load ("undefined symbol"),
    # so Horovod has no TensorFlow. The stream's platform-specific handle is that cudaStream_t.
    ("horovod/tensorflow/mpi_ops.cc",
     """// Forward declaration of AsGpuStreamValue
namespace stream_executor {
namespace gpu {
GpuStreamHandle AsGpuStreamValue(Stream* stream);
} // namespace stream_executor
} // namespace gpu
#if TENSORFLOW_VERSION >= 2011000000
#include "tensorflow/compiler/xla/stream_executor/stream.h"
#else
#include "tensorflow/stream_executor/stream.h"
#endif // TENSORFLOW_VERSION >= 2011000000
""",
     """// hvdtrain: TF >= 2.18 exports no AsGpuStreamValue; the platform handle is the stream.
#include "xla/stream_executor/stream.h"
namespace stream_executor {
namespace gpu {
inline GpuStreamHandle AsGpuStreamValue(Stream* stream) {
  return static_cast<GpuStreamHandle>(stream->platform_specific_handle().stream);
}
} // namespace gpu
} // namespace stream_executor
"""),
    # NCCL comes from the nvidia-nccl wheel in site-packages. Built as-is, the extensions find
    # libnccl.so.2 through an absolute RUNPATH into the venv that compiled them, so the cached
    # wheel installed into any other venv (or once that venv is gone) cannot load
    # horovod.tensorflow. Look beside the extension instead: site-packages/nvidia/nccl/lib.
    ("CMakeLists.txt",
     """    list(APPEND SOURCES "${PROJECT_SOURCE_DIR}/horovod/common/ops/nccl_operations.cc")
    add_definitions(-DHAVE_NCCL=1)""",
     """    list(APPEND SOURCES "${PROJECT_SOURCE_DIR}/horovod/common/ops/nccl_operations.cc")
    set(CMAKE_BUILD_WITH_INSTALL_RPATH ON)  # hvdtrain: libnccl.so.2 from the nvidia-nccl wheel
    set(CMAKE_INSTALL_RPATH "$ORIGIN/../../nvidia/nccl/lib")
    add_definitions(-DHAVE_NCCL=1)"""),
]


def fixes(gpu: bool) -> list[tuple[str, str, str]]:
    return FIXES + (GPU_FIXES if gpu else [])


def fingerprint(gpu: bool) -> str:
    """A digest of the fixes a build applies (install.sh puts it in the wheel's cache key)."""
    return hashlib.sha256(repr(fixes(gpu)).encode()).hexdigest()[:16]


def main(root: str, gpu: bool) -> None:
    for rel, old, new in fixes(gpu):
        path = pathlib.Path(root, rel)
        text = path.read_text()
        if old not in text:
            if new and new in text:
                continue  # already patched
            sys.exit(f"patch_horovod: expected text not found in {path}: {old!r}")
        path.write_text(text.replace(old, new))
        print(f"patched {rel}: {old!r} -> {new!r}")


if __name__ == "__main__":
    args = sys.argv[1:]
    gpu = "--gpu" in args
    args = [a for a in args if a != "--gpu"]
    if args == ["--fingerprint"]:
        print(fingerprint(gpu))
    elif len(args) == 1 and not args[0].startswith("-"):
        main(args[0], gpu)
    else:
        sys.exit("usage: patch_horovod.py SRC [--gpu] | --fingerprint [--gpu]")
