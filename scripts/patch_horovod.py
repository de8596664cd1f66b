"""Patch Horovod 0.28.1 so it builds against torch >= 2.1 and TF >= 2.16, and so its TensorFlow
and Keras APIs run on Keras 3.

    python scripts/patch_horovod.py SRC [--gpu]
        patch an unpacked sdist SRC (--gpu: the NCCL build's fixes too)
    python scripts/patch_horovod.py --fingerprint [--gpu]
        print the fixes a build applies
    python scripts/patch_horovod.py --python SITE
        patch the installed package under SITE (Python files only)
    python scripts/patch_horovod.py --python-fingerprint
        print the Python fixes' fingerprint

Each fix is checked: if the text to replace is missing (a different Horovod), fail loudly
rather than build something untested. Why each fix: docs/build.md.
The GPU fixes only touch code compiled for NCCL builds; install.sh keys the wheel cache on the
fingerprint of the fixes a build applies, so changing a GPU fix never rebuilds the CPU wheel.

``PYTHON_FIXES`` touch only Python files, so they are not compiled: install.sh applies them to the
installed wheel (site-packages) and stamps the venv with their own fingerprint, outside the wheel's
cache key, so changing one costs a reinstall of the cached wheel (seconds), never a recompile.
They route Horovod's Keras API to hvdtrain.keras (``hvdtrain/keras/horovod_api.py``): one gradient
path, broadcast and warmup rule for both.
"""

import hashlib
import pathlib
import sys

FIXES = [
    # torch >= 2.1 and TF's abseil need C++17 (upstream PR #3998, never released).
    ("CMakeLists.txt", "set(CMAKE_CXX_STANDARD 14)", "set(CMAKE_CXX_STANDARD 17)"),
    ("horovod/torch/CMakeLists.txt", "set(CMAKE_CXX_STANDARD 14)", "set(CMAKE_CXX_STANDARD 17)"),
    # The optional XLA lowering needs highwayhash headers the TF 2.21 wheel does not ship.
    (
        "horovod/tensorflow/CMakeLists.txt",
        'list(APPEND TF_SOURCES "${PROJECT_SOURCE_DIR}/horovod/tensorflow/xla_mpi_ops.cc")',
        "# xla_mpi_ops.cc left out by hvdtrain (needs headers TF 2.21 does not ship)",
    ),
    # Gloo controller bug: ``reserve`` leaves the rank list empty, so the stall inspector checks no
    # ranks and a job whose ranks diverged hangs forever without a warning.
    (
        "horovod/common/gloo/gloo_controller.cc",
        "  global_ranks_.reserve(size_);",
        "  global_ranks_.resize(size_);",
    ),
    # Gloo's float16 sum has an F16C/AVX kernel behind the macro GLOO_USE_AVX, and Horovod never
    # defines it: every float16 allreduce (fp16 compression) converts each element in software,
    # 3.4x the time of a float32 allreduce of the same count on one host. The macro must reach
    # Horovod's own sources too (gloo/math.h declares the kernel under it; gloo/config.h, where
    # Gloo's USE_AVX would put it, is not included by math.h), hence a definition for every
    # target rather than USE_AVX alone, and the kernel's source (gloo/math.cc, all of it under
    # the macro) is missing from the vendored Gloo's source list (next fix). Horovod compiles
    # everything with -mf16c -mavx already (ARCH_FLAGS), so the kernel needs no new CPU feature;
    # a build whose HOROVOD_BUILD_ARCH_FLAGS drop them keeps the portable loop.
    (
        "CMakeLists.txt",
        """    set(CMAKE_POLICY_DEFAULT_CMP0074 NEW)
    add_subdirectory(third_party/gloo)""",
        """    set(CMAKE_POLICY_DEFAULT_CMP0074 NEW)
    # hvdtrain: Gloo's F16C float16 sum, where the build's arch flags allow it
    if("${HOROVOD_BUILD_ARCH_FLAGS}" MATCHES "-mf16c" AND "${HOROVOD_BUILD_ARCH_FLAGS}" MATCHES "-mavx")
        set(USE_AVX ON)
        add_definitions(-DGLOO_USE_AVX=1)
    endif()
    add_subdirectory(third_party/gloo)""",
    ),
    (
        "third_party/gloo/gloo/CMakeLists.txt",
        """  "${CMAKE_CURRENT_SOURCE_DIR}/types.cc"
  )""",
        """  "${CMAKE_CURRENT_SOURCE_DIR}/types.cc"
  "${CMAKE_CURRENT_SOURCE_DIR}/math.cc"
  )""",
    ),
]

