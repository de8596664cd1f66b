"""``python -m hvdtrain.launch.horovodrun ARGS``:
horovodrun, answering its build probe from the install.

Before it starts anything, horovodrun asks whether Horovod was built with Gloo (or MPI) by
importing each framework's Horovod extension in a forked process, TensorFlow first: every job, a
torch job too, pays TensorFlow's import (seconds of CPU) and prints its start-up lines.
``scripts/install.sh`` asked the same once (``horovodrun --check-build``) and recorded the answer
(``core.versions.controllers``); ``hvdtrain run``, ``doctor`` and the benchmark start horovodrun
through this module (``COMMAND``: also where no ``horovodrun`` script lies beside the interpreter,
as in a virtualenv over the one Horovod was installed in), which gives horovodrun that answer
instead. With no record for this build, horovodrun probes as usual.
Everything else is horovodrun's own ``run_commandline``.
"""

from __future__ import annotations

import sys

from ..core import versions

PROBES = ("gloo_built", "mpi_built")  # what horovod.runner.launch calls before launching
# horovodrun of the running interpreter
COMMAND = (sys.executable, "-m", "hvdtrain.launch.horovodrun")


def main() -> int:
    from horovod.runner import launch

    built = versions.controllers()
    if built is not None:
        missing = [name for name in PROBES if not callable(getattr(launch, name, None))]
        if missing:  # Horovod moved its probes: say so rather than probe silently
            raise SystemExit(
                f"hvdtrain: error: horovod.runner.launch has no {', '.join(missing)} any more "
                f"(Horovod {versions.running('horovod')}); hvdtrain/launch/horovodrun.py needs "
                "updating"
            )
        launch.gloo_built = lambda verbose=False: "gloo" in built
        launch.mpi_built = lambda verbose=False: "mpi" in built
    sys.argv[0] = "horovodrun"
    return launch.run_commandline() or 0


if __name__ == "__main__":
    sys.exit(main())
