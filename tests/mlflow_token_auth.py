"""A login for the tests' ``mlflow server --app-name basic-auth`` that also takes a bearer token,
through MLflow's own hook for that (``authorization_function`` in its auth config): what a server
behind a proxy or an identity provider that issues tokens does. A job then tracks with
``MLFLOW_TRACKING_TOKEN`` alone. The token is the admin's, ``TOKEN_ENV`` in the server's
environment; any other ``Authorization`` is MLflow's basic auth, unchanged.
"""

import hmac
import os

TOKEN_ENV = "HVDTRAIN_TEST_MLFLOW_TOKEN"


def authenticate():
    # the server's modules, imported in the server (the tests import this module for TOKEN_ENV)
    from flask import request
    from mlflow.server.auth import authenticate_request_basic_auth, make_basic_auth_response
    from werkzeug.datastructures import Authorization

    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return authenticate_request_basic_auth()
    if hmac.compare_digest(header.removeprefix("Bearer "), os.environ[TOKEN_ENV]):
        return Authorization("bearer", {"username": "admin"})
    return make_basic_auth_response()
