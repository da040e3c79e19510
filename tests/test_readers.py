"""Reading items, interactions and users: every bad input names file, line and field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xdretrieve.data import Dataset, RejectLog, read_interactions, read_items, read_users
from xdretrieve.errors import DataError

ITEMS = [
    {"item_id": "b1", "domain": "books", "title": "Dune", "text": "sci-fi", "year": 1965},
    {"item_id": "m1", "domain": "movies", "title": "Dune (film)", "text": "sci-fi"},
    {"item_id": "m2", "domain": "movies", "title": "Alien"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_formats_give_the_same_records(tmp_path: Path) -> None:
    from_jsonl = read_items(write_jsonl(tmp_path / "items.jsonl", ITEMS))
    csv_rows = ["item_id,domain,title,text", "b1,books,Dune,sci-fi", "m1,movies,Dune (film),sci-fi",
                "m2,movies,Alien,"]
    (tmp_path / "items.csv").write_text("\n".join(csv_rows) + "\n")
    from_csv = read_items(tmp_path / "items.csv")
    table = pa.Table.from_pylist([{k: r.get(k) for k in ("item_id", "domain", "title", "text")}
                                  for r in ITEMS])
    pq.write_table(table, tmp_path / "items.parquet")
    from_parquet = read_items(tmp_path / "items.parquet")
    assert list(from_jsonl.values()) == list(from_csv.values()) == list(from_parquet.values())
    assert from_jsonl["b1"].extra == {"year": 1965}  # other fields are kept as payload

    inter = ["user_id,item_id,domain,position", "u1,m1,movies,1", "u1,b1,books,0"]
    (tmp_path / "i.csv").write_text("\n".join(inter) + "\n")
    write_jsonl(tmp_path / "i.jsonl", [{"user_id": "u1", "item_id": "m1", "domain": "movies",
                                        "position": 1},
                                       {"user_id": "u1", "item_id": "b1", "position": 0}])
    pq.write_table(pa.Table.from_pylist([{"user_id": "u1", "item_id": "m1", "position": 1},
                                         {"user_id": "u1", "item_id": "b1", "position": 0}]),
                   tmp_path / "i.parquet")
    got = [read_interactions(tmp_path / f"i.{ext}", from_jsonl) for ext in ("csv", "jsonl",
                                                                            "parquet")]
    assert got[0] == got[1] == got[2]
    assert [x.domain for x in got[0]] == ["movies", "books"]


def test_gzipped_text_files_read_as_the_plain_ones(tmp_path: Path) -> None:
    """Exports often come as .csv.gz or .jsonl.gz: before, 'unknown file type .gz'."""
    import gzip

    plain = tmp_path / "plain"
    plain.mkdir()
    write_jsonl(plain / "items.jsonl", ITEMS)
    (plain / "interactions.csv").write_text("user_id,item_id,position\nu1,m1,1\nu1,b1,0\n")
    zipped = tmp_path / "zipped"
    zipped.mkdir()
    for name in ("items.jsonl", "interactions.csv"):
        (zipped / f"{name}.gz").write_bytes(gzip.compress((plain / name).read_bytes()))
    a, b = Dataset.from_dir(plain), Dataset.from_dir(zipped)
    assert list(a.items.values()) == list(b.items.values()) and a.interactions == b.interactions
    assert b.histories == {"u1": {"books": ("b1",), "movies": ("m1",)}}
    cut = tmp_path / "cut.jsonl.gz"  # a download cut short: refused whole, not read in part
    cut.write_bytes(gzip.compress((plain / "items.jsonl").read_bytes())[:-12])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: unreadable gzip file"):
        read_items(cut, RejectLog())
    (tmp_path / "fake.csv.gz").write_text("item_id,domain,title\n")
    with pytest.raises(DataError, match=r"fake\.csv\.gz: unreadable gzip file: Not a gzipped"):
        read_items(tmp_path / "fake.csv.gz")
    (tmp_path / "latin.csv.gz").write_bytes(gzip.compress(
        "item_id,domain,title\nb1,books,Café\n".encode("latin-1")))
    with pytest.raises(DataError, match=r"latin\.csv\.gz, line 2: not UTF-8 text \(byte 0xe9\)"):
        read_items(tmp_path / "latin.csv.gz")
    with pytest.raises(DataError, match=r"unknown file type '\.json\.gz'.*name it \.jsonl\)$"):
        read_items(tmp_path / "items.json.gz")


def test_parquet_fields_of_any_type_are_kept_as_json_and_stored(
        tmp_path: Path, tiny_model: str) -> None:
    """Before, a Parquet catalog with a time, a date or a decimal column (an 'added' date, a
    price) crashed `index` in the store's write, with Qdrant Edge's TypeError."""
    import datetime as dt
    from decimal import Decimal

    from xdretrieve.config import Settings
    from xdretrieve.indexer import index_dataset
    from xdretrieve.retriever import Retriever

    added = dt.datetime(2020, 5, 17, 8, 30, tzinfo=dt.timezone.utc)
    rows = [{"item_id": f"{d}{k}", "domain": d, "title": f"{d} {k}", "added": added,
             "day": dt.date(2020, 5, 17), "price": Decimal("9.99"), "missing": None,
             "score": float("nan"), "tags": ["a", "b"], "size": {"w": Decimal("1.5")},
             "days": [dt.date(2020, 5, 17)],  # a list's values converted as fields' are
             "open": dt.time(9, 0), "keep": dt.timedelta(days=1)}
            for d in ("books", "movies") for k in range(2)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "items.parquet")
    items = read_items(tmp_path / "items.parquet")
    expected = {"added": "2020-05-17T08:30:00+00:00", "day": "2020-05-17", "price": 9.99,
                "tags": ["a", "b"], "size": {"w": 1.5}, "days": ["2020-05-17"], "open": "09:00:00",
                "keep": 86400.0}
    assert items["books0"].extra == expected
    wide = {"n": 2**70, "m": -3, "top": 2**63 - 1, "over": 2**63, "low": -(2**63),
            "under": -(2**63) - 1}
    big = read_items(write_jsonl(tmp_path / "big.jsonl", [{**ITEMS[0], **wide}]))
    assert big["b1"].extra == {"year": 1965, "n": str(2**70), "m": -3,  # Qdrant's are 64-bit
                               "top": 2**63 - 1, "over": str(2**63), "low": -(2**63),
                               "under": str(-(2**63) - 1)}
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,position\nu1,books0,0\nu1,movies0,1\nu2,books1,0\nu2,movies1,1\n")
    dataset = Dataset.load(tmp_path / "items.parquet", tmp_path / "interactions.csv")
    for where in ({"store": tmp_path / "store"}, {"url": ":memory:"}):
        from xdretrieve.store import open_store

        settings = Settings(model=tiny_model, cache_dir=tmp_path / "cache", **where)
        with open_store(settings) as store:
            index_dataset(dataset, settings, store=store)
            with Retriever(settings, store=store) as r:
                (hit,) = r.search_text("movies 1", "movies", 1)
                assert {k: hit.fields[k] for k in expected} == expected
    pq.write_table(pa.Table.from_pylist([{**rows[0], "raw": b"\x00"}]), tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"b\.parquet, row 1, field 'raw': a bytes value cannot "
                                        r"be stored as payload"):
        read_items(tmp_path / "b.parquet")


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([ITEMS[0], {"item_id": "x", "domain": "books"}], "line 2, field 'title': missing"),
        ([ITEMS[0], {"item_id": "x", "domain": "books", "title": "  "}],
         "line 2, field 'title': must not be empty"),
        ([ITEMS[0], {"domain": "books", "title": "t"}], "line 2, field 'item_id': missing"),
        ([ITEMS[0], {"item_id": "x", "title": "t"}], "line 2, field 'domain': missing"),
        ([ITEMS[0], ITEMS[1], ITEMS[0]], "line 3, field 'item_id': duplicate item id 'b1'"),
        ([ITEMS[0], {"item_id": "x", "domain": "books->movies", "title": "t"}],
         "line 2, field 'domain': 'books->movies' must not contain '->'"),
        ([ITEMS[0], '{"item_id": "x", "domain": '], "line 2: malformed JSON"),
        (['["not", "an", "object"]'], "line 1: expected a JSON object"),
        ([{"item_id": "x", "domain": "books", "title": ["a"]}],
         "line 1, field 'title': expected a string"),
        ([{"item_id": True, "domain": "books", "title": "t"}],  # not an item called 'True'
         "line 1, field 'item_id': expected a string, got True"),
        ([ITEMS[0], {**ITEMS[1], "fields_hash": 3}],  # the index writes its own there
         "line 2, field 'fields_hash': 'fields_hash' is a name xdretrieve keeps for itself"),
        ([{**ITEMS[0], "text_hash": 3}],  # as its other own field: else a re-index compares it
         "line 1, field 'text_hash': 'text_hash' is a name xdretrieve keeps for itself"),
    ],
)
def test_bad_items_name_file_line_and_field(tmp_path: Path, rows: list, expected: str) -> None:
    path = write_jsonl(tmp_path / "items.jsonl", rows)
    with pytest.raises(DataError) as err:
        read_items(path)
    assert str(err.value).startswith(str(path))
    assert expected in str(err.value)


def test_a_header_the_csv_reader_cannot_read_is_line_1_of_the_file(tmp_path: Path) -> None:
    """A header of one field beyond the csv module's limit (a file that is not CSV, or a
    catalog's text in the header line): a DataError at line 1, not csv's own error."""
    items = read_items(write_jsonl(tmp_path / "items.jsonl", ITEMS))
    path = tmp_path / "inter.csv"
    path.write_text("user_id," + "x" * 200_000 + "\nu1,b1\n")
    with pytest.raises(DataError, match=r"inter\.csv, line 1: malformed CSV: field larger"):
        read_interactions(path, items)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["u1,zz,books,0"], "line 2, field 'item_id': unknown item 'zz'"),
        (["u1,b1,movies,0"], "line 2, field 'domain': 'movies' but item 'b1' is in 'books'"),
        (["u1,b1,books,first"], "line 2, field 'position': expected a number, got 'first'"),
        (["u1,b1,books,"], "line 2, field 'position': missing (give 'position' or 'timestamp')"),
        (["u1,b1,books,0", ",m1,movies,1"], "line 3, field 'user_id': must not be empty"),
        (["u1,b1,books,0,extra"], "line 2: malformed CSV: 5 fields, the header has 4"),
        (['u1,"b1,books,0'], "malformed CSV"),
    ],
)
def test_bad_interactions(tmp_path: Path, lines: list[str], expected: str) -> None:
    items = read_items(write_jsonl(tmp_path / "items.jsonl", ITEMS))
    path = tmp_path / "inter.csv"
    path.write_text("\n".join(["user_id,item_id,domain,position", *lines]) + "\n")
    with pytest.raises(DataError) as err:
        read_interactions(path, items)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_timestamps_order_histories(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "items.jsonl", ITEMS)
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,timestamp,rating\n"
        "u1,m2,2021-05-01T10:00:00Z,5\nu1,m1,2020-01-01T00:00:00Z,4\nu1,b1,1500000000,3\n")
    ds = Dataset.from_dir(tmp_path)
    assert ds.history("u1", "movies") == ("m1", "m2")
    assert ds.history("u1", "books") == ("b1",)
    assert ds.interactions[0].rating == 5.0
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\nu1,m1,yesterday\n")
    with pytest.raises(DataError, match="field 'timestamp': expected unix seconds or an ISO-8601"):
        read_interactions(bad, ds.items)
    both = tmp_path / "both.csv"  # README: when a file gives both, `position` orders
    both.write_text("user_id,item_id,position,timestamp\n"
                    "u1,m1,1,2020-01-01T00:00:00Z\nu1,m2,0,2021-01-01T00:00:00Z\n")
    assert Dataset(ds.items, read_interactions(both, ds.items)).history("u1", "movies") == (
        "m2", "m1")


def test_skip_bad_rows_counts_and_records_them(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "items.jsonl",
                       [ITEMS[0], {"item_id": "x", "domain": "books"}, "{oops", ITEMS[1], ITEMS[0]])
    log = RejectLog()
    items = read_items(path, log)
    assert list(items) == ["b1", "m1"]
    assert [(r["line"], r["field"]) for r in log.rejects] == [(2, "title"), (3, None),
                                                              (5, "item_id")]
    log.write(tmp_path / "rejects.jsonl")
    saved = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert saved[0]["row"] == {"item_id": "x", "domain": "books"}
    assert saved[1]["row"] is None  # a line that is not JSON has no row to show
    assert saved[2]["error"] == "duplicate item id 'b1'"


def test_a_dataset_skips_bad_interaction_and_user_rows_as_it_skips_bad_items(
        tmp_path: Path) -> None:
    """With a RejectLog (--skip-bad-rows) a bad row of interactions.* or users.* is skipped and
    logged as a bad item row is: else one bad line stops `index`, `finetune` or `evaluate`."""
    write_jsonl(tmp_path / "items.jsonl", ITEMS)
    (tmp_path / "interactions.csv").write_text("user_id,item_id,position\nu1,m1,0\nu1,zz,1\n"
                                               "u2,b1,0\n")
    (tmp_path / "users.csv").write_text("user_id,split\nu1,train\nu2,testing\n")
    log = RejectLog()
    ds = Dataset.from_dir(tmp_path, log)
    assert ds.histories == {"u1": {"movies": ("m1",)}, "u2": {"books": ("b1",)}}
    assert ds.splits == {"u1": "train"}
    assert [(Path(r["file"]).name, r["line"], r["field"]) for r in log.rejects] == [
        ("interactions.csv", 3, "item_id"), ("users.csv", 3, "split")]


def test_users_split(tmp_path: Path) -> None:
    path = tmp_path / "users.csv"
    path.write_text("user_id,split\nu1,train\nu2,test\n")
    assert read_users(path) == {"u1": "train", "u2": "test"}
    path.write_text("user_id,split\nu1,training\n")
    with pytest.raises(DataError, match="line 2, field 'split': 'training' is not one of"):
        read_users(path)
    path.write_text("user_id,split\nu1,train\nu2,test\nu1,test\n")  # which split is u1's?
    with pytest.raises(DataError, match="line 4, field 'user_id': duplicate user 'u1'"):
        read_users(path)


def test_ids_a_parquet_file_gives_as_numbers_match_the_same_ids_as_text(tmp_path: Path) -> None:
    """A Parquet (pandas) column of integer ids with a gap is a float column: item 7 comes as
    7.0. It must name the item "7" that items.jsonl has, not an unknown item "7.0"."""
    write_jsonl(tmp_path / "items.jsonl", [{"item_id": 7, "domain": "books", "title": "Dune"},
                                           {"item_id": "8", "domain": "movies", "title": "Alien"}])
    pq.write_table(pa.table({"user_id": [1.0, 1.0, None], "item_id": [7.0, 8.0, 8.0],
                             "position": [0, 1, 2]}), tmp_path / "interactions.parquet")
    log = RejectLog()
    items = read_items(tmp_path / "items.jsonl")
    got = read_interactions(tmp_path / "interactions.parquet", items, log)
    assert [(x.user_id, x.item_id, x.domain) for x in got] == [("1", "7", "books"),
                                                                ("1", "8", "movies")]
    assert [(r["line"], r["field"]) for r in log.rejects] == [(3, "user_id")]


def test_an_ordering_value_must_be_a_number_or_a_time(tmp_path: Path) -> None:
    items = read_items(write_jsonl(tmp_path / "items.jsonl", ITEMS))
    path = write_jsonl(tmp_path / "interactions.jsonl",
                       [{"user_id": "u1", "item_id": "b1", "position": 0},
                        {"user_id": "u1", "item_id": "m1", "position": True}])
    with pytest.raises(DataError, match="line 2, field 'position': expected a number, got True"):
        read_interactions(path, items)


def test_interactions_of_equal_position_keep_their_file_order(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "items.jsonl", ITEMS)
    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,position\nu1,m2,3\nu1,b1,1\nu1,m1,3\nu2,m1,0\nu2,m2,0\n")
    ds = Dataset.from_dir(tmp_path)
    assert ds.history("u1", "movies") == ("m2", "m1")
    assert ds.history("u2", "movies") == ("m1", "m2")



def test_exports_with_capital_extensions_blank_lines_and_spaced_headers_read_as_plain(
        tmp_path: Path) -> None:
    """What exports and hand edits leave: ITEMS.JSONL, a blank line between rows (or at the
    end), a header written 'item_id, domain, title'. Before, each was an error or a bad row."""
    expected = list(read_items(write_jsonl(tmp_path / "items.jsonl", ITEMS)).values())
    (tmp_path / "ITEMS.JSONL").write_text(
        "\n".join(json.dumps(r) for r in ITEMS[:2]) + "\n\n" + json.dumps(ITEMS[2]) + "\n\n")
    assert list(read_items(tmp_path / "ITEMS.JSONL").values()) == expected
    (tmp_path / "items.Csv").write_text("item_id, domain, title, text\nb1,books,Dune,sci-fi\n"
                                        "\nm1,movies,Dune (film),sci-fi\nm2,movies,Alien,\n\n")
    log = RejectLog()
    assert [(it.item_id, it.domain, it.title) for it in read_items(tmp_path / "items.Csv",
                                                                   log).values()] == [
        (it.item_id, it.domain, it.title) for it in expected]
    assert len(log) == 0


def test_a_missing_or_infinite_number_is_not_an_id_nor_an_order(tmp_path: Path) -> None:
    """A Parquet float column gives NaN for a missing value, and 'inf' or 'nan' parse as floats:
    none is a user 'nan' or an order that would sort a history at random."""
    items = read_items(write_jsonl(tmp_path / "items.jsonl", ITEMS))
    pq.write_table(pa.table({"user_id": [1.0, float("nan"), 2.0], "item_id": ["b1", "m1", "m1"],
                             "position": [0.0, 1.0, float("nan")]}), tmp_path / "i.parquet")
    log = RejectLog()
    got = read_interactions(tmp_path / "i.parquet", items, log)
    assert [(x.user_id, x.item_id, x.order) for x in got] == [("1", "b1", 0.0)]
    assert [(r["line"], r["field"], r["error"]) for r in log.rejects] == [
        (2, "user_id", "missing"), (3, "position", "expected a number, got nan")]
    (tmp_path / "i.csv").write_text("user_id,item_id,position\nu1,b1,inf\n")
    with pytest.raises(DataError, match="line 2, field 'position': expected a number, "
                                        "got 'inf'"):
        read_interactions(tmp_path / "i.csv", items)


def test_a_file_of_no_items_is_refused(tmp_path: Path) -> None:
    """An empty (or all header) items file would index nothing and train on nothing."""
    for name, text in (("items.jsonl", ""), ("items.csv", "item_id,domain,title\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=f"{name}: no items$"):
            read_items(tmp_path / name)


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown file type '.xml'"):
        read_items(tmp_path / "items.xml")
    with pytest.raises(DataError, match="no such file"):
        read_items(tmp_path / "items.jsonl")


def test_a_folder_with_two_files_of_one_kind_is_a_clear_error(tmp_path: Path) -> None:
    # before: the first by extension was read and the other ignored without a word (a
    # Parquet export beside an old CSV: training on the stale file)
    write_jsonl(tmp_path / "items.jsonl", ITEMS)
    (tmp_path / "interactions.csv").write_text("user_id,item_id,position\nu1,m1,0\n")
    (tmp_path / "interactions.parquet").write_bytes(b"")
    with pytest.raises(DataError, match=r"more than one interactions file: "
                                        r"interactions\.csv, interactions\.parquet"):
        Dataset.from_dir(tmp_path)
    (tmp_path / "interactions.parquet").unlink()
    assert Dataset.from_dir(tmp_path).history("u1", "movies") == ("m1",)


def test_spreadsheet_files_with_a_byte_order_mark_read_as_without(tmp_path: Path) -> None:
    # Excel's "CSV UTF-8" starts with a BOM: it was read into the first column's name, and every
    # row was refused with "field 'item_id': missing"
    csv_text = "item_id,domain,title,text\r\nb1,books,Dune,sci-fi\r\nm2,movies,Alien,\r\n"
    (tmp_path / "items.csv").write_bytes(b"\xef\xbb\xbf" + csv_text.encode())
    (tmp_path / "items.jsonl").write_bytes(
        b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in (ITEMS[0], ITEMS[2])).encode())
    plain = tmp_path / "plain.csv"
    plain.write_text(csv_text)
    expected = list(read_items(plain).values())
    assert list(read_items(tmp_path / "items.csv").values()) == expected
    assert [(it.item_id, it.title) for it in read_items(tmp_path / "items.jsonl").values()] == [
        (it.item_id, it.title) for it in expected]


def test_a_file_that_is_not_utf8_stops_at_its_first_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_bytes("item_id,domain,title\nb1,books,Dune\nb2,books,Café\nb3,books,Emma\n"
                     .encode("latin-1"))
    for rejects in (None, RejectLog()):  # a misdecoded file is not a bad row to skip
        with pytest.raises(DataError, match=r"items\.csv, line 3: not UTF-8 text \(byte 0xe9\)"):
            read_items(path, rejects)
    path.write_bytes(b"item_id,domain,title\nb1,books,Caf\xc3\xa9\n")
    assert read_items(path)["b1"].title == "Café"


def test_a_header_without_a_required_column_is_refused_at_the_header(tmp_path: Path) -> None:
    # before: each row failed alone ("line 2, field 'item_id': missing"), and with rejects every
    # row of the file was skipped
    items = tmp_path / "items.csv"
    items.write_text("id,domain,title\nb1,books,Dune\n")
    for rejects in (None, RejectLog()):
        with pytest.raises(DataError, match=r"items\.csv, line 1: no 'item_id' column; the file "
                                            r"has: id, domain, title"):
            read_items(items, rejects)
    items.write_text("item_id;domain;title\nb1;books;Dune\n")
    with pytest.raises(DataError, match=r"the file has: item_id;domain;title \(separated by ';'\? "
                                        r"a CSV file here is separated by ','\)"):
        read_items(items)
    for sep in ("\t", "|"):  # a tab-separated export named .csv, or one by '|'
        items.write_text(f"item_id{sep}domain{sep}title\nb1{sep}books{sep}Dune\n")
        with pytest.raises(DataError, match=re.escape(f"(separated by {sep!r}? a CSV file here")):
            read_items(items)
    known = read_items(write_jsonl(tmp_path / "items.jsonl", ITEMS))
    inter = tmp_path / "inter.csv"
    inter.write_text("user_id,item_id,when\nu1,b1,0\n")
    with pytest.raises(DataError, match="no 'position' or 'timestamp' column"):
        read_interactions(inter, known)
    pq.write_table(pa.Table.from_pylist([{"user": "u1", "split": "test"}]),
                   tmp_path / "users.parquet")
    with pytest.raises(DataError, match=r"users\.parquet: no 'user_id' column; the file has: "
                                        r"user, split"):
        read_users(tmp_path / "users.parquet")
    (tmp_path / "users.csv").write_text("user_id,role\nu1,train\n")
    for rejects in (None, RejectLog()):  # not every row skipped, leaving no split at all
        with pytest.raises(DataError, match=r"users\.csv, line 1: no 'split' column"):
            read_users(tmp_path / "users.csv", rejects)


def test_a_time_without_a_zone_is_utc_whatever_the_machine_s_zone(tmp_path: Path,
                                                                  monkeypatch) -> None:
    import time
    from datetime import datetime

    items = read_items(write_jsonl(tmp_path / "items.jsonl", ITEMS))
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\nu1,m1,2021-11-07T01:30:00\n"
                                    "u1,m2,2021-11-07T01:30:00Z\n")
    pq.write_table(pa.Table.from_pylist([{"user_id": "u1", "item_id": "m1",
                                          "timestamp": datetime(2021, 11, 7, 1, 30)}]),
                   tmp_path / "i.parquet")
    utc = 1636248600.0  # 2021-11-07 01:30 UTC
    monkeypatch.setenv("TZ", "America/New_York")  # that night's 01:30 came twice there
    time.tzset()
    try:
        assert [x.order for x in read_interactions(tmp_path / "i.csv", items)] == [utc, utc]
        assert [x.order for x in read_interactions(tmp_path / "i.parquet", items)] == [utc]
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_folder_without_a_file_of_a_kind_names_the_formats_and_what_it_has(
        tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no items file \(items\.jsonl, items\.ndjson, items\.csv, "
                                        r"items\.parquet; \.gz for a gzipped text one\)$"):
        Dataset.from_dir(tmp_path)
    (tmp_path / "items.tsv").write_text("item_id\tdomain\ttitle\n")
    with pytest.raises(DataError, match=r"text one\); found items\.tsv: not one of these "
                                        r"formats$"):
        Dataset.from_dir(tmp_path)
    write_jsonl(tmp_path / "items.jsonl", ITEMS)
    with pytest.raises(DataError, match=r"items\.jsonl: a file, not a folder: give the "):
        Dataset.from_dir(tmp_path / "items.jsonl")  # not "no items file" inside it
    with pytest.raises(DataError, match=r"nope: no such folder: give the dataset's folder"):
        Dataset.from_dir(tmp_path / "nope")
    (tmp_path / "interactions.txt").write_text("")
    (tmp_path / "interactions.xlsx").write_text("")
    with pytest.raises(DataError, match=r"no interactions file .*; found interactions\.txt, "
                                        r"interactions\.xlsx: not one of these formats$"):
        Dataset.from_dir(tmp_path)


def test_a_dataset_shows_its_counts_not_its_records(paired_dir: Path) -> None:
    """A notebook that shows a Dataset printed every item and interaction (7 MB for a sample of
    the shared data)."""
    ds = Dataset.from_dir(paired_dir)
    roles = list(ds.splits.values())
    assert repr(ds) == (
        f"Dataset('{paired_dir.name}': {len(ds.items)} items in books, movies, "
        f"{len(ds.interactions)} interactions of {len(ds.histories)} users, split "
        f"{roles.count('test')} test / {roles.count('train')} train)")
    no_split = Dataset(ds.items, ds.interactions, name="x")
    assert repr(no_split).endswith(f"of {len(ds.histories)} users)")
    listed = {"u1": "valid", "u2": "train", "u3": "test", "u4": "train"}  # users.csv order
    assert repr(Dataset(ds.items, ds.interactions, listed)).endswith(
        "split 1 test / 2 train / 1 valid)")  # the same whatever order users.csv lists them


def test_a_dataset_read_from_relative_paths_is_named_after_its_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--data .` (or `--items items.jsonl`) run inside the data folder: the dataset is named
    after that folder as from an absolute path (the name heads evaluation reports), not ''."""
    data = tmp_path / "shop"
    data.mkdir()
    write_jsonl(data / "items.jsonl", ITEMS)
    (data / "interactions.csv").write_text("user_id,item_id,position\nu1,m1,0\n")
    monkeypatch.chdir(data)
    assert Dataset.from_dir(".").name == "shop"
    assert Dataset.load("items.jsonl", "interactions.csv").name == "shop"


