"""Which names hold credentials, in a config (its keys are never logged as MLflow params) and in
the environment (its variables never go on a command line, where every user of a host reads them
with ``ps``).

One rule for both: the name looks like a credential (``MLFLOW_TRACKING_PASSWORD``,
``MLFLOW_TRACKING_TOKEN``, ``AWS_SECRET_ACCESS_KEY``, ``HF_TOKEN``, a config's ``api_key``), or the
user named it (``hvdtrain run --secret-env NAME``, passed on as ``SECRET_ENV``). Standard library
only: Horovod's launcher imports it (``scripts/patch_horovod.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

SECRET_ENV = (
    "HVDTRAIN_SECRET_ENV"  # comma-separated names that hold secrets whatever they look like
)

_SECRET = re.compile(
    r"secret|token|passw|pwd|credential|auth|api_?key|access_?key|private_?key"
    r"|(^|[._\-/])key$",
    re.IGNORECASE,
)


def looks_secret(name: str) -> bool:
    return bool(_SECRET.search(name))


# The shell's working directories: "pwd" in a config key is a password, in these names it is not.
_NOT_SECRET_ENV = frozenset({"PWD", "OLDPWD"})


def is_secret_env(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment variable ``name`` holds a secret (``environ``: where the user's own
    list is read; the process's environment by default)."""
    environ = os.environ if environ is None else environ
    if name in environ.get(SECRET_ENV, "").split(","):
        return True
    return looks_secret(name) and name not in _NOT_SECRET_ENV


def secret_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``environ`` that hold secrets."""
    return {k: v for k, v in environ.items() if is_secret_env(k, environ)}
