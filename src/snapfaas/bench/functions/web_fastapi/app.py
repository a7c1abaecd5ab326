"""Example function: AWS Lambda Powertools (Logger, Metrics, Tracer) + FastAPI behind Mangum,
answering API Gateway HTTP API (payload v2) events. Works on demand and with SnapStart.

Everything below runs once per environment (the init phase, snapshotted with SnapStart):
`Tracer()` imports the X-Ray SDK, whose emitter opens a UDP socket; a SnapStart snapshot keeps
it, as a Lambda microVM snapshot would. Vendor the dependencies into the zip:

    pip install --target . -r requirements.txt
    snapfaas deploy . --name hello-api --handler app.handler
"""

import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from fastapi import FastAPI
from mangum import Mangum

logger = Logger(service="hello-api")
metrics = Metrics(namespace="snapfaas-examples", service="hello-api")
tracer = Tracer(service="hello-api")

app = FastAPI()


@app.get("/hello")
def hello(name: str = "world") -> dict:
    logger.info("saying hello", extra={"greeted": name})
    metrics.add_metric(name="Greetings", unit=MetricUnit.Count, value=1)
    return {"message": f"hello, {name}", "initialization_type": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE")}


asgi = Mangum(app, lifespan="off")


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event, context):
    return asgi(event, context)
