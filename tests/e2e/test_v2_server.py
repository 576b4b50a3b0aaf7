"""wstun-server's side of wstun.v2: tunnels opened in-band, one after another, on one WebSocket.

The client here is websockets itself, speaking the protocol by hand, so that
every rule (and every way to break one) can be driven exactly.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from .conftest import Process, Wstun, echo_target

TIMEOUT = 10.0
TOKEN = "v2-token"
V2 = Subprotocol("wstun.v2")
V1 = Subprotocol("wstun.v1")


async def open_ws(
    port: int, query: str = "", subprotocols: list[Subprotocol] | None = None
) -> ClientConnection:
    return await connect(
        f"ws://127.0.0.1:{port}/{query}",
        subprotocols=subprotocols or [V2, V1],
        additional_headers=[("Authorization", f"Bearer {TOKEN}")],
        proxy=None,
        ping_interval=None,
    )


async def control(ws: ClientConnection) -> dict[str, object]:
    message = await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert isinstance(message, str), message
    data: dict[str, object] = json.loads(message)
    return data


async def echo_over(ws: ClientConnection, payload: bytes) -> bytes:
    """One tunnel's worth on an open WebSocket: payload, EOF, the echo to its EOF."""
    await ws.send(payload)
    await ws.send(b"")  # EOF marker
    received = bytearray()
    while (message := await asyncio.wait_for(ws.recv(), TIMEOUT)) != b"":
        assert isinstance(message, bytes)
        received += message
    return bytes(received)


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Read until the server closes; its close code and reason."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    except ConnectionClosed as closed:
        frame = closed.rcvd
    if frame is None:
        pytest.fail("the server closed without a close frame")
    return frame.code, frame.reason


V2Server = tuple[Process, int, int, int, list[bytes]]


@pytest.fixture
async def v2_server(wstun: Wstun, target, tmp_path: Path) -> V2Server:
    """A server with a token, two allowed echo targets, and what each target received."""
    received: list[bytes] = []
    first = await target(echo_target(received))
    second = await target(echo_target(received))
    token = tmp_path / "token"
    token.write_text(TOKEN)
    server, port = await wstun.server(
        "--token-file", str(token),
        "--allow", f"127.0.0.1:{first}", "--allow", f"127.0.0.1:{second}",
    )  # fmt: skip
    return server, port, first, second, received


async def test_v2_is_chosen_when_offered_and_v1_stays(v2_server) -> None:
    """Offering v2 gets v2, in either order (the client offers v1 first); only v1 gets v1."""
    _, port, first, _, _ = v2_server
    for offer in ([V2, V1], [V1, V2]):
        ws = await open_ws(port, f"?to=127.0.0.1:{first}", offer)
        assert ws.subprotocol == "wstun.v2"
        await ws.close()
    ws = await open_ws(port, f"?to=127.0.0.1:{first}", [V1])
    assert ws.subprotocol == "wstun.v1"
    await ws.close()


async def test_tunnels_one_after_another_on_one_websocket(v2_server) -> None:
    """The upgrade's tunnel, then two opened in-band: each byte-exact, each its own log line."""
    server, port, first, second, received = v2_server
    ws = await open_ws(port, f"?to=127.0.0.1:{first}")
    payloads = [os.urandom(100_000), b"second", os.urandom(3000)]
    assert await echo_over(ws, payloads[0]) == payloads[0]
    for payload, target in ((payloads[1], second), (payloads[2], first)):
        await ws.send(json.dumps({"type": "open", "target": f"127.0.0.1:{target}"}))
        assert await control(ws) == {"type": "opened"}
        assert await echo_over(ws, payload) == payload
    await ws.close()
    lines = await server.wait_for(r"tunnel closed id=s\d+ .* up=(\d+) down=(\d+) .*end=eof", 3)
    assert [int(line.group(1)) for line in lines] == [len(p) for p in payloads]
    assert sorted(received) == sorted(payloads)


async def test_idle_upgrade_dials_nothing_until_open(v2_server) -> None:
    """v2 without ?to= upgrades and waits; the open names the target."""
    _, port, first, _, received = v2_server
    ws = await open_ws(port)
    assert ws.subprotocol == "wstun.v2"
    await ws.send(json.dumps({"type": "open", "target": f"127.0.0.1:{first}"}))
    assert await control(ws) == {"type": "opened"}
    assert await echo_over(ws, b"hello") == b"hello"
    await ws.close()
    # The echo target records what it got before its EOF travels back.
    assert received == [b"hello"]


