"""An event rule with a `channel` target reaches a WebSocket subscriber, in a real process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from tests.conftest import ROOT, ROOT_KEY
from tests.process import run_appliance


async def test_rule_delivers_matching_events_to_channel_subscribers(tmp_path: Path) -> None:
    with run_appliance(tmp_path / "data", {"APPLIANCE_ROOT_KEY": ROOT_KEY}) as proc:
        async with httpx.AsyncClient(base_url=proc.url, headers=ROOT) as http:
            rule = {
                "name": "live orders",
                "pattern": {"type": [{"prefix": "order."}], "payload": {"total": [{"numeric": [">", 100]}]}},
                "targets": [{"kind": "channel", "name": "orders"}],
            }
            assert (await http.post("/v1/rules", json=rule)).status_code == 201
            ws_url = proc.url.replace("http://", "ws://") + "/v1/ws"
            async with connect(ws_url, additional_headers=ROOT, open_timeout=10) as ws:
                assert json.loads(await ws.recv())["event"] == "welcome"
                await ws.send(json.dumps({"op": "subscribe", "channel": "orders"}))
                assert json.loads(await ws.recv())["event"] == "subscribed"
                for total in (50, 150):  # only the second matches the numeric range
                    event = {"source": "shop", "type": "order.paid", "payload": {"total": total}}
                    assert (await http.post("/v1/events", json=event)).status_code == 202
                frame = json.loads(await asyncio.wait_for(ws.recv(), timeout=15))
                assert frame["channel"] == "orders" and frame["event"] == "order.paid"
                assert frame["data"]["payload"] == {"total": 150}
