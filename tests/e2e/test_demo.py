"""The README's demo, run as a user would, and its --keep client command pasted as printed."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import LOG_TIMEOUT, Wstun

REPO = Path(__file__).resolve().parents[2]


def fetch(url: str) -> str:
    """An HTTP GET, as the README's curl would do it."""
    code = (
        "import sys, urllib.request; "
        "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, url], capture_output=True, text=True, timeout=LOG_TIMEOUT
    )
    return done.stdout


async def test_kept_demo_prints_a_client_command_that_works(wstun: Wstun) -> None:
    """demo.sh --keep checks its download, then prints a client command that moves bytes."""
    # The demo sets the venv up itself; here it finds this run's, already set up.
    demo = wstun.spawn(["bash", str(REPO / "scripts/demo.sh"), "--keep"], stdout=True)
    await demo.wait_for(r"matches the file on the target side")
    (command,) = await demo.wait_for(r"^  (\S+/wstun-client --token-file .*)$")
    (url,) = await demo.wait_for(r"^  curl (http://127\.0\.0\.1:\d+/)$")
    match = re.search(r"--token-file (\S+)", command.group(1))
    assert match is not None
    token_file = match.group(1)
    assert os.stat(token_file).st_mode & 0o777 == 0o600  # only its owner can read it

    client = wstun.spawn(shlex.split(command.group(1)))
    await client.wait_for(r"forwarding 127\.0\.0\.1:\d+ ")
    await client.wait_for(r"server ok \(ok: token accepted\)")
    assert "Hello from the demo target" in await asyncio.to_thread(fetch, url.group(1))
    await client.wait_for(r"tunnel closed id=c\d+ .* end=eof")

    demo.stop(signal.SIGTERM)
    with pytest.raises(FileNotFoundError):  # the demo removes its token file when it stops
        os.stat(token_file)
