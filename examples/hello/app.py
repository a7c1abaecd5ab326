"""Example function: a greeting with a bit of environment introspection."""

import os
import platform
import time

STARTED = time.time()  # module code runs once per environment (the init phase)


def handler(event, context):
    name = (event or {}).get("name", "world")
    return {
        "message": f"hello, {name}",
        "python": platform.python_version(),
        "initialization_type": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
        "environment_age_s": round(time.time() - STARTED, 3),
        "request_id": context.aws_request_id,
    }
