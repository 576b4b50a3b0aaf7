"""``python -m wstun.client``: the same as ``wstun-client``."""

from wstun.client.cli import main

main(prog_name="wstun-client")
