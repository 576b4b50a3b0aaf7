"""``python -m wstun.server``: the same as ``wstun-server``."""

from wstun.server.cli import main

main(prog_name="wstun-server")
