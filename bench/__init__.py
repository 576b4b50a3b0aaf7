"""Benchmark suite: wstun against direct TCP, socat, websocat and websockify."""