# Only for the gpu flavour: its torch (2.14.1; the CPU flavour's 2.13.0 builds as C++17) and its
# NCCL ops. Kept apart so the CPU build stays byte-for-byte what it was.
GPU_FIXES = [
    # torch >= 2.14's headers use C++20 (std::strong_ordering, operator<=> in
    # c10/util/intrusive_ptr.h).
    ("horovod/torch/CMakeLists.txt", "set(CMAKE_CXX_STANDARD 17)", "set(CMAKE_CXX_STANDARD 20)"),
    # TF >= 2.18 no longer exports stream_executor::gpu::AsGpuStreamValue, which 0.28.1 declares
    # and calls for the cudaStream_t of a TF op: the extension fails to load ("undefined symbol"),
    # so Horovod has no TensorFlow. The stream's platform-specific handle is that cudaStream_t.
    (
        "horovod/tensorflow/mpi_ops.cc",
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
""",
    ),
    # NCCL comes from the nvidia-nccl wheel in site-packages. Built as-is, the extensions find
    # libnccl.so.2 through an absolute RUNPATH into the venv that compiled them, so the cached
    # wheel installed into any other venv (or once that venv is gone) cannot load
    # horovod.tensorflow. Look beside the extension instead: site-packages/nvidia/nccl/lib.
    (
        "CMakeLists.txt",
        """    list(APPEND SOURCES "${PROJECT_SOURCE_DIR}/horovod/common/ops/nccl_operations.cc")
    add_definitions(-DHAVE_NCCL=1)""",
        """    list(APPEND SOURCES "${PROJECT_SOURCE_DIR}/horovod/common/ops/nccl_operations.cc")
    set(CMAKE_BUILD_WITH_INSTALL_RPATH ON)  # hvdtrain: libnccl.so.2 from the nvidia-nccl wheel
    set(CMAKE_INSTALL_RPATH "$ORIGIN/../../nvidia/nccl/lib")
    add_definitions(-DHAVE_NCCL=1)""",
    ),
]


# Python-only fixes, applied to the installed package (``--python``), never compiled. Each target
# text must occur exactly once. Keras 3 variables are not tf.Variables: they have no ``.ref()``,
# their ``dtype`` is a string, and ``optimizer.variables`` is a property.
_TAPE = "horovod/tensorflow/__init__.py"
_UTIL = "horovod/tensorflow/util.py"
_ELASTIC = "horovod/tensorflow/elastic.py"
_KERAS = "horovod/_keras/__init__.py"
_COMMON_UTIL = "horovod/common/util.py"
PYTHON_FIXES = [
    # Horovod's ssh (its host check, workers, elastic task services) accepted any host key: a
    # reinstalled host, or someone in the middle, was used without a word. hvdtrain's rule instead
    # (hvdtrain/launch/hostkeys.py): trust on first use, a changed key refused.
    (
        "horovod/runner/util/remote.py",
        "SSH_COMMAND_PREFIX = 'ssh -o PasswordAuthentication=no -o StrictHostKeyChecking=no'\n",
        "from hvdtrain.launch import hostkeys  # hvdtrain: host keys checked unless opted out\n"
        "SSH_COMMAND_PREFIX = ' '.join(['ssh', '-o', 'PasswordAuthentication=no', "
        "*hostkeys.ssh_options()])\n",
    ),
    # Horovod's Gloo launcher writes the whole environment into each worker's command line
    # (``env K=V ... python``; across hosts, the ssh command), which every user of every host reads
    # with ps: MLflow passwords and tokens, object-store keys. Secrets stay off it
    # (hvdtrain/core/secrets.py): local workers inherit them from horovodrun, remote ones get them
    # from an owner-only file (hvdtrain/launch/secret_files.py).
    (
        "horovod/runner/gloo_run.py",
        "from horovod.runner.util.remote import get_remote_command\n",
        "from horovod.runner.util.remote import get_remote_command\n"
        "from hvdtrain.core.secrets import is_secret_env  # hvdtrain: no secret on a command line\n",
    ),
    (
        "horovod/runner/gloo_run.py",
        "                          if env_util.is_exportable(key)]),",
        "                          if env_util.is_exportable(key) and not is_secret_env(key)]),",
    ),
    # horovodrun asks "built with Gloo / MPI?" before every launch by importing each framework's
    # extension in a forked process, TensorFlow first: ~5 s of CPU and wall per launch, a torch job
    # too. torch's extension answers the same question in ~1.5 s (every hvdtrain build has both).
    (
        _COMMON_UTIL,
        "EXTENSIONS = ['tensorflow', 'torch', 'mxnet']\n",
        "EXTENSIONS = ['torch', 'tensorflow', 'mxnet']  # hvdtrain: the quicker probe first\n",
    ),
    # Identity keys and tensor values that work for Keras 3 variables, used by the fixes below.
    (
        _UTIL,
        """def vars_to_refs(vars):
    if isinstance(vars, list):
        return tuple(vars_to_refs(v) for v in vars)
    return vars.ref()
""",
        """def vars_to_refs(vars):
    if isinstance(vars, list):
        return tuple(vars_to_refs(v) for v in vars)
    return _ref(vars)


def _ref(x):
    \"\"\"hvdtrain: ``x.ref()``; Keras 3 variables have none, so key them by identity the same way.\"\"\"
    from tensorflow.python.util import object_identity
    return x.ref() if hasattr(x, "ref") else object_identity.Reference(x)


def _tf_variable(v):
    \"\"\"hvdtrain: the tf.Variable behind a Keras 3 variable (its ``value`` outside any autocast); else ``v``.\"\"\"
    if isinstance(v, tf.Variable) or not isinstance(v, tf.__internal__.types.Tensor):
        return v
    value = v.value
    return value if isinstance(value, tf.Variable) else v


def _tf_value(x):
    \"\"\"hvdtrain: a Keras 3 variable (a tensor-like whose dtype is a string) as a tf.Tensor.\"\"\"
    if isinstance(x, (tf.Tensor, tf.Variable, tf.IndexedSlices)) or not isinstance(x, tf.__internal__.types.Tensor):
        return x
    return tf.convert_to_tensor(x)
""",
    ),
    # broadcast_variables: a Keras 3 variable passed into the tf.function is traced as a tensor
    # (no ``assign``): pass its backing tf.Variable.
    (
        "horovod/tensorflow/functions.py",
        """        inplace: whether to perform in-place broadcasts
    \"\"\"
""",
        """        inplace: whether to perform in-place broadcasts
    \"\"\"
    variables = [_tf_variable(v) for v in variables]  # hvdtrain: Keras 3 variables
""",
    ),
    (
        "horovod/tensorflow/functions.py",
        "from horovod.tensorflow.util import _cache, _executing_eagerly, _make_subgraph",
        "from horovod.tensorflow.util import _cache, _executing_eagerly, _make_subgraph, _tf_variable  # hvdtrain",
    ),
    (
        _TAPE,
        "from horovod.tensorflow.util import _executing_eagerly, _make_subgraph, _cache, vars_to_refs, refs_to_vars",
        "from horovod.tensorflow.util import _executing_eagerly, _make_subgraph, _cache, vars_to_refs, refs_to_vars, \\\n"
        "    _ref, _tf_value  # hvdtrain: Keras 3 variables",
    ),
    # allreduce / grouped_allreduce of a Keras 3 variable: reduce its value.
    (
        _TAPE,
        """    op = handle_average_backwards_compatibility(op, average)

    if isinstance(tensor, tf.IndexedSlices):""",
        """    op = handle_average_backwards_compatibility(op, average)
    tensor = _tf_value(tensor)  # hvdtrain: Keras 3 variables

    if isinstance(tensor, tf.IndexedSlices):""",
    ),
    (
        _TAPE,
        """    if not tensors:
        return tensors

    op = handle_average_backwards_compatibility(op, average)
""",
        """    if not tensors:
        return tensors

    op = handle_average_backwards_compatibility(op, average)
    tensors = [_tf_value(t) for t in tensors]  # hvdtrain: Keras 3 variables
""",
    ),
    # DistributedGradientTape / PartialDistributedGradientTape over Keras 3 variables.
    (_TAPE, "self._local_sources.add(source.ref())", "self._local_sources.add(_ref(source))"),
    (
        _TAPE,
        "s2g = {s.ref() : g for s,g in zip(sources, gradients)}",
        "s2g = {_ref(s) : g for s,g in zip(sources, gradients)}",
    ),
    (
        _TAPE,
        "                    if s.ref() not in self._local_sources:",
        "                    if _ref(s) not in self._local_sources:",
    ),
    (_TAPE, "s2g[rs.ref()] = rg", "s2g[_ref(rs)] = rg"),
    (_TAPE, "return [s2g[s.ref()] for s in sources]", "return [s2g[_ref(s)] for s in sources]"),
    (
        _TAPE,
        "is_local_source = s.ref() in self._local_sources if",
        "is_local_source = _ref(s) in self._local_sources if",
    ),
    # horovod.keras / horovod.tensorflow.keras: a Keras 3 optimizer takes hvdtrain's gradient path.
    (
        _KERAS,
        """                                 scale_local_gradients=True):
    class _DistributedOptimizer(*optimizer.__class__.__bases__):""",
        """                                 scale_local_gradients=True):
    from hvdtrain.keras import horovod_api  # hvdtrain: Keras 3 optimizers (Keras 2 internals below)
    if horovod_api.is_keras3_optimizer(optimizer):
        return horovod_api.distributed_optimizer(
            optimizer, device_dense=device_dense, device_sparse=device_sparse, compression=compression,
            sparse_as_dense=sparse_as_dense, gradient_predivide_factor=gradient_predivide_factor, op=op,
            backward_passes_per_step=backward_passes_per_step,
            average_aggregated_gradients=average_aggregated_gradients, groups=groups, process_set=process_set)

    class _DistributedOptimizer(*optimizer.__class__.__bases__):""",
    ),
    (
        _KERAS,
        """def load_model(keras, wrap_optimizer, filepath, custom_optimizers, custom_objects, legacy_opts=False):
