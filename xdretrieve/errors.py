"""Exceptions raised by xdretrieve. Everything the library raises on purpose derives from
:class:`XDRetrieveError`, so that callers (and the CLI) can tell our errors from bugs."""

from __future__ import annotations


class XDRetrieveError(Exception):
    """Base class of every error xdretrieve raises on purpose."""


class DataError(XDRetrieveError):
    """Bad input data, located by file, line and field.

    Example message: ``items.jsonl, line 12, field 'title': must not be empty``.
    ``skippable``: the row alone is bad (a reader given rejects skips it), not the file.
    """

    skippable = False

    def __init__(
        self, path: str, line: int | None, field: str | None, message: str, unit: str = "line"
    ):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        self.unit = unit
        where = self.path
        if line is not None:
            where += f", {unit} {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class NotFoundError(XDRetrieveError):
    """An unknown user, item or domain was asked for."""


class EncoderMismatchError(XDRetrieveError):
    """The store was built by another encoder than the one asked for."""


class StoreError(XDRetrieveError):
    """The vector store is missing, unreachable or not an xdretrieve store."""


class MissingDependencyError(XDRetrieveError):
    """An optional dependency is not installed; the message gives the install command."""


# xdretrieve is installed from its repository, not PyPI: `pip install 'xdretrieve[serve]'` fails
SERVE_MISSING = ("the HTTP service needs FastAPI and uvicorn: pip install 'fastapi>=0.115' "
                 "'uvicorn>=0.30' (or, in xdretrieve's repository, pip install -e '.[serve]')")


class ConfigError(XDRetrieveError, ValueError):
    """A setting or hyper-parameter outside its range."""
