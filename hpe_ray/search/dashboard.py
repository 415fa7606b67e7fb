"""A live view of a search: optuna-dashboard on the experiment's Optuna study.

The study is in the database `search.json` names (SQLite in the experiment folder unless the
space set `search_settings.storage`), written by the search as trials report, so the dashboard
shows a running search as well as a finished one. It listens on 127.0.0.1 unless told
otherwise; on a cluster, reach it through an SSH tunnel.
"""

from __future__ import annotations

import getpass
import socket
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from hpe_ray.search.space import SEARCH_INFO
from hpe_ray.search.study import open_study_storage, study_location

DASHBOARD_EXTRA = "pip install 'hpe-ray[dashboard]'"


def ssh_tunnel_hint(port: int, target_host: str = "127.0.0.1") -> str:
    """The command that brings `target_host:port` of this machine to the same port on a laptop."""
    return f"ssh -N -L {port}:{target_host}:{port} {getpass.getuser()}@{socket.getfqdn()}"


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the stdlib's name); one line per request is noise
        pass


def make_dashboard_server(experiment_dir: str | Path, *, host: str = "127.0.0.1", port: int = 0,
                          storage: str | None = None) -> WSGIServer:
    """An optuna-dashboard WSGI server bound to host:port (0: a free port) for the experiment's study.

    Call `serve_forever()` on it; `server.server_port` is the port it bound.
    """
    try:
        from optuna_dashboard import wsgi
    except ImportError as err:
        raise ImportError(f"the dashboard needs optuna-dashboard: {DASHBOARD_EXTRA}") from err
    stored_url, name = study_location(experiment_dir)
    url = storage or stored_url
    if "***" in url:
        raise ValueError(f"{Path(experiment_dir) / SEARCH_INFO}: the study's storage URL has a masked password; "
                         "give it with --storage URL")
    study_storage = open_study_storage(url)
    from optuna.study import get_all_study_names

    if name not in get_all_study_names(study_storage):
        raise ValueError(f"{url}: no study named {name!r} (has the search started its first trial?)")
    return make_server(host, port, wsgi(study_storage), handler_class=_QuietHandler)


def describe_dashboard(server: WSGIServer, experiment_dir: str | Path) -> str:
    """What to print when the dashboard is up: its URL, the tunnel, and TensorBoard's command."""
    host, port = server.server_address[:2]
    lines = [f"optuna-dashboard: http://{host}:{port}/dashboard  (Ctrl-C stops it)"]
    if host in ("127.0.0.1", "localhost", "::1"):
        lines.append(f"from another machine: {ssh_tunnel_hint(port)}, then open the same URL there")
    lines.append(f"training curves: tensorboard --logdir {Path(experiment_dir).resolve()} --host 127.0.0.1")
    return "\n".join(lines)
