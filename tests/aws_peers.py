"""moto in server mode, the local stand-in for AWS (pytest plugin, registered in conftest).

``moto_server`` speaks the S3, SES, SNS, EventBridge and STS wire protocols on a free loopback port; the
AWS plugin's adapters reach it through explicit client arguments (:meth:`MotoPeer.client_kwargs`) or,
in app-level tests, through botocore's own ``AWS_ENDPOINT_URL`` (:meth:`MotoPeer.env`). Its
``/moto-api/data.json`` shows what it received (sent mail, SNS messages). Missing moto is a skip
locally and a failure under ``CI=true``, like every peer.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.peers import HOST, PeerProcess, free_port, http_ok, missing_peer, running

_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class MotoPeer:
    url: str
    process: PeerProcess = field(repr=False)
    region: str = "us-east-1"

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments for ``AwsClients``: moto's endpoint and throwaway credentials."""
        return {
            "region": self.region,
            "endpoint_url": self.url,
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
        }

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point the whole AWS chain at moto."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": self.region,
        }

    def data(self) -> dict[str, Any]:
        """moto's recorded state: ``data()["ses"]["RawMessage"]``, ``data()["sns"]["PlatformEndpoint"]``..."""
        with _NO_PROXY_OPENER.open(f"{self.url}/moto-api/data.json", timeout=10) as response:
            decoded: dict[str, Any] = json.load(response)
            return decoded

    def reset(self) -> None:
        """Forget every resource of every service. Tests that read :meth:`data` start with this:
        once any S3 multipart upload has run (the storage contract suite's), moto 5's
        ``data.json`` fails with a 500 (``MissingBucket`` from the parts' ``status``)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with _NO_PROXY_OPENER.open(request, timeout=10) as response:
            response.read()


@pytest.fixture(scope="session")
def moto_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoPeer]:
    if importlib.util.find_spec("moto.server") is None:
        missing_peer("moto[server] is not installed (pip install -e '.[dev]')")
    workdir = tmp_path_factory.mktemp("moto")
    port = free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    url = f"http://{HOST}:{port}"
    with running("moto", argv, workdir, lambda: http_ok(f"{url}/moto-api/data.json")) as proc:
        yield MotoPeer(url, proc)