""",
        """def load_model(keras, wrap_optimizer, filepath, custom_optimizers, custom_objects, legacy_opts=False):
    from hvdtrain.keras import horovod_api  # hvdtrain: Keras 3 loads by class name, then wraps the loaded optimizer
    if not legacy_opts:
        return horovod_api.load_model(keras, wrap_optimizer, filepath, custom_optimizers, custom_objects)
""",
    ),
    # Horovod's callbacks on Keras 3: broadcast and metric averaging are hvdtrain's (one broadcast,
    # one average, plus the tripwire); the LR callbacks read and set the LR the Keras 3 way, and the
    # warmup ramp is hvdtrain's rule (the same values).
    (
        "horovod/_keras/callbacks.py",
        """class LearningRateWarmupCallbackImpl(LearningRateScheduleCallbackImpl):""",
        """# hvdtrain: Keras 3 (hvdtrain/keras/horovod_callbacks.py); these names replace the classes above.
from hvdtrain.keras.horovod_callbacks import (  # noqa: E402,F811
    BroadcastGlobalVariablesCallbackImpl, MetricAverageCallbackImpl, learning_rate, set_learning_rate,
    warmup_multiplier)


class LearningRateWarmupCallbackImpl(LearningRateScheduleCallbackImpl):""",
    ),
    (
        "horovod/_keras/callbacks.py",
        """        old_lr = self.backend.get_value(self.model.optimizer.lr)
        new_lr = self.initial_lr * self.multiplier(epoch)
        self.backend.set_value(self.model.optimizer.lr, new_lr)

        if hasattr(self.model.optimizer, 'momentum') and self.momentum_correction:
            # See the paper cited above for more information about momentum correction.
            self.restore_momentum = self.backend.get_value(self.model.optimizer.momentum)
            self.backend.set_value(self.model.optimizer.momentum,
                                   self.restore_momentum * new_lr / old_lr)
