"""Property-based fuzzing of every endpoint in the served OpenAPI schema (schemathesis).

The appliance runs as a real process; every operation gets generated requests, with the root key
and without one. No response may be a 5xx, and every 4xx must be problem+json. Endpoints added
later are covered automatically because the schema is read from the running server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT_KEY
from tests.process import run_appliance

EXAMPLES_PER_OPERATION = 25
# Routes whose bodies are not JSON documents (object bytes, WebSocket upgrades, Stripe's signed
# payloads) are fuzzed by their own capability tests.
SKIP_METHODS_PATHS: set[tuple[str, str]] = set()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, stripe_peer: Any) -> Any:
    data = Path(tmp_path_factory.mktemp("fuzz")) / "data"
    env = {
        "APPLIANCE_ROOT_KEY": ROOT_KEY,
        "APPLIANCE_RATE_LIMIT_PER_KEY": "",
        "APPLIANCE_RATE_LIMIT_PER_IP": "",
        # Every capability live (a disabled one answers 503 by design), on its test peer.
        "APPLIANCE_STRIPE_KEY": "sk_test_fuzz",
        "APPLIANCE_STRIPE_API_BASE": stripe_peer.url,
        "APPLIANCE_STRIPE_WEBHOOK_SECRET": "whsec_fuzz",
    }
    with run_appliance(data, env) as process:
        yield process


def _check(response: Any, label: str) -> None:
    assert response.status_code < 500, f"{label} -> {response.status_code}: {response.text[:500]}"
    if response.status_code >= 400 and not label.startswith("HEAD"):  # HEAD answers carry no body
        # schemathesis keeps each header as a list of values.
        content_type = "".join(response.headers.get("content-type", []))
        assert content_type.startswith("application/problem+json"), (
            f"{label} -> {content_type}: {response.text[:300]}"
        )
        body = response.json()
        assert {"type", "title", "status", "detail"} <= body.keys(), f"{label}: {body}"


@pytest.mark.timeout(300)
def test_no_endpoint_answers_5xx_or_non_problem_errors(running: Any) -> None:
    schema = schemathesis.openapi.from_url(running.url + "/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        if (operation.method.upper(), operation.path) in SKIP_METHODS_PATHS:
            continue

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(), authed=st.booleans())
        def fuzz(case: Any, authed: bool) -> None:
            headers = {"Authorization": f"Bearer {ROOT_KEY}"} if authed else {}
            response = case.call(base_url=running.url, headers=headers, timeout=10)
            _check(response, f"{case.method} {case.formatted_path}")

        fuzz()
