"""A small trio client for the Serf agent's msgpack RPC.

Theory of operation
-------------------
One TCP connection carries a plain sequence of msgpack objects.  A request
is a header ``{"Command", "Seq"}`` optionally followed by a body; a reply is
a header ``{"Seq", "Error"}`` optionally followed by a body.  Nothing on the
wire says whether a body follows, so the reader must know it per command
(``_REPLY_HAS_BODY``), except for a few errors that always come as a bare
header (``_BARE_ERRORS``).

``open_serf_client`` owns a nursery with one reader task.  Callers register
a ``_Call`` under a fresh Seq, write the request under a send lock, and wait
for the reader to fill the call in.  Event streams are registered by the
reader itself when it sees the stream's acknowledgement, so no record can
arrive for a Seq it does not know; after ``stop`` the Seq stays known so
late records are still decoded (and dropped), keeping the framing in step.

Any timeout, EOF, undecodable byte or reply for an unknown Seq makes the
connection dead for good: every waiter and every stream gets a
``ClusterError`` and the caller is expected to reconnect.  Timeouts are
mandatory because a frozen agent (SIGSTOP) never sends EOF.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio

from oklog.errors import ClusterError

MEMBER_EVENTS = "member-join,member-leave,member-failed,member-update,member-reap"

# Commands whose successful reply carries a body after the header.
_REPLY_HAS_BODY = frozenset(
    {
        "members",
        "members-filtered",
        "join",
        "stats",
        "get-coordinate",
        "install-key",
        "use-key",
        "remove-key",
        "list-keys",
    }
)
# Errors that come as a bare header even for commands that normally have a body.
_BARE_ERRORS = frozenset(
    {"Handshake required", "Authentication required", "Unsupported command"}
)
# Go's regexp.QuoteMeta escapes exactly these.
_GO_SPECIAL = frozenset("\\.+*?()|[]{}^$")

STREAM_BUFFER = 256


def go_quote_meta(value: str) -> str:
    """Escape ``value`` so a Go (RE2) regex matches it literally.

    Serf compiles filters as ``^value$``; an invalid regex makes the agent
    close the connection, so literals must never reach it unescaped.
    """
    return "".join("\\" + c if c in _GO_SPECIAL else c for c in value)


@dataclass(frozen=True)
class Member:
    """One node as the Serf agent sees it."""

    name: str
    addr: str
    port: int
    tags: dict[str, str]
    status: str

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> Member:
        """Decode the agent's map; ``Addr`` is raw IP bytes (4 or 16)."""
        try:
            return cls(
                name=str(raw["Name"]),
                addr=_addr_text(raw.get("Addr", b"")),
                port=int(raw.get("Port", 0)),
                tags={str(k): str(v) for k, v in (raw.get("Tags") or {}).items()},
                status=str(raw.get("Status", "none")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ClusterError(f"serf: malformed member {raw!r}: {exc}") from exc


def _addr_text(addr: Any) -> str:
    """Dotted text for a raw address; IPv4-mapped IPv6 becomes plain IPv4."""
    if isinstance(addr, str):
        return addr
    if not addr:
        return ""
    ip = ipaddress.ip_address(bytes(addr))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass
class _Call:
    """A request waiting for its reply; filled in by the reader task."""

    command: str
    seq: int = -1
    done: trio.Event = field(default_factory=trio.Event)
    header: dict[str, Any] | None = None
    body: Any = None
    error: ClusterError | None = None
    stream: _StreamState | None = None  # set for `stream` requests


@dataclass
class _StreamState:
    """Where the reader puts records of one event stream."""

    send: trio.MemorySendChannel[dict[str, Any]]
    stopped: bool = False
    dropped: int = 0


class EventStream(trio.abc.ReceiveChannel[dict[str, Any]]):
    """Receive side of one Serf event stream.

    Yields ``{"Event": str, "Members": [Member]}``.  When the connection
    dies, ``receive`` raises ``ClusterError`` (after the buffered events), so
    ``async for`` never hangs silently on a dead agent.  Events only hint
    that membership changed: when the buffer is full new ones are dropped
    and counted in ``dropped``.
    """

    def __init__(
        self,
        client: SerfClient,
        state: _StreamState,
        receive: trio.MemoryReceiveChannel[dict[str, Any]],
    ) -> None:
        self._client = client
        self._state = state
        self._receive = receive

    @property
    def dropped(self) -> int:
        return self._state.dropped

    async def receive(self) -> dict[str, Any]:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self._client.error is not None:
                raise ClusterError(str(self._client.error)) from None
            raise

    def receive_nowait(self) -> dict[str, Any]:
        """An already buffered event, or ``trio.WouldBlock``."""
        try:
            return self._receive.receive_nowait()
        except trio.EndOfChannel:
            if self._client.error is not None:
                raise ClusterError(str(self._client.error)) from None
            raise

    async def aclose(self) -> None:
        await self._receive.aclose()


class SerfClient:
    """One RPC connection to a Serf agent; create with ``open_serf_client``."""

    def __init__(self, stream: trio.SocketStream, peer: str, timeout: float) -> None:
        self._stream = stream
        self._peer = peer
        self.timeout = timeout
        self._packer = msgpack.Packer(use_bin_type=True)
        self._send_lock = trio.Lock()
        self._seq = 0
        self._pending: dict[int, _Call] = {}
        self._streams: dict[int, _StreamState] = {}
        # Shielded: the reader must outlive a cancelled caller so that cleanup
        # calls (``stop``) get their replies; only ``_fail`` ends it.
        self._reader_scope = trio.CancelScope(shield=True)
        self.error: ClusterError | None = None

    # --- connection state ------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.error is None

    def _fail(self, reason: str) -> ClusterError:
        """Declare the connection dead and wake everybody waiting on it."""
        if self.error is None:
            self.error = ClusterError(f"serf rpc {self._peer}: {reason}")
            for call in self._pending.values():
                call.error = self.error
                call.done.set()
            self._pending.clear()
            for state in self._streams.values():
                state.send.close()
            self._streams.clear()
            self._reader_scope.cancel()
        return self.error

    # --- reader ------------------------------------------------------------------

    async def _reader(self) -> None:
        """Decode replies and hand them to callers and streams by Seq."""
        try:
            await self._read_loop()
        finally:
            self._fail("reader stopped")

    async def _read_loop(self) -> None:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        # A call or stream whose body is the next object, if any.
        want_body: _Call | _StreamState | None = None
        with self._reader_scope:
            while True:
                try:
                    data = await self._stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    self._fail(f"connection broken: {exc}")
                    return
                if not data:
                    self._fail("agent closed the connection")
                    return
                unpacker.feed(data)
                try:
                    for obj in unpacker:
                        if want_body is not None:
                            self._deliver_body(want_body, obj)
                            want_body = None
                        else:
                            want_body = self._on_header(obj)
                except ClusterError:
                    return
                except (ValueError, TypeError, msgpack.exceptions.UnpackException) as exc:
                    self._fail(f"undecodable reply: {exc}")
                    return

    def _on_header(self, obj: Any) -> _Call | _StreamState | None:
        """Handle a reply header; return who gets the body, if one follows."""
        if not isinstance(obj, dict) or not isinstance(obj.get("Seq"), int):
            raise self._fail(f"expected a reply header, got {obj!r:.200}")
        seq: int = obj["Seq"]
        error = str(obj.get("Error") or "")
        call = self._pending.get(seq)
        if call is not None:
            call.header = obj
            if error not in _BARE_ERRORS and call.command in _REPLY_HAS_BODY:
                return call
            del self._pending[seq]
            if call.stream is not None and not error:
                self._streams[seq] = call.stream  # before any record is decoded
            call.done.set()
            return None
        state = self._streams.get(seq)
        if state is not None:
            return state  # an event record follows
        raise self._fail(f"reply for unknown seq {seq}")

    def _deliver_body(self, target: _Call | _StreamState, body: Any) -> None:
        if isinstance(target, _Call):
            self._pending.pop(target.seq, None)
            target.body = body
            target.done.set()
            return
        if target.stopped:
            return
        try:
            event = {
                "Event": str(body.get("Event", "")),
                "Members": [Member.from_wire(m) for m in body.get("Members") or []],
            }
        except (AttributeError, ClusterError):
            return  # not a member event: only hints anyway
        try:
            target.send.send_nowait(event)
        except trio.WouldBlock:
            target.dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            target.stopped = True

    # --- requests ----------------------------------------------------------------

    async def _send(self, command: str, body: dict[str, Any] | None, call: _Call) -> int:
        """Register ``call`` under a new Seq and write the request."""
        if self.error is not None:
            raise self.error
        async with self._send_lock:
            if self.error is not None:
                raise self.error
            self._seq += 1
            call.seq = seq = self._seq
            data = self._packer.pack({"Command": command, "Seq": seq})
            if body is not None:
                data += self._packer.pack(body)
            self._pending[seq] = call
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise self._fail(f"send failed: {exc}") from exc
            except BaseException:
                # Cancelled or timed out mid-write: the framing may be broken.
                self._fail(f"{command} interrupted while sending")
                raise
        return seq

    async def _call(
        self,
        command: str,
        body: dict[str, Any] | None = None,
        *,
        stream: _StreamState | None = None,
    ) -> tuple[dict[str, Any], Any]:
        """Send one request and wait (bounded) for its reply."""
        call = _Call(command, stream=stream)
        try:
            with trio.fail_after(self.timeout):
                await self._send(command, body, call)
                await call.done.wait()
        except trio.TooSlowError:
            raise self._fail(f"{command} timed out after {self.timeout:g}s") from None
        if call.error is not None:
            raise call.error
        assert call.header is not None
        error = str(call.header.get("Error") or "")
        if error and command != "join":
            raise ClusterError(f"serf {command}: {error}")
        return call.header, call.body

    async def handshake(self) -> None:
        await self._call("handshake", {"Version": 1})

    async def auth(self, key: str) -> None:
        await self._call("auth", {"AuthKey": key})

    async def members(self) -> list[Member]:
        """Every member the agent knows, whatever its status."""
        _, body = await self._call("members")
        return _members(body)

    async def members_filtered(
        self,
        tags: dict[str, str] | None = None,
        status: str | None = None,
        name: str | None = None,
    ) -> list[Member]:
        """Members matching every given value exactly (values are literals)."""
        request = {
            "Tags": {k: go_quote_meta(v) for k, v in (tags or {}).items()},
            "Status": go_quote_meta(status) if status else "",
            "Name": go_quote_meta(name) if name else "",
        }
        _, body = await self._call("members-filtered", request)
        return _members(body)

    async def join(self, addrs: list[str], replay: bool = False) -> int:
        """Ask the agent to join ``addrs``; returns how many it reached."""
        header, body = await self._call("join", {"Existing": list(addrs), "Replay": replay})
        error = str(header.get("Error") or "")
        num = int(body.get("Num", 0)) if isinstance(body, dict) else 0
        if error and num == 0:
            raise ClusterError(f"serf join {addrs}: {error}")
        return num

    async def tags(self, set: dict[str, str], delete: list[str] | None = None) -> None:
        """Set and delete this agent's tags; returns once broadcast."""
        await self._call("tags", {"Tags": dict(set), "DeleteTags": list(delete or [])})

    async def leave(self) -> None:
        """Gracefully leave the cluster; the agent exits afterwards."""
        await self._call("leave")

    async def stats(self) -> dict[str, Any]:
        _, body = await self._call("stats")
        return body if isinstance(body, dict) else {}

    @asynccontextmanager
    async def stream(self, types: str = MEMBER_EVENTS) -> AsyncIterator[EventStream]:
        """Subscribe to events; ``stop`` is sent on exit (bounded, shielded)."""
        send, receive = trio.open_memory_channel[dict[str, Any]](STREAM_BUFFER)
        state = _StreamState(send)
        header, _ = await self._call("stream", {"Type": types}, stream=state)
        seq: int = header["Seq"]
        try:
            yield EventStream(self, state, receive)
        finally:
            state.stopped = True  # records already queued are decoded, then dropped
            send.close()
            if self.error is None:
                with trio.CancelScope(shield=True):
                    try:
                        await self._call("stop", {"Stop": seq})
                    except ClusterError:
                        pass

    async def aclose(self) -> None:
        self._fail("client closed")
        await self._stream.aclose()


def _members(body: Any) -> list[Member]:
    if not isinstance(body, dict):
        raise ClusterError(f"serf: malformed members reply {body!r:.200}")
    return [Member.from_wire(m) for m in body.get("Members") or []]


def split_host_port(addr: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port`` (or ``tcp://host:port``, ``[v6]:port``) → (host, port)."""
    text = addr.removeprefix("tcp://")
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        if default_port is None:
            raise ClusterError(f"address {addr!r} has no port")
        host, port = text, str(default_port)
    host = host.strip("[]")
    try:
        return host, int(port)
    except ValueError:
        raise ClusterError(f"address {addr!r}: bad port") from None


@asynccontextmanager
async def open_serf_client(
    host: str, port: int, *, auth_key: str | None = None, timeout: float = 5.0
) -> AsyncIterator[SerfClient]:
    """Connect, handshake (and authenticate), and yield a ``SerfClient``.

    Raises ``ClusterError`` if the agent cannot be reached in ``timeout``.
    """
    peer = f"{host}:{port}"
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise ClusterError(f"serf rpc {peer}: cannot connect: {exc or 'timed out'}") from exc
    client = SerfClient(stream, peer, timeout)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._reader)
            try:
                await client.handshake()
                if auth_key is not None:
                    await client.auth(auth_key)
                yield client
            finally:
                client._fail("client closed")
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The reader never raises, so a lone exception is the body's own:
        # give it back unwrapped, as if there were no nursery here.
        if len(group.exceptions) == 1:
            lone = group.exceptions[0]
            raise lone from lone.__cause__
        raise
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()