""",
        """        # hvdtrain: Keras 3 (momentum correction rescales the velocity; nothing to restore)
        set_learning_rate(self.model.optimizer, self.initial_lr * self.multiplier(epoch), self.momentum_correction)
""",
    ),
    *[
        (
            "horovod/_keras/callbacks.py",
            f"{indent}self.backend.get_value(self.model.optimizer.lr)",
            f"{indent}learning_rate(self.model.optimizer)  # hvdtrain: Keras 3",
        )
        for indent in (
            "            self.initial_lr = ",
            "            logs['lr'] = ",
            "            new_lr = ",
        )
    ],
    (
        "horovod/_keras/callbacks.py",
        """        def multiplier(epoch):
            # Adjust epoch to produce round numbers at the end of each epoch, so that TensorBoard
            # learning rate graphs look better.
            epoch += 1. / self.steps_per_epoch
            return 1. / hvd.size() * (epoch * (hvd.size() - 1) / warmup_epochs + 1)""",
        """        def multiplier(epoch):  # hvdtrain: the same ramp, by hvdtrain's one warmup rule
            return warmup_multiplier(epoch, self.steps_per_epoch, warmup_epochs)""",
    ),
    # BroadcastGlobalVariablesCallback(local_variables=...) with Keras 3 variables.
    *[
        (module, old, new)
        for module in ("horovod/keras/callbacks.py", "horovod/tensorflow/keras/callbacks.py")
        for old, new in [
            (
                "elif isinstance(local_variables, tf.Variable):",
                "elif isinstance(local_variables, (tf.Variable, keras.Variable)):  # hvdtrain: Keras 3",
            ),
            (
                "elif not all(isinstance(var, tf.Variable) for var in local_variables):",
                "elif not all(isinstance(var, (tf.Variable, keras.Variable)) for var in local_variables):",
            ),
        ]
    ],
    # Elastic: a Keras 3 optimizer's variables (a property, empty until built); a traced step that
    # still holds the old world size is traced again after a reset; run() re-raises what it cannot
    # recover from (0.28.1 swallowed any other UnknownError and returned None) and recognises a
    # failed Horovod op however Keras 3's fit raises it.
    (
        _ELASTIC,
        "            self._saved_optimizer_state = [tf.identity(var) for var in self.optimizer.variables()]",
        "            self._saved_optimizer_state = [tf.identity(var) for var in _optimizer_variables(self)]",
    ),
    (
        _ELASTIC,
        """            for var, saved_var in zip(self.optimizer.variables(), self._saved_optimizer_state):""",
        """            for var, saved_var in zip(_optimizer_variables(self), self._saved_optimizer_state):""",
    ),
    (
        _ELASTIC,
        "            self._saved_optimizer_state = [var.numpy() for var in self.optimizer.variables()] if",
        "            self._saved_optimizer_state = [var.numpy() for var in _optimizer_variables(self)] if",
    ),
    (
        _ELASTIC,
        """        broadcast_variables(optimizer.variables(), root_rank=0)""",
        """        broadcast_variables(_optimizer_variables(model, optimizer), root_rank=0)""",
    ),
    (
        _ELASTIC,
        """    def sync(self):
        self._bcast_model()
        self._save_model()
        super(TensorFlowKerasState, self).sync()""",
        """    def sync(self):
        self._bcast_model()
        self._save_model()
        super(TensorFlowKerasState, self).sync()
        self.model.train_function = None  # hvdtrain: trace the step again for the new world size""",
    ),
    (
        _ELASTIC,
        """        except UnknownError as e:
            if 'HorovodAllreduce' in e.message or \\
                    'HorovodAllgather' in e.message or \\
                    'HorovodBroadcast' in e.message:
                raise HorovodInternalError(e)""",
        """        except tf.errors.OpError as e:  # hvdtrain: whichever OpError Keras 3 raises; others re-raised
            from hvdtrain.keras.horovod_api import is_horovod_op_error
            if is_horovod_op_error(e):
                raise HorovodInternalError(e) from e
            raise""",
    ),
    (
        _ELASTIC,
        """def _model_built(model):""",
        """def _optimizer_variables(model_or_state, optimizer=None):
    \"\"\"hvdtrain: the optimizer's variables, built first on Keras 3 (hvdtrain.keras.callbacks).\"\"\"
    from hvdtrain.keras.callbacks import optimizer_variables
    if optimizer is None:
        model_or_state, optimizer = model_or_state.model, model_or_state.optimizer
    return optimizer_variables(model_or_state, optimizer)


def _model_built(model):""",
    ),
]


