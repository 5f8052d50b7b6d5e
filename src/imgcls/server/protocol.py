"""uvicorn's HTTP protocol with a deadline for each request's head (request line and headers).

uvicorn waits for a head forever: its keep-alive timer starts only after a response and the first byte cancels it,
so a client that connects and sends nothing, or half a head, holds its connection open for good."""

from uvicorn.protocols.http.auto import AutoHTTPProtocol  # httptools when installed, else h11


def with_head_timeout(seconds: float) -> type:
    """The protocol class for uvicorn's `http=`: a connection whose next head is not in after `seconds` is closed."""

    class HeadTimeout(AutoHTTPProtocol):
        deadline = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self):
            self._arm()  # for the next head (before super(), which may start a pipelined request)
            super().on_response_complete()

        def connection_lost(self, exc):
            if self.deadline is not None:
                self.deadline.cancel()
            super().connection_lost(exc)

        def _arm(self):
            if self.deadline is not None:
                self.deadline.cancel()
            self.deadline = self.loop.call_later(seconds, self._expire)

        def _expire(self):
            if self.cycle is None or self.cycle.response_complete:  # no request in progress: still waiting for a head
                self.transport.close()

    return HeadTimeout
