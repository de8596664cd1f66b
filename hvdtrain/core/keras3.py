"""Keras 2 usage that Keras 3 removed, named with what to write instead.

Scripts written for Horovod's Keras examples (Keras 2) stop on Keras 3 with a deep traceback whose
last line names the symptom, not the fix. ``failures``' exception hook prints the matching line
here instead (``HVDTRAIN_TRACEBACK=1`` keeps the traceback). Text matching only: nothing here
imports a framework.
"""

from __future__ import annotations

import re
import traceback

# (exception type name, pattern of its message, the line to print[, pattern of the failing line])
REMOVED = [
    (
        "TypeError",
        r"unexpected keyword argument 'experimental_run_tf_function'",
        "compile(experimental_run_tf_function=...) was removed in Keras 3: delete the argument "
        "(Keras 3 always runs the train step as a tf.function, and Horovod's DistributedOptimizer "
        "works inside it)",
    ),
    (
        "TypeError",
        r"unexpected keyword argument '(workers|use_multiprocessing|max_queue_size)'",
        "fit(workers=, use_multiprocessing=, max_queue_size=) were removed in Keras 3: delete "
        "them (a keras.utils.PyDataset takes them)",
    ),
    (
        "ValueError",
        r"Argument\(s\) not recognized: \{'lr'",
        "the optimizer argument lr= was removed in Keras 3: write learning_rate=",
    ),
    (
        "AttributeError",
        r"object has no attribute 'fit_generator'",
        "model.fit_generator was removed in Keras 3: call model.fit with the generator",
    ),
    (
        "AttributeError",
        r"has no attribute 'legacy'",
        "keras.optimizers.legacy was removed in Keras 3: use the optimizer from keras.optimizers",
    ),
    (
        "TypeError",
        r"'list' object is not callable",
        "optimizer.variables() became a property in Keras 3: write optimizer.variables (no call)",
        r"\.variables\(\)",
    ),
    (
        "AttributeError",
        r"backend' has no attribute '(get_value|set_value)'",
        "keras.backend.get_value/set_value were removed in Keras 3: read with "
        "keras.ops.convert_to_numpy(variable), write with variable.assign(value)",
    ),
]


def explain(err: BaseException) -> str | None:
    """The line for ``err`` when it is Keras 3 refusing removed Keras 2 usage, else None."""
    for kind, pattern, line, *source in REMOVED:
        if (
            type(err).__name__ == kind
            and re.search(pattern, str(err))
            and all(re.search(s, _failing_line(err)) for s in source)
        ):
            return line
    return None


def _failing_line(err: BaseException) -> str:
    frames = traceback.extract_tb(err.__traceback__)
    return frames[-1].line or "" if frames else ""
