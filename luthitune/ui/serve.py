"""Serving the web UI: the Gradio app mounted in a FastAPI app of our own, which answers only its own hosts.

The workbench has no login, so what protects it is that only this machine can reach it. Binding to loopback is not
enough on its own: a page on another site can make the browser send requests to ``127.0.0.1`` (with its own
``Origin``), or resolve its own name to ``127.0.0.1`` (DNS rebinding, with its own ``Host``). So, unless
``--allow-remote`` is given:

- a request whose ``Host`` header is not an address the server is bound to (``127.0.0.1:PORT``, ``localhost:PORT``,
  ``[::1]:PORT``...) is refused with 403;
- a request that carries an ``Origin`` other than those addresses is refused with 403, and no cross-origin response
  header names any other origin (the app's own CORS policy lists exactly these origins; Gradio then adds none of
  its own, as ``mount_gradio_app`` documents).

Gradio's own ``launch`` builds the URL ``http://::1:PORT`` for an IPv6 address, which is not a URL; here the
address is bracketed wherever it becomes part of one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from luthitune.cli.ui import is_loopback

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def url_host(host: str) -> str:
    """``host`` as it appears in a URL or a Host header: IPv6 addresses in brackets."""
    host = host.strip("[]")
    return f"[{host}]" if ":" in host else host


def split_host(value: str) -> tuple[str, int | None]:
    """(host name, port) of a ``Host`` header or of an origin's authority; the name lower-case, unbracketed."""
    value = value.strip().lower()
    if "://" in value:
        value = value.split("://", 1)[1].split("/", 1)[0]
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    return name, int(port) if port.isdigit() else None


def allowed_hosts(host: str, port: int) -> set[tuple[str, int]]:
    """The (name, port) pairs a browser on this machine uses to reach a server bound to ``host``."""
    names = {host.strip("[]").lower()}
    if is_loopback(host):
        names |= set(LOOPBACK_NAMES)
    return {(n, port) for n in names}


class LocalOnly:
    """ASGI middleware: refuses a request whose ``Host`` (or ``Origin``, when it has one) is not one of ``hosts``."""

    def __init__(self, app: Any, hosts: set[tuple[str, int]]):
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host, origin = headers.get("host", ""), headers.get("origin")
        if split_host(host) not in self.hosts:
            return await self._refuse(scope, receive, send, f"Host {host!r} is not this workbench's address")
        if origin is not None and split_host(origin) not in self.hosts:
            return await self._refuse(scope, receive, send, f"requests from {origin!r} are not accepted")
        return await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: dict, receive: Any, send: Any, why: str) -> None:
        from starlette.responses import PlainTextResponse

        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = f"Refused: {why}. The LuthiTune workbench answers only on the address it was started on."
        await PlainTextResponse(body, status_code=403)(scope, receive, send)


@dataclass
class Served:
    """A running web UI: its port and address, and a way to stop it."""

    server: Any
    thread: threading.Thread
    server_port: int
    local_url: str
    blocks: Any = field(repr=False, default=None)

    @property
    def is_running(self) -> bool:
        return self.thread.is_alive() and not self.server.should_exit

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        if self.blocks is not None:
            self.blocks.close()


def serve(blocks: Any, host: str, port: int, *, allow_remote: bool = False, **mount: Any) -> Served:
    """Serve ``blocks`` on ``host:port`` in a background thread; returns once the server accepts connections."""
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI
    from starlette.middleware.cors import CORSMiddleware

    app = FastAPI()
    hosts = allowed_hosts(host, port)
    origins = sorted(f"http://{url_host(n)}:{p}" for n, p in hosts)
    # Our own CORS policy (so Gradio adds none): only the workbench's own addresses, never an echo of any origin.
    app.add_middleware(CORSMiddleware, allow_origins=[] if allow_remote else origins, allow_credentials=True)
    if not allow_remote:
        app.add_middleware(LocalOnly, hosts=hosts)  # added last: the outermost layer, before CORS answers anything
    app = gr.mount_gradio_app(app, blocks, path="/", server_name=host.strip("[]"), server_port=port, **mount)
    server = uvicorn.Server(uvicorn.Config(app, host=host.strip("[]"), port=port, log_level="warning"))
    server.install_signal_handlers = lambda: None  # the CLI's own Ctrl-C handling stays in charge
    thread = threading.Thread(target=server.run, name="luthitune-ui-server", daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - t0 > 20:
            from luthitune.errors import UsageError

            raise UsageError(f"The web UI could not listen on {url_host(host)}:{port}: is the port in use?")
        time.sleep(0.01)
    return Served(server, thread, port, f"http://{url_host(host)}:{port}/", blocks)
