"""A TCP proxy that injects network faults between a process and a real server (PostgreSQL, S3).

The worker under test connects through the proxy; the test switches faults on and off:

- `throttle(bytes_per_second)`: every connection slows to that rate (long downloads and uploads);
- `hold(pattern, seconds)`: a client chunk containing `pattern` waits before it is forwarded (a commit
  held in flight, so the test can kill the worker at that moment);
- `lose_reply(arm, then)`: after a client chunk containing `arm`, the next chunk containing `then` is
  forwarded, the server's answer is thrown away and the connection cut — a COMMIT that lands while
  its reply is lost;
- `cut()`: every open connection is closed now;
- `outage(seconds)`: cut, and refuse new connections for that long (the server is down);
- `blackhole(seconds)`: nothing is forwarded either way for that long, connections stay open (a hung
  network path: calls neither answer nor fail).

Patterns are bytes seen on the wire (PostgreSQL's extended protocol carries bound parameters as
text, so `b"succeeded"` marks the finish transaction's UPDATE).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field


@dataclass
class _Rules:
    rate: float | None = None  # bytes per second, each direction
    hold: tuple[bytes, float] | None = None
    lose: tuple[bytes, bytes] | None = None
    down_until: float = 0.0  # outage: connections refused until then (monotonic)
    silent_until: float = 0.0  # blackhole: nothing forwarded until then
    held: int = 0  # chunks held so far
    lost: int = 0  # replies thrown away so far
    seen: list[bytes] = field(default_factory=list)


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.rules = _Rules()
        self.loop = asyncio.new_event_loop()
        self.connections: set[asyncio.StreamWriter] = set()
        started = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(started,), daemon=True, name="fault-proxy")
        self.thread.start()
        started.wait(10)

    @property
    def url_port(self) -> int:
        return self.port

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._pipe, "127.0.0.1", 0))
        self.port = int(server.sockets[0].getsockname()[1])
        started.set()
        self.loop.run_forever()

    # --- controls (thread-safe) -----------------------------------------------------------------

    def throttle(self, bytes_per_second: float | None) -> None:
        self.rules.rate = bytes_per_second

    def hold(self, pattern: bytes | None, seconds: float = 30.0) -> None:
        self.rules.hold = (pattern, seconds) if pattern else None

    def lose_reply(self, arm: bytes | None, then: bytes = b"COMMIT") -> None:
        self.rules.lose = (arm, then) if arm else None

    def clear(self) -> None:
        self.rules = _Rules()

    def outage(self, seconds: float) -> None:
        self.rules.down_until = time.monotonic() + seconds
        self.cut()

    def blackhole(self, seconds: float) -> None:
        self.rules.silent_until = time.monotonic() + seconds

    def cut(self) -> None:
        def close_all() -> None:
            for writer in list(self.connections):
                writer.close()

        self.loop.call_soon_threadsafe(close_all)

    def wait_until(self, what: str, timeout: float = 120.0) -> None:
        """Until the rule fired once: 'held' or 'lost'."""
        deadline = time.monotonic() + timeout
        while getattr(self.rules, what) == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the proxy's {what} rule never fired")
            time.sleep(0.05)

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)

    # --- the proxy --------------------------------------------------------------------------------

    async def _pipe(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self.rules.down_until:
            client_writer.close()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self.connections.update((client_writer, server_writer))
        state = {"armed": False, "drop_replies": False}
        upstream = asyncio.ensure_future(self._forward(client_reader, server_writer, state, to_server=True))
        downstream = asyncio.ensure_future(self._forward(server_reader, client_writer, state, to_server=False))
        await asyncio.wait([upstream, downstream], return_when=asyncio.FIRST_COMPLETED)
        for task in (upstream, downstream):
            task.cancel()
        for writer in (client_writer, server_writer):
            writer.close()
            self.connections.discard(writer)

    async def _forward(self, reader, writer, state: dict, to_server: bool) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError, ConnectionError):
            while chunk := await reader.read(65536):
                rules = self.rules
                while time.monotonic() < rules.silent_until:
                    await asyncio.sleep(0.05)
                if not to_server and state["drop_replies"]:
                    continue
                if to_server:
                    if rules.hold and rules.hold[0] in chunk:
                        rules.held += 1
                        await asyncio.sleep(rules.hold[1])
                    if rules.lose:
                        arm, then = rules.lose
                        if arm in chunk:
                            state["armed"] = True
                        if state["armed"] and then in chunk:
                            state["drop_replies"] = True
                            writer.write(chunk)
                            await writer.drain()
                            await asyncio.sleep(0.5)  # the server commits; its reply goes nowhere
                            rules.lost += 1
                            rules.lose = None  # once
                            return
                if rules.rate:
                    await asyncio.sleep(len(chunk) / rules.rate)
                writer.write(chunk)
                await writer.drain()