def test_a_domain_nobody_has_used_is_a_domain_and_a_missing_history_is_empty(
        tmp_path: Path) -> None:
    """Items alone make a domain (a new catalog: the cold-start target itself); a user with no
    item in a domain, or a user the data do not know, has an empty history there, not None."""
    write_jsonl(tmp_path / "items.jsonl", ITEMS)
    (tmp_path / "interactions.csv").write_text("user_id,item_id,position\nu1,b1,0\n")
    ds = Dataset.from_dir(tmp_path)
    assert ds.domains == ("books", "movies")
    assert ds.history("u1", "movies") == () and ds.history("ghost", "books") == ()


def test_a_gzip_file_corrupt_inside_is_refused_by_name(tmp_path: Path) -> None:
    """A .jsonl.gz damaged in the middle (a bad copy) fails in zlib, not at its end: the error
    names the file, as for one cut short, not zlib's bare 'Error -3 while decompressing'."""
    import gzip

    rows = [{"item_id": f"b{k}", "domain": "books", "title": f"t{k}"} for k in range(200)]
    packed = bytearray(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    packed[len(packed) // 2] ^= 0xFF
    (tmp_path / "items.jsonl.gz").write_bytes(bytes(packed))
    for rejects in (None, RejectLog()):  # the rest of the file cannot be read: not a bad row
        with pytest.raises(DataError, match=r"items\.jsonl\.gz: unreadable gzip file: Error -3"):
            read_items(tmp_path / "items.jsonl.gz", rejects)


def test_a_rating_is_a_number_and_a_rating_of_zero_is_kept(tmp_path: Path) -> None:
    """A rating is a number: a date in the rating column is a bad row (not a rating of 1.6
    billion), and a rating of 0 (JSON or Parquet's number) is a rating, not a missing one."""
    items = read_items(write_jsonl(tmp_path / "items.jsonl", ITEMS))
    path = write_jsonl(tmp_path / "i.jsonl", [
        {"user_id": "u1", "item_id": "b1", "position": 0, "rating": 0},
        {"user_id": "u1", "item_id": "m1", "position": 1, "rating": 4.5},
        {"user_id": "u1", "item_id": "m2", "position": 2}])
    assert [x.rating for x in read_interactions(path, items)] == [0.0, 4.5, None]
    (tmp_path / "i.csv").write_text("user_id,item_id,position,rating\nu1,b1,0,2021-05-01\n")
    with pytest.raises(DataError, match=r"line 2, field 'rating': expected a number, "
                                        r"got '2021-05-01'$"):
        read_interactions(tmp_path / "i.csv", items)


def test_a_rejected_parquet_row_with_a_time_is_written_with_its_time_as_text(
        tmp_path: Path) -> None:
    """--skip-bad-rows writes each skipped row: a Parquet row holds times as Python objects,
    which JSON cannot hold as they are; writing the rejects must not fail on them."""
    import datetime as dt

    added = dt.datetime(2020, 5, 17, 8, 30, tzinfo=dt.timezone.utc)
    pq.write_table(pa.Table.from_pylist(
        [{"item_id": "b1", "domain": "books", "title": "Dune", "added": added},
         {"item_id": "b2", "domain": "books", "title": None, "added": added}]),
        tmp_path / "items.parquet")
    log = RejectLog()
    assert list(read_items(tmp_path / "items.parquet", log)) == ["b1"]
    log.write(tmp_path / "rejects.jsonl")
    (saved,) = [json.loads(x) for x in (tmp_path / "rejects.jsonl").read_text().splitlines()]
    assert (saved["line"], saved["field"]) == (2, "title")
    assert saved["row"] == {"item_id": "b2", "domain": "books", "title": None,
                            "added": str(added)}
