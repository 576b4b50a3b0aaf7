"""Whole binary frames taken straight off a received chunk (RFC 6455 section 5.2).

A tunnel's data path receives one small binary message after another. Each
one through websockets' parser costs a stack of generators, a ``Frame`` and
its checks; :func:`take_binary_frames` reads the common case, a complete,
unfragmented, non-empty binary frame, with a few byte tests instead, and
stops at the first frame that is anything else. What it leaves is parsed by
websockets as before, so every other frame (control frames, text, fragments,
reserved bits, wrong masking, too large, cut across reads) gets websockets'
own handling and errors. :class:`~wstun.common.streams.internals.TunnelConnection`
calls it only while websockets' parser waits at a frame boundary.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["FIN_BINARY", "Unmask", "take_binary_frames"]

#: FIN set, no reserved bits, opcode 2 (binary): the first byte of every
#: frame this module takes (and of every frame wstun writes straight).
FIN_BINARY = 0x82


#: Unmasks a payload with a 4-byte key (websockets' ``apply_mask``).
Unmask = Callable[[memoryview, bytes], bytes]


def take_binary_frames(
    data: bytes, *, unmask: Unmask | None, max_size: int, sink: Callable[[bytes], bool]
) -> int:
    """Give ``sink`` the payload of each whole binary message at the start of ``data``.

    A frame is taken when it is a single-frame binary message (FIN, no
    reserved bits), masked exactly when frames must be (``unmask`` given:
    those a server receives, RFC 6455 section 5.3), with 1 to ``max_size``
    payload bytes, all of it in ``data``; and when ``sink`` accepts its
    payload (unmasked). The first frame that is not taken, and everything
    after it, stays.

    Returns how many bytes of ``data`` the taken frames occupied.
    """
    end = len(data)
    masked = unmask is not None
    mask_bit = 0x80 if masked else 0
    pos = 0
    view: memoryview | None = None
    while end - pos >= 2:
        if data[pos] != FIN_BINARY:
            break
        second = data[pos + 1]
        if second & 0x80 != mask_bit:
            break
        length = second & 0x7F
        start = pos + 2
        if length == 126:
            if end - start < 2:
                break
            length = (data[start] << 8) | data[start + 1]
            start += 2
        elif length == 127:
            if end - start < 8:
                break
            length = int.from_bytes(data[start : start + 8], "big")
            start += 8
        if length == 0 or length > max_size:
            break
        if unmask is not None:
            key = start
            start += 4
            stop = start + length
            if stop > end:
                break
            if view is None:
                view = memoryview(data)
            payload = unmask(view[start:stop], data[key:start])
        else:
            stop = start + length
            if stop > end:
                break
            payload = data[start:stop]
        if not sink(payload):
            break
        pos = stop
    return pos
