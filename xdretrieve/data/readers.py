"""Readers for items, interactions and users in JSONL, CSV or Parquet (chosen by extension).

Every row is validated here, at the edge. A bad row raises :class:`DataError` naming the file,
the line (the row, for Parquet) and the field, unless a :class:`RejectLog` is given: then the row
is skipped, counted and recorded, never dropped silently.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

from xdretrieve.data.records import (
    INDEX_FIELDS,
    Interaction,
    Item,
    domain_problem,
    payload_int,
)
from xdretrieve.errors import DataError

# Text files may come gzipped, as exports often do (Parquet compresses inside the file).
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
           ".jsonl.gz": "jsonl", ".ndjson.gz": "jsonl", ".csv.gz": "csv"}
SPLITS = ("train", "valid", "test")


@dataclass
class RejectLog:
    """Collects skipped rows; :meth:`write` saves them as JSONL for a person to fix."""

    rejects: list[dict[str, Any]] = field(default_factory=list)

    def add(self, error: DataError, row: Any) -> None:
        self.rejects.append(
            {"file": error.path, "line": error.line, "field": error.field,
             "error": error.message, "row": row}
        )

    def __len__(self) -> int:
        return len(self.rejects)

    def write(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            for r in self.rejects:
                f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")


def _extension(path: Path) -> str:
    """'.csv', or '.csv.gz' for a gzipped one."""
    suffixes = [x.lower() for x in path.suffixes]
    return "".join(suffixes[-2:]) if suffixes[-1:] == [".gz"] else "".join(suffixes[-1:])


def _format_of(path: Path) -> str:
    fmt = FORMATS.get(_extension(path))
    if fmt is None:
        hint = (" (a file of one JSON object a line is JSON Lines: name it .jsonl)"
                if _extension(path) in (".json", ".json.gz") else "")
        raise DataError(str(path), None, None, f"unknown file type '{_extension(path)}'; "
                                               f"expected one of {sorted(FORMATS)}{hint}")
    if not path.is_file():
        raise DataError(str(path), None, None, "no such file")
    return fmt


Column = str | tuple[str, ...]  # a required column, or names of which the file must have one


def _check_columns(name: str, line: int | None, have: list[str],
                   required: tuple[Column, ...]) -> None:
    """A file whose header lacks a required column is refused at the header: row by row, every
    row would be reported (or, with --skip-bad-rows, skipped) for the same missing field."""
    for column in required:
        names = (column,) if isinstance(column, str) else column
        if not any(n in have for n in names):
            wanted = " or ".join(f"'{n}'" for n in names)
            hint = ""
            if len(have) == 1:  # a spreadsheet's export in a locale that separates by ';'
                hint = next((f" (separated by {sep!r}? a CSV file here is separated by ',')"
                             for sep in (";", "\t", "|") if sep in have[0]), "")
            raise DataError(name, line, None, f"no {wanted} column; the file has: "
                                              f"{', '.join(have) or 'none'}{hint}")


def _gzipped(path: Path) -> bool:
    return _extension(path).endswith(".gz")


def _open_text(path: Path, newline: str | None) -> Any:
    if _gzipped(path):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)
    return open(path, encoding="utf-8-sig", newline=newline)


def _not_utf8(path: Path) -> DataError:
    """The first line of ``path`` that is not UTF-8 (a text reader fails at a chunk of the file,
    not at a line). Such a file stops the read even with rejects: its rows would be misread,
    not merely skipped."""
    with (gzip.open if _gzipped(path) else open)(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as e:
                return DataError(str(path), line_no, None,
                                 f"not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file "
                                 f"as UTF-8")
    return DataError(str(path), None, None, "not UTF-8 text; save the file as UTF-8")


def _rows(path: Path, required: tuple[Column, ...] = ()
          ) -> Iterator[tuple[int, dict[str, Any] | DataError, str]]:
    """Yield (line, row or the DataError that reading it gave, unit) for each row of the file.

    Text files are UTF-8, with or without the byte-order mark that spreadsheets write, and may
    be gzipped (``.csv.gz``, ``.jsonl.gz``).
    """
    fmt = _format_of(path)
    name = str(path)
    if fmt == "parquet":
        yield from _parquet_rows(path, required)
        return
    try:
        with _open_text(path, "" if fmt == "csv" else None) as f:
            yield from _jsonl_rows(f, name) if fmt == "jsonl" else _csv_rows(f, name, required)
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:  # not gzip, or cut short
        raise DataError(name, None, None, f"unreadable gzip file: {e or 'cut short'}") from None


def _jsonl_rows(f: Any, name: str) -> Iterator[tuple[int, dict[str, Any] | DataError, str]]:
    # no header to check: a row without a required field names it in its own line
    for line_no, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield line_no, DataError(name, line_no, None, f"malformed JSON: {e.msg}"), "line"
            continue
        if not isinstance(row, dict):
            yield line_no, DataError(name, line_no, None, "expected a JSON object"), "line"
            continue
        yield line_no, row, "line"


def _csv_rows(f: Any, name: str, required: tuple[Column, ...]
              ) -> Iterator[tuple[int, dict[str, Any] | DataError, str]]:
    reader = csv.reader(f)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as e:
        yield 1, DataError(name, 1, None, f"malformed CSV: {e}"), "line"
        return
    header = [h.strip() for h in header]
    _check_columns(name, 1, header, required)
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            yield reader.line_num, DataError(name, reader.line_num, None,
                                             f"malformed CSV: {e}"), "line"
            break
        line_no = reader.line_num
        if not values:
            continue
        if len(values) != len(header):
            yield line_no, DataError(
                name, line_no, None,
                f"malformed CSV: {len(values)} fields, the header has {len(header)}"), "line"
            continue
        yield line_no, dict(zip(header, values, strict=False)), "line"


def _parquet_rows(path: Path, required: tuple[Column, ...]
                  ) -> Iterator[tuple[int, dict[str, Any] | DataError, str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a broken file
        yield 0, DataError(str(path), None, None, f"unreadable Parquet file: {e}"), "row"
        return
    _check_columns(str(path), None, table.column_names, required)
    for row_no, row in enumerate(table.to_pylist(), start=1):
        yield row_no, row, "row"


Where = tuple[str, int, str]  # a row's file, line (or row) number, and which of the two


def _error(where: Where, key: str, message: str) -> DataError:
    return DataError(where[0], where[1], key, message, where[2])


def _parse_rows(path: Path, rejects: RejectLog | None,
                parse: Callable[[dict[str, Any], Where], None],
                required: tuple[Column, ...] = ()) -> None:
    """``parse(row, where)`` every row of ``path``. A :class:`DataError`, the file's own (bad
    JSON, a short CSV line) or one ``parse`` raises, stops the read; with ``rejects``, the row
    is skipped and recorded instead. A file without a ``required`` column in its header (CSV,
    Parquet) or that is not UTF-8 stops the read in either case."""
    for line, row, unit in _rows(path, required):
        try:
            if isinstance(row, DataError):
                raise row
            parse(row, (str(path), line, unit))
        except DataError as e:
            if rejects is None:
                e.skippable = True
                raise
            rejects.add(e, None if isinstance(row, DataError) else row)


def _text(row: dict[str, Any], key: str, where: Where, required: bool) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if required:
            raise _error(where, key, "missing")
        return ""
    if isinstance(value, (dict, list, bool)):
        raise _error(where, key, f"expected a string, got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    value = str(value).strip()
    if required and not value:
        raise _error(where, key, "must not be empty")
    return value


def _payload(value: Any, where: Where, key: str) -> Any:
    """A field kept as payload, as JSON has it, which is what both Qdrant backends store:
    times as ISO-8601 text, decimals as floats, an integer beyond 64 bits as text, NaN (a
    Parquet file's missing number) as None. Parquet gives the others as Python objects."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return payload_int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return _payload(float(value), where, key)
    if isinstance(value, (list, tuple)):
        return [_payload(v, where, key) for v in value]
    if isinstance(value, dict):
        return {str(k): _payload(v, where, key) for k, v in value.items()}
    raise _error(where, key, f"a {type(value).__name__} value cannot be stored as payload "
                             f"(text, numbers, booleans, times, lists and objects can); "
                             f"leave the field out")


def _seconds(moment: datetime) -> float:
    """Unix seconds; a time without a zone is UTC (not this machine's zone, which would order a
    user's interactions differently from one machine to the next around a DST change)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _number(value: Any, key: str, where: Where) -> float:
    """A position (a number) or a timestamp (unix seconds or ISO-8601) as a float."""
    if isinstance(value, bool):
        raise _error(where, key, f"expected a number, got {value!r}")
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if isinstance(value, datetime):
        return _seconds(value)
    text = str(value).strip()
    try:
        number = float(text)
        if math.isfinite(number):
            return number
    except ValueError:
        pass
    if key == "timestamp":
        try:
            return _seconds(datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            pass
        expected = "unix seconds or an ISO-8601 time"
    else:
        expected = "a number"
    raise _error(where, key, f"expected {expected}, got {value!r}")


def read_items(path: str | Path, rejects: RejectLog | None = None) -> dict[str, Item]:
    """Read items: ``item_id``, ``domain``, ``title`` required, ``text`` optional, other fields
    kept as payload. Returns items by id in file order.

    Raises:
        DataError: on the first bad row, unless ``rejects`` is given.
    """
    path = Path(path)
    items: dict[str, Item] = {}

    def parse(row: dict[str, Any], where: Where) -> None:
        item_id = _text(row, "item_id", where, required=True)
        domain = _text(row, "domain", where, required=True)
        problem = domain_problem(domain)
        if problem:
            raise _error(where, "domain", problem)
        title = _text(row, "title", where, required=True)
        text = _text(row, "text", where, required=False)
        if item_id in items:
            raise _error(where, "item_id", f"duplicate item id '{item_id}'")
        extra = {k: _payload(v, where, k) for k, v in row.items()
                 if k not in ("item_id", "domain", "title", "text")}
        extra = {k: v for k, v in extra.items() if v is not None}
        for key in INDEX_FIELDS:
            if key in extra:  # the index would overwrite it with its own
                raise _error(where, key, f"'{key}' is a name xdretrieve keeps for itself in the "
                                         f"store ({', '.join(INDEX_FIELDS)}); rename the field")
        items[item_id] = Item(item_id, domain, title, text, extra)

    _parse_rows(path, rejects, parse, required=("item_id", "domain", "title"))
    if not items:
        raise DataError(str(path), None, None, "no items")
    return items


def read_interactions(
    path: str | Path, items: dict[str, Item], rejects: RejectLog | None = None
) -> list[Interaction]:
    """Read interactions: ``user_id``, ``item_id`` and ``position`` or ``timestamp`` required,
    ``domain`` optional (checked against the item's domain), ``rating`` optional.

    Raises:
        DataError: on the first bad row, unless ``rejects`` is given.
    """
    path = Path(path)
    out: list[Interaction] = []

    def parse(row: dict[str, Any], where: Where) -> None:
        user_id = _text(row, "user_id", where, required=True)
        item_id = _text(row, "item_id", where, required=True)
        item = items.get(item_id)
        if item is None:
            raise _error(where, "item_id", f"unknown item '{item_id}'")
        domain = _text(row, "domain", where, required=False) or item.domain
        if domain != item.domain:
            raise _error(where, "domain", f"'{domain}' but item '{item_id}' is in '{item.domain}'")
        key = "position" if row.get("position") not in (None, "") else "timestamp"
        if row.get(key) in (None, ""):
            raise _error(where, "position", "missing (give 'position' or 'timestamp')")
        order = _number(row[key], key, where)
        rating = row.get("rating")
        rating = None if rating in (None, "") else _number(rating, "rating", where)
        out.append(Interaction(user_id, item_id, domain, order, rating))

    _parse_rows(path, rejects, parse,
                required=("user_id", "item_id", ("position", "timestamp")))
    return out


def read_users(path: str | Path, rejects: RejectLog | None = None) -> dict[str, str]:
    """Read the evaluation split: ``user_id`` -> ``train`` | ``valid`` | ``test``."""
    path = Path(path)
    split: dict[str, str] = {}

    def parse(row: dict[str, Any], where: Where) -> None:
        user_id = _text(row, "user_id", where, required=True)
        value = _text(row, "split", where, required=True)
        if value not in SPLITS:
            raise _error(where, "split", f"'{value}' is not one of {', '.join(SPLITS)}")
        if user_id in split:
            raise _error(where, "user_id", f"duplicate user '{user_id}'")
        split[user_id] = value

    _parse_rows(path, rejects, parse, required=("user_id", "split"))
    return split