async def test_refusal_in_band_is_the_http_refusal(v2_server) -> None:
    """A refused open carries the HTTP refusal's status and reason, and the WebSocket goes on."""
    server, port, first, _, _ = v2_server
    ws = await open_ws(port)
    await ws.send(json.dumps({"type": "open", "target": "127.0.0.1:1"}))
    refused = await control(ws)
    assert refused["type"] == "refused"
    assert refused["status"] == 403
    assert str(refused["reason"]).startswith("target not allowed: 127.0.0.1:1 (no rule allows")
    await ws.send(json.dumps({"type": "open", "target": "no host"}))
    bad = await control(ws)
    assert bad["status"] == 400
    assert str(bad["reason"]).startswith("bad target: ")
    await ws.send(json.dumps({"type": "open", "target": f"127.0.0.1:{first}"}))
    assert await control(ws) == {"type": "opened"}
    assert await echo_over(ws, b"after two refusals") == b"after two refusals"
    await ws.close()
    await server.wait_for(r"rejected peer=127\.0\.0\.1:\d+ status=403 reason=target not allowed")


async def test_early_payload_to_a_refused_target_goes_nowhere(v2_server) -> None:
    """Payload sent behind a refused open is dropped; the next target gets only its own."""
    _, port, first, _, received = v2_server
    ws = await open_ws(port)
    await ws.send(json.dumps({"type": "open", "target": "127.0.0.1:1"}))
    await ws.send(b"secret for the refused target")
    await ws.send(b"")
    assert (await control(ws))["status"] == 403
    await ws.send(json.dumps({"type": "open", "target": f"127.0.0.1:{first}"}))
    assert await control(ws) == {"type": "opened"}
    assert await echo_over(ws, b"mine") == b"mine"
    await ws.close()
    # The echo target records what it got before its EOF travels back.
    assert received == [b"mine"]


BAD_CONTROL = [
    ("not JSON", "open please", "not JSON"),
    ("not an object", '["open"]', "not a JSON object"),
    ("unknown type", '{"type": "teleport"}', "unknown control message type 'teleport'"),
    ("no type", '{"target": "x:1"}', "without a valid type"),
    ("target of the wrong type", '{"type": "open", "target": 5}', "target must be a string"),
    ("oversized", json.dumps({"type": "open", "target": "a" * 2000}), "over 1024 bytes"),
    ("a server's message", '{"type": "opened"}', "unexpected opened from a client"),
]


@pytest.mark.parametrize(("name", "text", "reason"), BAD_CONTROL, ids=[c[0] for c in BAD_CONTROL])
async def test_bad_control_messages_close_with_1002(
    v2_server, name: str, text: str, reason: str
) -> None:
    """Each broken control message closes that WebSocket with 1002 and the reason."""
    server, port, first, _, _ = v2_server
    ws = await open_ws(port)
    await ws.send(text)
    code, why = await closed_with(ws)
    assert code == 1002
    assert reason in why
    # Everyone else is unaffected.
    other = await open_ws(port, f"?to=127.0.0.1:{first}")
    assert await echo_over(other, b"still fine") == b"still fine"
    await other.close()
    assert "Traceback" not in server.log


async def test_payload_while_idle_and_open_during_a_tunnel_are_violations(v2_server) -> None:
    """Payload with no tunnel open, and an open in the middle of one: 1002."""
    server, port, first, _, _ = v2_server
    ws = await open_ws(port)
    await ws.send(b"nobody asked")
    assert await closed_with(ws) == (1002, "payload while no tunnel is open")
    ws = await open_ws(port, f"?to=127.0.0.1:{first}")
    await ws.send(json.dumps({"type": "open", "target": f"127.0.0.1:{first}"}))
    code, why = await closed_with(ws)
    assert (code, why) == (1002, "control message during a tunnel")
    assert "Traceback" not in server.log


async def test_drain_closes_idle_v2_websockets_at_once(v2_server) -> None:
    """SIGTERM: an idle v2 WebSocket gets 1001 at once; one carrying a tunnel finishes,
    then gets 1001."""
    server, port, first, _, _ = v2_server
    idle = await open_ws(port)
    busy = await open_ws(port, f"?to=127.0.0.1:{first}")
    await busy.send(b"half")
    server.popen.terminate()
    assert (await closed_with(idle))[0] == 1001
    await busy.send(b" and the rest")
    await busy.send(b"")
    received = bytearray()
    while (message := await asyncio.wait_for(busy.recv(), TIMEOUT)) != b"":
        received += message
    assert bytes(received) == b"half and the rest"
    # Its tunnel over, the draining server closes it too, rather than wait for another.
    assert await closed_with(busy) == (1001, "server is shutting down")
    assert await asyncio.to_thread(server.popen.wait, TIMEOUT) == 0