def fixes(gpu: bool) -> list[tuple[str, str, str]]:
    return FIXES + (GPU_FIXES if gpu else [])


def fingerprint(gpu: bool) -> str:
    """A digest of the fixes a build applies (install.sh puts it in the wheel's cache key)."""
    return hashlib.sha256(repr(fixes(gpu)).encode()).hexdigest()[:16]


def python_fingerprint() -> str:
    """A digest of the Python fixes
    (install.sh stamps the venv with it, apart from the cache key)."""
    return hashlib.sha256(repr(PYTHON_FIXES).encode()).hexdigest()[:16]


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


def patch_python(site: str) -> None:
    """Apply ``PYTHON_FIXES`` to the pristine installed package under ``site`` (install.sh
    reinstalls the wheel first when other fixes were applied). Nothing is written unless every fix
    applies."""
    texts: dict[pathlib.Path, str] = {}
    for rel, old, new in PYTHON_FIXES:
        path = pathlib.Path(site, rel)
        text = texts.get(path) or path.read_text()
        if new in text:
            # already applied (install.sh reinstalls the wheel before applying changed fixes)
            continue
        if text.count(old) != 1:
            sys.exit(
                f"patch_horovod: expected text once in {path}, found {text.count(old)} times: "
                f"{old[:200]!r}"
            )
        texts[path] = text.replace(old, new)
    for path, text in texts.items():
        path.write_text(text)
        print(f"patched {path}")


if __name__ == "__main__":
    args = sys.argv[1:]
    gpu = "--gpu" in args
    args = [a for a in args if a != "--gpu"]
    if args == ["--fingerprint"]:
        print(fingerprint(gpu))
    elif args == ["--python-fingerprint"]:
        print(python_fingerprint())
    elif len(args) == 2 and args[0] == "--python":
        patch_python(args[1])
    elif len(args) == 1 and not args[0].startswith("-"):
        main(args[0], gpu)
    else:
        sys.exit(
            "usage: patch_horovod.py SRC [--gpu] | --fingerprint [--gpu] | --python SITE | "
            "--python-fingerprint"
        )
