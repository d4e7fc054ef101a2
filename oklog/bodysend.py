"""Big response bodies go to the socket without a copy in hypercorn's HTTP/1.1 path.

hypercorn (0.16–0.18) frames each ``http.response.body`` message with h11's
``Connection.send``, which returns ``b"".join([chunk header, data, CRLF])``
for a chunked body: one more copy of every byte a query answers (measured:
~15% of the node's CPU on a match-everything query, 328 MB).  h11 has the
copy-free variant, ``send_with_data_passthrough``, which returns the pieces
with ``data`` itself among them.  ``install()`` makes hypercorn's h11
protocol use it for body data of ``BIG`` bytes or more, sending the pieces
one after another on the same connection (three writes instead of one copy:
the framing bytes are a few bytes each).  Everything else -- headers, small
bodies, the end of a message, errors -- goes through hypercorn's own code.

It is a patch of a dependency's internals, so it checks what it patches and
leaves hypercorn alone (logging why) when the shape is not the one it
knows; it then only costs the copy it would have saved.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("oklog.http")

#: Body data this big or bigger skips the join (smaller data: the copy is cheaper than two more writes).
BIG = 64 << 10

_installed = False


def install() -> bool:
    """Patch hypercorn's h11 protocol (once); whether it is patched."""
    global _installed
    if _installed:
        return True
    try:
        import h11
        from hypercorn.events import RawData
        from hypercorn.protocol.h11 import H11Protocol
    except ImportError as exc:  # pragma: no cover - a hypercorn without these
        log.info("event=body_passthrough_unavailable reason=%r", exc)
        return False
    original = getattr(H11Protocol, "_send_h11_event", None)
    if original is None or not hasattr(h11.Connection, "send_with_data_passthrough"):
        log.info("event=body_passthrough_unavailable reason=unknown_hypercorn_shape")
        return False

    async def _send_h11_event(self: Any, event: Any) -> None:
        if type(event) is not h11.Data or len(event.data) < BIG:
            await original(self, event)
            return
        try:
            pieces = self.connection.send_with_data_passthrough(event)
        except h11.LocalProtocolError:  # as hypercorn does: only when the peer broke it
            if self.connection.their_state != h11.ERROR:
                raise
            return
        for piece in pieces or ():
            if piece:
                await self.send(RawData(data=piece))

    H11Protocol._send_h11_event = _send_h11_event  # type: ignore[method-assign]
    _installed = True
    return True
