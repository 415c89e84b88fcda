"""The serving API fuzzed from its own OpenAPI schema (schemathesis): generated valid and invalid
requests to every endpoint, against one published run on the real server, never get a 5xx and
always get a response that matches the schema. The endpoints that launch Dagster runs are left
out of the generation (without a Dagster webserver they answer 503 by design; test_serving_e2e
launches them) but not out of the targeted cases: raw bodies that JSON libraries let through and
storage or the answer cannot hold (NaN, Infinity, integers beyond 64 bits, lone surrogates, deep
nesting), sent to every body-taking endpoint, launches included, are a 4xx, never a 500."""

import re

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from twotower_pipeline.serving.app import create_app
from twotower_pipeline.serving.guard import key_group
from twotower_pipeline_tests.serving_client import KEYS, keyed_client, keyed_settings

EXCLUDED = re.compile(r"/train|/batch-score|/api/v1/jobs/")
#: The request bodies of the targeted cases, each a field of some endpoint in place of its value.
INVOCATION = b'{"campaign": "c", "customer": "sim_c001", "in_params": {"weather": %s}}'
POISON = [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"123456789012345678901234567890",
          b"-9223372036854775809", b'"\\ud800"', b'"a\\udfffb"']
DEEP = b"[" * 5000 + b"]" * 5000
NESTED = b"[" * 600 + b"]" * 600


def _bodies():
    """(path, raw body) of the targeted cases."""
    for value in POISON:
        yield "/invocations", INVOCATION % value
        yield "/invocations", b'{"campaign": "c", "customer": %s}' % value
        yield "/invocations", b'{"campaign": "c", "customer": "x", "numberoffers": %s}' % value
        yield "/response", b'{"uuid": %s, "offers_accepted": []}' % value
        for field in (b"price", b"rank", b"score", b"age"):
            yield "/pytorch/invocations", (b'{"model_id": "two_tower_user_run_a", "instances": '
                                           b'[{"customer_id": "sim_c001", "%s": %s}]}' % (field, value))
        yield "/api/v1/algorithms/two-tower/train", b'{"predictor": "p", "learning_rate": %s}' % value
        yield "/api/v1/algorithms/two-tower/train", b'{"predictor": "p", "seed": %s}' % value
        yield "/api/v1/algorithms/two-tower/train", b'{"predictor": "p", "user_features": [%s]}' % value
        yield "/pytorch/train", b'{"hyperparameters": {"predictor": "p", "epochs": %s}}' % value
        yield "/pytorch/train", b'{"hyperparameters": {"predictor": "p"}, "data": {"random_state": %s}}' % value
        yield "/pytorch/train", b'{"hyperparameters": {"predictor": "p"}, "data": {"train_test_split": %s}}' % value
        yield "/api/v1/algorithms/two-tower/batch-score", b'{"run_id": "run_a", "max_users": %s}' % value
        yield "/api/v1/algorithms/two-tower/batch-score", b'{"run_id": "run_a", "top_k": %s}' % value
        yield "/api/v1/algorithms/two-tower/concept-test", b'{"run_id": "run_a", "customer_id": %s}' % value
    for deep in (DEEP, NESTED):
        yield "/invocations", b'{"campaign": "c", "customer": %s}' % deep
        yield "/invocations", INVOCATION % deep
        yield "/api/v1/algorithms/two-tower/train", b'{"predictor": "p", "user_features": %s}' % deep
        yield "/pytorch/train", b'{"hyperparameters": {"predictor": "p", "hidden": %s}}' % deep
        yield "/pytorch/invocations", b'{"model_id": "m", "instances": %s}' % deep


@pytest.fixture
def app(published_run, tmp_path):
    store, _, _ = published_run
    return create_app(store, keyed_settings(reload_s=3600, sidecar="local", journal_dir=str(tmp_path / "journal")))


def test_generated_requests_never_fail_the_service(app):
    # schemathesis runs the app's lifespan itself (the live run's scorer, the log journal), once
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    tried, expected = [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        if EXCLUDED.search(operation.path):
            continue
        expected.append(operation.label)
        group = key_group(operation.method.upper(), operation.path)
        headers = {"X-API-Key": KEYS[group]} if group else {}

        @given(case=operation.as_strategy())
        @settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            case.call_and_validate(headers=headers, checks=[not_a_server_error, response_schema_conformance])

        fuzz()
        tried.append(operation.label)
    # every runtime, sidecar and read-only workbench endpoint
    assert len(tried) >= 9 and tried == expected, tried


def test_what_json_lets_through_and_storage_cannot_hold_is_a_client_error(app):
    with keyed_client(app) as client:
        for path, body in _bodies():
            reply = client.post(path, content=body, headers={"content-type": "application/json"})
            assert 400 <= reply.status_code < 500, (path, body[:120], reply.status_code, reply.text[:300])
            assert reply.json()["detail"]  # an answer that says why, itself valid JSON
        for key in ("ключ".encode(), b"\xff\xfe", b"k" * 4000):
            reply = client.post("/invocations", content=INVOCATION % b"1", headers={
                "content-type": "application/json", "X-API-Key": key})
            assert reply.status_code == 401, reply.text
