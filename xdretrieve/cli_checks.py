"""How a command fails: on one line naming what is wrong, and before its work where it can;
and what every command shares: its context settings (``-h``, the help's width), the store
options and the settings made from them.

Shared by every ``xdretrieve`` command (and imported by their modules without importing
:mod:`xdretrieve.cli`, which registers them).
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from xdretrieve.errors import XDRetrieveError
from xdretrieve.paths import output_dir_problem

# Every command's, also when it is invoked on its own (click builds a command's help option once,
# from the first context it meets: a command run outside the group would lose -h for good).
COMMAND_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def fail_cleanly(func: Callable[..., Any]) -> Callable[..., Any]:
    """A command's library errors, and the system's (a folder in the way, no permission, a full
    disk), end it with one line naming the path and exit code 1; -vv logs the traceback."""
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except XDRetrieveError as e:
            raise click.ClickException(str(e)) from e
        except BrokenPipeError:  # the reader went away (`| head`): click ends quietly
            raise
        except (MemoryError, RuntimeError) as e:  # torch's allocators raise RuntimeErrors
            message = out_of_memory(e)
            if message is None:
                raise
            logging.getLogger(__name__).debug("out of memory", exc_info=True)
            raise click.ClickException(message) from e
        except OSError as e:
            logging.getLogger(__name__).debug("system error", exc_info=True)
            if e.filename is None:
                raise click.ClickException(str(e)) from e
            names = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
            raise click.ClickException(f"{names}: {e.strerror or e}") from e

    return wrapper


def bad_rows_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--skip-bad-rows and --rejects, for every command that reads a dataset."""
    func = click.option("--rejects", type=UserPath(dir_okay=False, path_type=Path),
                        default=Path("rejects.jsonl"), show_default=True,
                        help="Where --skip-bad-rows writes the skipped rows.")(func)
    return click.option("--skip-bad-rows", is_flag=True,
                        help="Skip invalid rows instead of stopping; they are counted and "
                             "written to --rejects.")(func)


def check_device(device: str) -> None:
    """A CUDA device this machine does not have is refused before the data is read, not after
    (only 'cuda...' is asked: 'auto' would import torch for nothing)."""
    if device.startswith("cuda"):
        from xdretrieve.encoder import pick_device

        try:
            pick_device(device)
        except XDRetrieveError as e:
            raise click.UsageError(str(e)) from e


def read_dataset(data: Path | None, skip_bad_rows: bool, rejects: Path,
                 items: Path | None = None, interactions: Path | None = None) -> Any:
    """The dataset of ``data`` (or of the two files), its skipped rows written to ``rejects``
    and counted on standard error."""
    from xdretrieve.data import Dataset, RejectLog
    from xdretrieve.errors import DataError

    log = RejectLog() if skip_bad_rows else None
    try:
        if data is not None:
            dataset = Dataset.from_dir(data, log)
        else:
            dataset = Dataset.load(items, interactions, rejects=log)
    except DataError as e:
        if not e.skippable:
            raise
        # a real catalog often has a few such rows: say how to go on without them
        raise DataError(e.path, e.line, e.field, f"{e.message} (--skip-bad-rows skips such "
                        f"rows, writing them to {rejects})", e.unit) from e
    if log is not None and len(log) and os.environ.get("RANK", "0") == "0":  # torchrun: once
        log.write(rejects)
        click.echo(f"skipped {len(log)} bad row(s), written to {rejects}", err=True)
    return dataset


def out_of_memory(error: BaseException) -> str | None:
    """One line for an allocation that failed (the CPU's or a GPU's), else None."""
    text = str(error)
    if not (isinstance(error, MemoryError)
            or re.search(r"out of memory|can't allocate memory", text, re.IGNORECASE)):
        return None
    asked = re.search(r"tried to allocate (\d+) bytes", text)
    what = (f"{int(asked[1]) / 2**30:.1f} GiB asked for at once" if asked
            else text.splitlines()[0][:200] if text else "")
    return (f"out of memory{f' ({what})' if what else ''}: a smaller batch or space needs "
            f"less (--batch-size, --dim)")


class UserPath(click.Path):
    """A path option whose '~' is the home folder: a shell leaves ``--out=~/x`` as it is, and a
    folder named '~' was made."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.startswith("~"):
            value = os.path.expanduser(value)
        return super().convert(value, param, ctx)


class OutputDir(UserPath):
    """A folder the command creates or writes: refused when the option is read if that cannot
    be done."""

    name = "directory"

    def __init__(self) -> None:
        super().__init__(file_okay=False, path_type=Path)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        problem = output_dir_problem(Path(path))
        if problem is not None:
            self.fail(problem, param, ctx)
        return path


def store_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--store / --url / --model, shared by every command that opens a store."""
    func = click.option("--model", default=None, metavar="NAME|DIR",
                        help="Encoder: 'all-MiniLM-L6-v2' (packaged default), a local "
                             "sentence-transformers model directory, or a model directory "
                             "written by `xdretrieve finetune`. A store records what built it: "
                             "give this to index, or where a trained model has moved. "
                             "[env XDR_MODEL]")(func)
    func = click.option("--url", default=None, metavar="URL",
                        help="Qdrant server URL (e.g. http://localhost:6333); overrides --store. "
                             "[env XDR_URL]")(func)
    func = click.option("--store", default=None, type=UserPath(file_okay=False, path_type=Path),
                        help="Directory of the embedded Qdrant store. [default: .xdretrieve; "
                             "env XDR_STORE]")(func)
    return func


def make_settings(**options: Any) -> Any:
    """Settings from the options a user gave; the rest come from env, xdretrieve.toml, defaults."""
    from pydantic import ValidationError

    from xdretrieve.config import Settings
    from xdretrieve.errors import ConfigError

    try:
        return Settings(**{k: v for k, v in options.items() if v is not None})
    except ValidationError as e:  # one line a setting, as env XDR_... or xdretrieve.toml names it
        lines = [f"setting {'.'.join(map(str, err['loc']))}: "
                 + ("no such setting" if err["type"] == "extra_forbidden"
                    else err["msg"].removeprefix("Value error, ")) for err in e.errors()]
        raise click.UsageError("\n".join(lines)) from e
    except ConfigError as e:  # xdretrieve.toml that is not TOML
        raise click.UsageError(str(e)) from e
