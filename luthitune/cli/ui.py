"""``luthitune ui``: the workbench as a local web app (Gradio), over the same graph and database as the CLI."""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Annotated

import typer

from luthitune.cli import WorkspaceOpt, workspace_arg
from luthitune.errors import UsageError
from luthitune.logs import console, err_console


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host.strip("[]"), 0))
        return s.getsockname()[1]


def ui(
    ctx: typer.Context,
    workspace: WorkspaceOpt = None,
    host: Annotated[str, typer.Option(help="Interface to listen on. Anything but loopback needs --allow-remote.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port (default: a free one).")] = None,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Allow a non-loopback --host. The UI has no login: anyone who can reach the port can drive runs.",
        ),
    ] = False,
) -> None:
    """Start the web UI on 127.0.0.1 and a free port, and print its address. Runs keep going if the browser closes.

    It answers only requests addressed to where it listens (the Host header) and from pages of its own (the Origin
    header), so a page on another site cannot drive it, even by DNS rebinding; --allow-remote lifts that."""
    from luthitune.workspace import Workspace

    if not is_loopback(host) and not allow_remote:
        raise UsageError(
            f"--host {host} would make the workbench reachable from other machines, and it has no login: anyone "
            "who reaches it can start, answer and train runs. Pass --allow-remote as well if that is what you want, "
            "or leave --host at 127.0.0.1."
        )
    ws = Workspace.open(workspace_arg(ctx, workspace))
    if not is_loopback(host):
        err_console.print(
            f"[bold yellow]Warning:[/] listening on {host}: the workbench has no login; anyone who can reach this "
            "port can drive runs in this workspace."
        )
    from luthitune.ui import app as ui_app
    from luthitune.ui.jobs import Workbench

    wb = Workbench(ws)
    demo = ui_app.launch(wb, host=host, port=port or free_port(host), block=False, allow_remote=allow_remote)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown.strip('[]')}]" if ":" in shown else shown  # an IPv6 address is bracketed in a URL
    console.print(
        f"LuthiTune workbench for {ws.root}: [bold]http://{shown}:{demo.server_port}/[/]\n"
        "Runs go on when the browser closes; Ctrl-C stops the server (a running step stops as after a crash, "
        "and Resume continues it)."
    )
    try:
        while demo.is_running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        wb.shutdown()
        demo.close()
    console.print("Stopped.")
