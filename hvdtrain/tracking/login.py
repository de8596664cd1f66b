"""Before any worker starts: a tracking server that requires a login accepts this job's.

A shared MLflow server with authentication (``mlflow server --app-name basic-auth``, or a proxy
that checks a bearer token) answers every call with HTTP 401 when the credentials are wrong or
missing. The workers would find out only after their start-up, and rank 0 would then train
untracked (tracking never stops training). So the launcher asks once, as MLflow's client would
(``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` as basic auth, else
``MLFLOW_TRACKING_TOKEN`` as a bearer token), and a refusal is one line, exit 2. Any other answer,
or none (a server down: the tracker keeps the job's records and says so), is left to the tracker.

Standard library only: the launcher never imports MLflow.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping

from ..core.errors import UsageError

TIMEOUT_S = 5.0
PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"  # any logged-in user may call it


def check(env: Mapping[str, str]) -> None:
    """``UsageError`` when the HTTP tracking server in ``env`` refuses its credentials."""
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
        return
    request = urllib.request.Request(uri.rstrip("/") + PROBE)
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    token = env.get("MLFLOW_TRACKING_TOKEN")
    if user and password:  # MLflow's client takes these first, as here
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {basic}")
        given = f"the user {user} and MLFLOW_TRACKING_PASSWORD"
    elif token:
        request.add_header("Authorization", f"Bearer {token}")
        given = "the token in MLFLOW_TRACKING_TOKEN"
    else:
        given = None
    try:
        urllib.request.urlopen(request, timeout=TIMEOUT_S).close()
    except urllib.error.HTTPError as err:
        if err.code == 401:
            raise UsageError(_refused(_shown(uri), given)) from None
    except (OSError, ValueError):
        pass  # down or unreachable: the tracker's own lines say so


def _refused(uri: str, given: str | None) -> str:
    if given is None:
        return (
            f"the MLflow server at {uri} requires a login (HTTP 401): set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN"
        )
    return f"the MLflow server at {uri} refused {given} (HTTP 401): check the credentials"


def _shown(uri: str) -> str:
    """``uri`` without any user or password written into it."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
