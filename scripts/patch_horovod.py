"""Patch an unpacked Horovod 0.28.1 sdist so it builds against torch >= 2.1 and TF >= 2.16.

Each fix is checked: if the text to replace is missing (a different Horovod), fail loudly
rather than build something untested. Why each fix: README.md, 'How Horovod is built'.
"""
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


def main(root: str) -> None:
    for rel, old, new in FIXES:
        path = pathlib.Path(root, rel)
        text = path.read_text()
        if old not in text:
            if new and new in text:
                continue  # already patched
            sys.exit(f"patch_horovod: expected text not found in {path}: {old!r}")
        path.write_text(text.replace(old, new))
        print(f"patched {rel}: {old!r} -> {new!r}")


if __name__ == "__main__":
    main(sys.argv[1])
