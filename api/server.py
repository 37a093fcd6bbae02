"""The API's HTTP server: waitress, with a deadline on receiving each request.

waitress closes a connection only once it has been *silent* for ``channel_timeout``: a
client that trickles a header byte every few seconds keeps its connection, and one of the
server's ``connection_limit`` slots, for as long as it likes; about 100 of them locked every
other client out. Here a request whose headers (and body) are not all in within
``request_timeout_s`` of its first byte is dropped, a silent connection is closed after as
long, and the connection limit is raised well above the thread count, so slow clients cost
a socket each for a bounded time, never a thread.
"""

from __future__ import annotations

import math
import time

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, create_server

from api.settings import ServeSettings


class _DeadlineChannel(HTTPChannel):
    """Remembers when the request being received began."""

    request_started = 0.0

    def received(self, data):
        if self.request is None:
            self.request_started = time.time()
        return super().received(data)


def _drop_late_requests(server: BaseWSGIServer, timeout_s: float) -> None:
    """After waitress's own idle sweep, close channels whose request is overdue."""
    idle_sweep = server.maintenance

    def maintenance(now: float) -> None:
        idle_sweep(now)
        for channel in list(server.active_channels.values()):
            if (channel.request is not None and not channel.requests
                    and now - channel.request_started > timeout_s):
                channel.will_close = True

    server.channel_class = _DeadlineChannel
    server.maintenance = maintenance


def serve(app, *, host: str, port: int, threads: int,
          request_timeout_s: float = ServeSettings.request_timeout_s,
          connection_limit: int = ServeSettings.connection_limit) -> None:
    """Serve ``app`` until interrupted."""
    sockets: dict = {}
    server = create_server(
        app, map=sockets, host=host, port=port, threads=threads, ident="shardqa",
        channel_timeout=max(1, math.ceil(request_timeout_s)), cleanup_interval=1,
        connection_limit=connection_limit)
    listeners = [server] if isinstance(server, BaseWSGIServer) else [
        s for s in sockets.values() if isinstance(s, BaseWSGIServer)]
    for listener in listeners:
        _drop_late_requests(listener, request_timeout_s)
    server.run()
