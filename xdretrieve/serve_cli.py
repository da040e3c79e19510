"""``xdretrieve serve``: the HTTP service (:mod:`xdretrieve.service`) under uvicorn.

FastAPI and uvicorn are imported when the command runs, so ``xdretrieve --help`` stays light.
"""

from __future__ import annotations

from pathlib import Path

import click

from xdretrieve.cli_checks import COMMAND_CONTEXT, fail_cleanly, make_settings, store_options
from xdretrieve.errors import SERVE_MISSING


@click.command(context_settings=COMMAND_CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on (0.0.0.0 for every interface, e.g. in a container).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@store_options
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="Log one line per request.")
@fail_cleanly
def serve(host: str, port: int, store: Path | None, url: str | None, model: str | None,
          log_level: str, access_log: bool) -> None:
    """Serve recommendations over HTTP (FastAPI; OpenAPI docs at /docs).

    \b
    POST /recommend/user, /recommend/history, /search/text   answers
    PUT /items, DELETE /items                                  updates
    GET /health, /ready, /info                                 operations

    One process: requests run in a thread pool, over one open store.
    """
    try:
        import uvicorn

        from xdretrieve.service import create_app
    except ImportError as e:
        raise click.ClickException(SERVE_MISSING) from e
    settings = make_settings(store=store, url=url, model=model)
    app = create_app(settings)
    click.echo(f"serving {settings.url or settings.store} on http://{host}:{port} "
               f"(docs at /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
