"""The serving API fuzzed from its own OpenAPI schema (schemathesis): generated valid and invalid
requests to every endpoint, against one published run on the real server, never get a 5xx and
always get a response that matches the schema. The endpoints that launch Dagster runs are left
out (without a Dagster webserver they answer 503 by design; test_serving_e2e launches them)."""

import re

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from twotower_pipeline.serving.app import create_app
from twotower_pipeline.serving.settings import ServeSettings


EXCLUDED = re.compile(r"/train|/batch-score|/api/v1/jobs/")


def test_generated_requests_never_fail_the_service(published_run):
    store, _, _ = published_run
    app = create_app(store, ServeSettings(reload_s=3600, sidecar="local"))
    with TestClient(app):  # the lifespan: the live run's scorer and the log writer
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        tried = []
        for result in schema.get_all_operations():
            operation = result.ok()
            if EXCLUDED.search(operation.path):
                continue

            @given(case=operation.as_strategy())
            @settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def fuzz(case):
                case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])

            fuzz()
            tried.append(operation.label)
    assert len(tried) == 9, tried  # every runtime, sidecar and read-only workbench endpoint
