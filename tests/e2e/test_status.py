"""The client's live status line: on a terminal only, redrawn, never tangled with the log."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import subprocess
import threading
import time

import pytest

from .conftest import LOG_TIMEOUT, Wstun, echo_target, echo_through

STATUS = re.compile(r"wstun: (\d+) open \| up ([\d.]+ \w?B)[^|]* \| down ([\d.]+ \w?B)")
LOG_LINE = re.compile(r"\x1b\[K(\d{4}-\d\d-\d\d [\d:,]+ \w+ wstun\.client: [^\r\n]*)\r\n")


class Terminal:
    """wstun-client with stderr on a pseudo-terminal; everything it draws, collected."""

    def __init__(self, argv: list[str]) -> None:
        controller, terminal = pty.openpty()
        self.output = ""
        self._changed = threading.Condition()
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=terminal
        )
        os.close(terminal)
        self._controller = controller
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._controller, 65536)
            except OSError:  # the terminal's last writer is gone
                data = b""
            with self._changed:
                self.output += data.decode(errors="replace")
                self._changed.notify_all()
            if not data:
                return

    def wait_for(
        self, pattern: re.Pattern[str] | str, timeout: float = LOG_TIMEOUT
    ) -> re.Match[str]:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while (match := regex.search(self.output)) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no {regex.pattern!r} on the terminal:\n{self.output!r}")
                self._changed.wait(remaining)
            return match

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            self.popen.wait(10)
        os.close(self._controller)


@pytest.fixture
def terminals():
    started: list[Terminal] = []

    def start(argv: list[str]) -> Terminal:
        terminal = Terminal(argv)
        started.append(terminal)
        return terminal

    yield start
    for terminal in started:
        terminal.stop()


async def test_status_line_counts_and_stays_out_of_the_log(wstun: Wstun, target, terminals) -> None:
    """On a terminal: one line with tunnels and bytes, redrawn; log lines stay whole."""
    port = await target(echo_target())
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}")
    client = terminals([wstun.client_cmd, "-L", f"0:127.0.0.1:{port}", f"ws://127.0.0.1:{sport}/"])
    forwarding = await asyncio.to_thread(client.wait_for, r"forwarding 127\.0\.0\.1:(\d+) ")
    await asyncio.to_thread(client.wait_for, STATUS)
    payload = os.urandom(1_000_000)
    assert await echo_through(int(forwarding.group(1)), payload) == payload
    # The tunnel's bytes appear in a redraw within a second or so of its end.
    await asyncio.to_thread(client.wait_for, r"wstun: 0 open \| up 1\.0 MB[^|]* \| down 1\.0 MB")
    await asyncio.to_thread(client.wait_for, r"tunnel closed id=c\d+ [^\r\n]*end=eof")
    lines = LOG_LINE.findall(client.output)
    assert any("forwarding 127.0.0.1:" in line for line in lines)
    assert any("tunnel closed" in line and "up=1000000" in line for line in lines)
    assert not any("wstun: " in line.partition("wstun.client: ")[0] for line in lines)
    assert not any(STATUS.search(line) for line in lines), "status text inside a log line"


@pytest.mark.parametrize("level", [["-q"], ["--log-level", "debug"]], ids=["-q", "debug"])
async def test_no_status_line_when_quiet_or_debugging(
    wstun: Wstun, target, terminals, tmp_path, level: list[str]
) -> None:
    """-q and --log-level debug leave the terminal to the log alone."""
    port = await target(echo_target())
    token = tmp_path / "token"
    token.write_text("a-token-the-client-does-not-have")
    _, sport = await wstun.server("--allow", f"127.0.0.1:{port}", "--token-file", str(token))
    client = terminals(
        [wstun.client_cmd, *level, "-L", f"0:127.0.0.1:{port}", f"ws://127.0.0.1:{sport}/"]
    )
    # A status line would be drawn before anything else; the check's warning comes later.
    await asyncio.to_thread(client.wait_for, r"WARNING wstun\.client: server check refused: 401")
    assert "\x1b[K" not in client.output
    assert not STATUS.search(client.output)


async def test_no_status_line_off_a_terminal(wstun: Wstun, target) -> None:
    """With stderr a pipe (as in every other test), the log is plain lines only."""
    port = await target(echo_target())
    _, client, local = await wstun.tunnel(port)
    assert await echo_through(local, b"x") == b"x"
    await client.wait_for(r"tunnel closed")
    assert "\x1b[" not in client.log
    assert "wstun: " not in client.log
