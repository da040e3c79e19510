"""The CLI through click's CliRunner: help of every command, index -> query round trip."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from xdretrieve.cli import main


def run(*args: str, ok: bool = True, input: str | None = None):
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def test_bad_settings_are_usage_errors_a_line_each(tmp_path: Path, monkeypatch) -> None:
    # before: pydantic's block for a bad value, and a traceback for a broken xdretrieve.toml
    monkeypatch.chdir(tmp_path)
    store = str(tmp_path / "store")
    (tmp_path / "xdretrieve.toml").write_text('poolin = "mean"\nhnsw_m = 2\n'
                                              'recency_half_life = 0\n')
    r = run("info", "--store", store, ok=False)
    assert r.exit_code == 2
    assert "setting poolin: no such setting\n" in r.output
    assert "setting hnsw_m: Input should be greater than or equal to 4\n" in r.output
    assert "setting recency_half_life: Input should be greater than 0" in r.output
    (tmp_path / "xdretrieve.toml").write_text('pooling = "mean\n')
    r = run("info", "--store", store, ok=False)
    assert r.exit_code == 2 and f"xdretrieve.toml (in {tmp_path}): Illegal character" in r.output
    from xdretrieve import ConfigError, Settings

    with pytest.raises(ConfigError, match=r"xdretrieve\.toml .*Illegal character"):
        Settings()  # the library says it as clearly
    (tmp_path / "xdretrieve.toml").write_text('pooling = "mean"\n')
    r = run("info", "--store", store, ok=False)
    assert r.exit_code == 1 and "no xdretrieve store" in r.output


def test_a_home_folder_path_from_the_settings_file_is_the_home_folder(
        paired_dir: Path, tmp_path: Path, tiny_model: str, monkeypatch) -> None:
    """Before, `store = "~/shop.xdr"` in xdretrieve.toml made a folder named '~' here."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDR_CACHE_DIR", "~/cache")
    (work / "xdretrieve.toml").write_text('store = "~/shop.xdr"\n')
    out = run("index", "--data", str(paired_dir), "--model", tiny_model, "-q").output
    assert f"store: {home / 'shop.xdr'}" in out
    assert sorted(p.name for p in work.iterdir()) == ["xdretrieve.toml"]
    assert (home / "shop.xdr" / "xdretrieve.json").is_file() and (home / "cache").is_dir()
    # and in an option the shell left as it was (`--out=~/x`: no expansion after '=')
    assert json.loads(run("info", "--store=~/shop.xdr").output)["points"]["items"] == 24
    run("evaluate", f"--data={paired_dir}", "--method=popularity", "--out=~/results", "-q")
    assert (home / "results" / "results.json").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["xdretrieve.toml"]


def test_an_empty_environment_variable_is_an_unset_one(tmp_path: Path, monkeypatch) -> None:
    """Before, `XDR_STORE=` put the store in the working folder ('.'), and `XDR_BATCH_SIZE=`
    was a bad integer."""
    monkeypatch.chdir(tmp_path)
    for name in ("XDR_STORE", "XDR_BATCH_SIZE", "XDR_URL", "XDR_MODEL"):
        monkeypatch.setenv(name, "")
    r = run("info", ok=False)
    assert r.exit_code == 1 and "no xdretrieve store at .xdretrieve" in r.output
    from xdretrieve import Settings

    assert Settings().batch_size == 64 and Settings().model == "all-MiniLM-L6-v2"


def test_settings_come_from_arguments_then_environment_then_the_file(
        tmp_path: Path, monkeypatch) -> None:
    """The order the docs give: an argument (an option) beats XDR_..., which beats
    xdretrieve.toml, which beats the default (recency pooling, as `index --help` says)."""
    from xdretrieve import Settings
    from xdretrieve.cli import make_settings

    monkeypatch.chdir(tmp_path)
    for name in ("XDR_POOLING", "XDR_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert Settings().pooling == "recency"
    (tmp_path / "xdretrieve.toml").write_text('pooling = "mean"\nbatch_size = 8\n')
    assert (Settings().pooling, Settings().batch_size) == ("mean", 8)
    monkeypatch.setenv("XDR_POOLING", "recency")
    assert (Settings().pooling, Settings().batch_size) == ("recency", 8)
    assert make_settings(pooling="mean", batch_size=None).pooling == "mean"


@pytest.mark.parametrize(("name", "lowest"), [
    ("batch_size", 1), ("shards", 1), ("replicas", 1), ("max_seq_length", 8), ("hnsw_m", 4),
    ("hnsw_ef_construct", 8), ("search_ef", 8), ("search_threads", 0), ("candidates", 1)])
def test_each_numeric_setting_is_held_to_its_documented_range(
        name: str, lowest: int, tmp_path: Path, monkeypatch) -> None:
    """The lowest value each setting documents is taken (search_threads 0: one thread per
    CPU) and one below is refused in the settings, not met later as a batch of 0 items, a
    server collection of 0 shards or a 7-token text."""
    from pydantic import ValidationError

    from xdretrieve import Settings

    monkeypatch.chdir(tmp_path)  # no xdretrieve.toml
    monkeypatch.delenv(f"XDR_{name.upper()}", raising=False)
    assert getattr(Settings(**{name: lowest}), name) == lowest
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: lowest - 1})


def test_a_model_under_the_home_folder_is_looked_for_there(tmp_path: Path, monkeypatch) -> None:
    """`--model ~/models/shop` (or XDR_MODEL, or xdretrieve.toml) is the home folder's model
    directory, as a shell would read it; a model name is left as it is."""
    from xdretrieve import Settings

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert Settings(model="~/models/shop").model == str(tmp_path / "models" / "shop")
    monkeypatch.setenv("XDR_MODEL", "~/models/env")
    assert Settings().model == str(tmp_path / "models" / "env")
    assert Settings(model="all-MiniLM-L6-v2").model == "all-MiniLM-L6-v2"


@pytest.mark.parametrize("command", sorted(main.commands))
def test_help_of_every_command(command: str) -> None:
    out = run(command, "--help").output
    assert f"Usage: main {command}" in out
    assert "--help" in out
    assert run(command, "-h").output == out  # -h as well, as the group's context says


def test_each_v_lowers_the_log_level_a_step(monkeypatch) -> None:
    """No -v: warnings only; -v: info; -vv and more: debug (where fail_cleanly logs the
    traceback of a system error)."""
    import logging

    levels: list[int] = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    for flags in ([], ["-v"], ["-vv"], ["-vvv"]):
        run(*flags, "info", "--help")
    assert levels == [logging.WARNING, logging.INFO, logging.DEBUG, logging.DEBUG]


def test_a_table_s_columns_line_up_under_their_headers() -> None:
    """Each column is as wide as its widest cell, its header included (a header wider than
    its values pushed the headers after it off their columns), and no line ends in spaces."""
    from xdretrieve.cli import format_table

    assert format_table(("rank", "item_id", "title"),
                        [(1, "movie-3", "Chess"), (10, "m", "A")]).splitlines() == [
        "rank  item_id  title",
        "----  -------  -----",
        "1     movie-3  Chess",
        "10    m        A"]


def test_index_query_round_trip(paired_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    store = str(tmp_path / "store")
    out = run("index", "--data", str(paired_dir), "--store", store, "-q").output
    assert re.search(r"^items +24 +24 embedded", out, re.M)
    assert re.search(r"embed [\d.]+ s \([\d,]+ items/s\)", out)
    again = run("index", "--data", str(paired_dir), "--store", store, "-q").output
    assert "0 embedded" in again and "nothing changed" in again
    assert "items/s" not in again  # no rate where nothing was embedded
    # another store from the same cache: vectors read, not embedded, and said so
    other = run("index", "--data", str(paired_dir), "--store", str(tmp_path / "other"),
                "-q").output
    assert re.search(r"^items +24 +24 embedded", other, re.M)
    assert "(all 24 from the embedding cache)" in other and "items/s" not in other

    table = run("query", "--store", store, "--history", "book-3", "--domain", "movies",
                "--limit", "3").output
    rows = table.splitlines()
    assert rows[0] == "history of 1 item(s) -> movies" and len(rows) == 3 + 3
    assert rows[1].split() == ["rank", "item_id", "score", "title"]  # then a rule under it
    assert set(rows[2]) == {"-", " "} and len(rows[2]) >= len(rows[1])
    assert rows[3].split()[:2] == ["1", "movie-3"]
    # a stored user never gets what they already watched
    user = run("query", "--store", store, "--user", " u3-0 ", "--domain", "movies").output
    assert user.startswith("user u3-0 (books history) -> movies") and "movie-3" not in user
    data = json.loads(run("query", "--store", store, "--history", "book-5,book-6",
                          "--domain", "movies", "-k", "5", "--json").output)
    assert [h["rank"] for h in data["hits"]] == [1, 2, 3, 4, 5]
    assert {h["item_id"] for h in data["hits"][:2]} == {"movie-5", "movie-6"}
    # blank entries between commas are skipped (not an unknown item ''); without --limit, 10
    # hits, as --help says; without --explain, no 'why' in a hit
    data = json.loads(run("query", "--store", store, "--history", "book-5, , book-6, ",
                          "--domain", "movies", "--json").output)
    assert data["query"].startswith("history of 2 item(s)")
    assert [h["rank"] for h in data["hits"]] == list(range(1, 11))
    assert all(set(h) == {"rank", "item_id", "title", "score"} for h in data["hits"])
    text = json.loads(run("query", "--store", store, "--text", "chess", "--domain", "movies",
                          "--json").output)
    assert text["hits"][0]["item_id"] == "movie-9"
    info = json.loads(run("info", "--store", store).output)
    assert info["points"] == {"items": 24, "users": 72} and info["dim"] == 384


def test_errors_exit_non_zero_with_a_message(paired_dir: Path, tmp_path: Path,
                                             monkeypatch) -> None:
    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    store = str(tmp_path / "store")
    r = run("query", "--store", store, "--user", "x", "--domain", "movies", ok=False)
    assert r.exit_code == 1 and "no xdretrieve store" in r.output
    run("index", "--data", str(paired_dir), "--store", store, "-q")
    for args, message in [
        (["--user", "ghost", "--domain", "movies"], "unknown user 'ghost'"),
        (["--user", "u1-0", "--domain", "music"], "unknown domain 'music'"),
        (["--history", "book-1,nope", "--domain", "movies"], "unknown item(s): nope"),
    ]:
        r = run("query", "--store", store, *args, ok=False)
        assert r.exit_code == 1 and message in r.output
    r = run("query", "--store", store, "--domain", "movies", ok=False)
    assert r.exit_code == 2 and "exactly one of" in r.output


def test_an_interrupted_index_is_said_incomplete_until_rerun(
        paired_dir: Path, tmp_path: Path, tiny_model: str, monkeypatch) -> None:
    from xdretrieve import indexer

    def stop(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    index = ("index", "--data", str(paired_dir), "--store", str(tmp_path / "s"),
             "--model", tiny_model, "-q")
    with monkeypatch.context() as m:
        m.setattr(indexer, "_index_users", stop)  # the items are written by then
        assert "interrupted: the same command goes on" in run(*index, ok=False).output
    assert json.loads(run("info", "--store", str(tmp_path / "s")).output)["complete"] is False
    r = run("query", "--store", str(tmp_path / "s"), "--user", "u1-0", "--domain", "movies",
            ok=False)
    assert r.exit_code == 1 and "not complete" in r.output and "run it again" in r.output
    out = run(*index).output
    assert re.search(r"^items +24 +0 embedded", out, re.M)
    assert "complete now: an interrupted run had written part of it" in out
    assert "nothing changed" in run(*index).output


def test_query_batch_answers_each_user_as_its_own_query(paired_dir: Path, tmp_path: Path,
                                                        monkeypatch) -> None:
    """--users: one JSON line per listed user, in the file's order, each equal to that user's
    --json answer; an unknown user stops the batch naming its line, and --out is then left as
    it was (no temporary file behind)."""
    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    store = str(tmp_path / "store")
    run("index", "--data", str(paired_dir), "--store", store, "-q")
    users = tmp_path / "users.txt"
    users.write_text("# cold-start campaign\nu3-0\n\nu1-1\nu3-0\n")
    lines = run("query", "--store", store, "--users", str(users), "--domain", "movies",
                "-k", "4").output.splitlines()
    answers = [json.loads(line) for line in lines]
    assert [a["user_id"] for a in answers] == ["u3-0", "u1-1", "u3-0"]
    for answer in answers:
        single = json.loads(run("query", "--store", store, "--user", answer.pop("user_id"),
                                "--domain", "movies", "-k", "4", "--json").output)
        assert answer == single and len(answer["hits"]) == 4
    assert answers[0]["hits"] != answers[1]["hits"]  # each user's own answer

    out = tmp_path / "recs.jsonl"
    r = run("query", "--store", store, "--users", str(users), "--domain", "movies",
            "--out", str(out))
    assert r.output.strip() == f"wrote 3 answers to {out}"
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # as any file the user writes
    assert out.read_text().splitlines()[1] == json.dumps(
        {"user_id": "u1-1", **json.loads(run("query", "--store", store, "--user", "u1-1",
                                             "--domain", "movies", "--json").output)})
    users.write_bytes(b"\xef\xbb\xbfu3-0\r\nu1-1\r\n")  # a spreadsheet's: BOM, CRLF
    lines = run("query", "--store", store, "--users", str(users), "--domain", "movies",
                "-k", "4").output.splitlines()
    assert [json.loads(line)["user_id"] for line in lines] == ["u3-0", "u1-1"]
    lines = run("query", "--store", store, "--users", "-", "--domain", "movies",
                input="user_id\nu1-1\n").output.splitlines()  # a column with its header
    assert [json.loads(line)["user_id"] for line in lines] == ["u1-1"]
    r = run("query", "--store", store, "--users", "-", "--domain", "movies",
            input="u3-0,test\n", ok=False)  # a table, not a column
    assert r.exit_code == 1 and ("line 1: unknown user 'u3-0,test' (one id per line: the file "
                                 "looks like a table") in r.output
    r = run("query", "--store", store, "--users", "-", "--domain", "movies",
            input="u3-0\ttest\n", ok=False)  # a tab-separated one
    assert r.exit_code == 1 and "(one id per line: the file looks like a table" in r.output
    users.write_bytes("u3-0\nJos\u00e9\n".encode("latin-1"))
    r = run("query", "--store", store, "--users", str(users), "--domain", "movies", ok=False)
    assert r.exit_code == 1 and f"{users}: not UTF-8 text" in r.output
    before = out.read_text()
    users.write_text("u3-0\n# a comment\nghost\n")
    r = run("query", "--store", store, "--users", str(users), "--domain", "movies",
            "--out", str(out), ok=False)
    assert r.exit_code == 1 and f"{users}, line 3: unknown user 'ghost'" in r.output
    assert out.read_text() == before
    # and the partial answers are not left beside it (a later run of this same process would
    # reuse the name, so this is the moment to look)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "recs.jsonl", "store",
                                                          "users.txt"]
    # or a user the store does not know gets what a user with no history gets, said so
    r = run("query", "--store", store, "--users", str(users), "--domain", "movies",
            "--unknown-users", "popular", "--out", str(out))
    assert "1 of 2 users unknown to the store got the most popular items of movies" in r.output
    known, ghost = (json.loads(line) for line in out.read_text().splitlines())
    assert known["user_id"] == "u3-0" and known["query"].startswith("user u3-0")
    nobody = json.loads(run("query", "--store", store, "--history", "", "--domain", "movies",
                            "--json").output)
    assert ghost == {**nobody, "user_id": "ghost",
                     "query": "unknown user ghost: the most popular items"}
    r = run("query", "--store", store, "--user", "ghost", "--domain", "movies",
            "--unknown-users", "popular", ok=False)
    assert r.exit_code == 2 and "--unknown-users goes with --users" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "recs.jsonl", "store",
                                                          "users.txt"]
    r = run("query", "--store", store, "--users", "-", "--domain", "music", input="u3-0\n",
            ok=False)
    assert r.exit_code == 1 and "unknown domain 'music'" in r.output
    assert "line 1" not in r.output  # the domain is wrong, not the file's first line
    r = run("query", "--store", store, "--user", "u3-0", "--domain", "movies", "--out",
            str(out), ok=False)
    assert r.exit_code == 2 and "--out goes with --users" in r.output
    r = run("query", "--store", store, "--users", "-", "--domain", "movies", "--out",
            str(users / "recs.jsonl"), input="u3-0\n", ok=False)  # under a file
    assert r.exit_code == 2 and f"{users} is a file, not a folder" in r.output
    nested = tmp_path / "new" / "recs.jsonl"  # a folder to make, as every output's
    r = run("query", "--store", store, "--users", "-", "--domain", "movies", "--out",
            str(nested), input="u3-0\n")
    assert json.loads(nested.read_text())["user_id"] == "u3-0"
    assert r.stdout == "" and r.stderr == f"wrote 1 answer to {nested}\n"
    # without --out, standard output is the JSON Lines alone (`> recs.jsonl`): the count of
    # unknown users goes to standard error
    r = run("query", "--store", store, "--users", "-", "--domain", "movies", "--unknown-users",
            "popular", input="u3-0\nghost\n")
    assert [json.loads(line)["user_id"] for line in r.stdout.splitlines()] == ["u3-0", "ghost"]
    assert "1 of 2 users unknown to the store" in r.stderr


def test_explain_columns_are_counts_and_shares() -> None:
    """--explain's co-bought and popularity columns are counts of train users' interactions
    (the features hold their log1p: e^x alone reads one more), the overlap a percentage, and the
    last column the feature with the largest part of the score."""
    import math
    from types import SimpleNamespace

    from xdretrieve.cli import _explained

    why = {"features": {"score": 0.8123, "cooccurrence": math.log1p(2),
                        "log_popularity": math.log1p(15), "text_overlap": 0.25},
           "standardised": {"score": 1.5, "cooccurrence": 0.5},
           "contributions": {"score": 0.75, "cooccurrence": 1.25}}
    assert _explained(SimpleNamespace(why=why)) == ("0.81", "2", "15", "25%",
                                                    "co-bought (+1.25)")


def test_index_reads_two_files_stores_items_only_and_recreates(
        paired_dir: Path, tmp_path: Path, tiny_model: str, other_tiny_model: str,
        monkeypatch) -> None:
    """--items with --interactions reads those files (--items alone is a usage error, before
    anything is written); --no-users stores no user profile; --recreate replaces a store
    another encoder built, which is refused without it."""
    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    store = str(tmp_path / "s")
    files = ("--items", str(paired_dir / "items.jsonl"),
             "--interactions", str(paired_dir / "interactions.csv"))
    r = run("index", *files[:2], "--store", store, "--model", tiny_model, ok=False)
    assert r.exit_code == 2 and "give --data DIR, or both --items and --interactions" in r.output
    assert not Path(store).exists()
    out = run("index", *files, "--store", store, "--model", tiny_model, "--no-users",
              "-q").output
    assert re.search(r"^items +24 +24 embedded", out, re.M)
    assert re.search(r"^user profiles +0 +0 written", out, re.M)
    assert json.loads(run("info", "--store", store).output)["points"] == {"items": 24}
    r = run("index", *files, "--store", store, "--model", other_tiny_model, "-q", ok=False)
    assert r.exit_code == 1 and "add --recreate" in r.output
    out = run("index", *files, "--store", store, "--model", other_tiny_model, "--recreate",
              "-q").output
    assert re.search(r"^items +24 +24 embedded", out, re.M)
    info = json.loads(run("info", "--store", store).output)
    assert info["points"] == {"items": 24, "users": 72}
    assert info["encoder"] == str(Path(other_tiny_model).resolve())


def test_index_says_what_a_changed_catalog_changed_and_takes_its_options(
        paired_dir: Path, tmp_path: Path, tiny_model: str, monkeypatch) -> None:
    """The table counts what changed: an item whose text changed embedded, one changed in
    another field rewritten, a removed one deleted, the profiles of the users they touch
    written or deleted; vectors read partly from the cache are said as part of them, not
    'all'; --pooling and --batch-size reach the settings the store is built with."""
    from xdretrieve import indexer

    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    index = ("index", "--model", tiny_model, "--pooling", "mean", "--batch-size", "5", "-q")
    run(*index, "--data", str(paired_dir), "--store", str(tmp_path / "a"))
    data = tmp_path / "data"
    data.mkdir()
    items = [json.loads(line) for line in (paired_dir / "items.jsonl").read_text().splitlines()]
    for item in items:
        if item["item_id"] == "movie-3":
            item["text"] = "a film about deep sea subs"
        if item["item_id"] == "book-2":
            item["price"] = 9.5
    (data / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items
                                              if i["item_id"] != "movie-11"))
    rows = (paired_dir / "interactions.csv").read_text().splitlines(keepends=True)
    (data / "interactions.csv").write_text("".join(r for r in rows if "movie-11," not in r))
    seen = []
    index_dataset = indexer.index_dataset
    monkeypatch.setattr(indexer, "index_dataset",
                        lambda ds, settings, **kw: seen.append(settings)
                        or index_dataset(ds, settings, **kw))
    # a new store of the changed catalog: all but movie-3 read from the cache
    out = run(*index, "--data", str(data), "--store", str(tmp_path / "b")).output
    assert re.search(r"^items +23 +23 embedded, 0 deleted$", out, re.M)
    assert re.search(r"\([\d,]+ items/s, 22 from the embedding cache\)", out)
    assert (seen[0].pooling, seen[0].batch_size) == ("mean", 5)
    assert json.loads(run("info", "--store", str(tmp_path / "b")).output)["pooling"] == "mean"
    out = run(*index, "--data", str(data), "--store", str(tmp_path / "a")).output
    assert re.search(r"^items +23 +1 embedded, 1 rewritten \(other fields\), 1 deleted$", out,
                     re.M)
    assert re.search(r"^user profiles +69 +3 written, 3 deleted$", out, re.M)
    out = run(*index, "--data", str(data), "--store", str(tmp_path / "a")).output
    assert re.search(r"^items +23 +0 embedded, 0 deleted$", out, re.M)
    assert re.search(r"^user profiles +69 +0 written, 0 deleted$", out, re.M)


def data_with_an_empty_title(tmp_path: Path, paired_dir: Path) -> Path:
    """The paired data, with a 25th item whose title is empty."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "items.jsonl").write_text((paired_dir / "items.jsonl").read_text()
                                      + '{"item_id": "book-x", "domain": "books", "title": ""}\n')
    (data / "interactions.csv").write_text((paired_dir / "interactions.csv").read_text())
    return data


def test_bad_input_writes_nothing(tmp_path: Path, paired_dir: Path) -> None:
    data = data_with_an_empty_title(tmp_path, paired_dir)
    store = tmp_path / "store"
    r = run("index", "--data", str(data), "--store", str(store), ok=False)
    assert r.exit_code == 1
    assert "items.jsonl, line 25, field 'title': must not be empty" in r.output
    # the way on without cleaning the file first (before, a user had to find it in --help)
    assert "(--skip-bad-rows skips such rows, writing them to rejects.jsonl)" in r.output
    assert not store.exists()
    # a file wrong as a whole cannot be skipped a row at a time: no such hint
    whole = tmp_path / "whole"
    whole.mkdir()
    (whole / "items.jsonl").write_text((paired_dir / "items.jsonl").read_text())
    (whole / "interactions.csv").write_text("user_id,item\nu0,book-0\n")
    r = run("index", "--data", str(whole), "--store", str(store), ok=False)
    assert "no 'item_id' column" in r.output and "--skip-bad-rows" not in r.output

    rejects = tmp_path / "rejects.jsonl"
    out = run("index", "--data", str(data), "--store", str(store), "--skip-bad-rows",
              "--rejects", str(rejects), "-q").output
    assert "skipped 1 bad row(s)" in out and re.search(r"^items +24 ", out, re.M)
    assert json.loads(rejects.read_text())["field"] == "title"


def test_skip_bad_rows_reads_the_two_files_too_and_writes_nothing_when_none_is_bad(
        tmp_path: Path, paired_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--skip-bad-rows with --items/--interactions (not --data) skips and writes the bad rows
    as with --data; a dataset without bad rows leaves no rejects file and no 'skipped 0'."""
    from xdretrieve.cli_checks import read_dataset

    data = data_with_an_empty_title(tmp_path, paired_dir)
    rejects = tmp_path / "rejects.jsonl"
    dataset = read_dataset(None, True, rejects, items=data / "items.jsonl",
                           interactions=data / "interactions.csv")
    assert len(dataset.items) == 24 and json.loads(rejects.read_text())["field"] == "title"
    assert f"skipped 1 bad row(s), written to {rejects}" in capsys.readouterr().err
    clean = tmp_path / "clean.jsonl"
    assert len(read_dataset(paired_dir, True, clean).items) == 24
    assert not clean.exists() and capsys.readouterr().err == ""


def test_only_the_first_process_of_a_launch_writes_the_rejects(
        tmp_path: Path, paired_dir: Path, monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Under torchrun every process reads the dataset; only rank 0 writes --rejects and says
    so (several processes writing one file interleaved their rows), the others skip the same
    rows quietly."""
    from xdretrieve.cli_checks import read_dataset

    data = data_with_an_empty_title(tmp_path, paired_dir)
    rejects = tmp_path / "rejects.jsonl"
    monkeypatch.setenv("RANK", "1")
    assert len(read_dataset(data, True, rejects).items) == 24
    assert not rejects.exists() and capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert len(read_dataset(data, True, rejects).items) == 24
    assert rejects.is_file() and "skipped 1 bad row(s)" in capsys.readouterr().err


def test_finetune_and_evaluate_skip_bad_rows_as_index_does(tmp_path: Path, paired_dir: Path,
                                                          tiny_model: str, monkeypatch) -> None:
    """Before, only `index` had --skip-bad-rows: data it indexed could not be trained on or
    evaluated without cleaning it first."""
    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    data = data_with_an_empty_title(tmp_path, paired_dir)
    for args in (["finetune", "--out", str(tmp_path / "m"), "--model", tiny_model,
                  "--dim", "8", "--epochs", "1"],
                 ["evaluate", "--method", "popularity", "--out", str(tmp_path / "ev")]):
        r = run(*args, "--data", str(data), "-q", ok=False)
        assert r.exit_code == 1 and "line 25, field 'title': must not be empty" in r.output
        rejects = tmp_path / f"{args[0]}-rejects.jsonl"
        out = run(*args, "--data", str(data), "-q", "--skip-bad-rows", "--rejects",
                  str(rejects)).output
        assert f"skipped 1 bad row(s), written to {rejects}" in out
        assert json.loads(rejects.read_text())["field"] == "title"
    assert (tmp_path / "m" / "xdretrieve_model.json").is_file()
    assert (tmp_path / "ev" / "results.json").is_file()


def test_running_out_of_memory_is_one_line(tmp_path: Path, paired_dir: Path,
                                           monkeypatch) -> None:
    """Before, torch's traceback (`finetune --dim 100000` asked for 37 GiB at once)."""
    from xdretrieve.cli_checks import out_of_memory
    from xdretrieve.train import finetune

    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                       "can't allocate memory: you tried to allocate 40000000000 bytes.")
    assert out_of_memory(cpu).startswith("out of memory (37.3 GiB asked for at once): ")
    gpu = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB.\nGPU 0 has ...")
    assert out_of_memory(gpu).startswith("out of memory (CUDA out of memory. Tried to allocate "
                                         "2.00 GiB.): ")
    assert out_of_memory(MemoryError()).startswith("out of memory: ")
    assert out_of_memory(RuntimeError("shapes do not match")) is None  # a bug stays a traceback

    def exhausted(*_args: object, **_kwargs: object) -> None:
        raise cpu

    monkeypatch.setattr(finetune, "finetune", exhausted)
    r = run("finetune", "--data", str(paired_dir), "--out", str(tmp_path / "m"), ok=False)
    assert r.exit_code == 1 and "Error: out of memory (37.3 GiB asked for at once)" in r.output
    assert "Traceback" not in r.output

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("shapes do not match")

    monkeypatch.setattr(finetune, "finetune", broken)  # a bug is no one-line user error
    with pytest.raises(RuntimeError, match="shapes do not match"):
        run("finetune", "--data", str(paired_dir), "--out", str(tmp_path / "m"), ok=False)


def test_a_wrong_model_or_output_folder_fails_before_the_data_is_read(
        tmp_path: Path, paired_dir: Path, tiny_model: str) -> None:
    """Before, index and finetune read (and validated) the whole dataset first: on a large
    catalog a mistyped --model, or an --out / --store that is a folder of other files, was
    reported only after that wait, or after its bad rows."""
    data = data_with_an_empty_title(tmp_path, paired_dir)  # reading it would fail
    for args in (["index", "--store", str(tmp_path / "s.xdr")],
                 ["finetune", "--out", str(tmp_path / "m")]):
        r = run(*args, "--data", str(data), "--model", str(tmp_path / "no-such-model"), ok=False)
        assert r.exit_code == 1 and "is not a local sentence-transformers model" in r.output
        assert "title" not in r.output and not (tmp_path / "s.xdr").exists()
    others = tmp_path / "others"
    others.mkdir()
    (others / "notes.txt").write_text("mine")
    r = run("index", "--data", str(data), "--store", str(others), ok=False)
    assert r.exit_code == 2 and "holds other files (notes.txt) and no xdretrieve store" in r.output
    r = run("finetune", "--data", str(data), "--out", str(others), "--model", tiny_model,
            ok=False)
    assert r.exit_code == 2 and "exists and is not an xdretrieve model directory" in r.output
    assert "title" not in r.output and sorted(p.name for p in others.iterdir()) == ["notes.txt"]


def test_full_mode_options_are_refused_in_adapter_mode(tmp_path: Path) -> None:
    """Each option that only full mode uses stops an adapter run by name, before any work (one
    let through trained an adapter and ignored it silently)."""
    for option, value in (("--batch-size", "8"), ("--lr", "1e-4"), ("--ft-epochs", "2"),
                          ("--max-pairs", "100"), ("--hard-negatives", "0"), ("--workers", "1"),
                          ("--gradient-checkpointing", None),
                          ("--no-gradient-checkpointing", None)):
        r = run("finetune", "--data", str(tmp_path), "--out", str(tmp_path / "m"), option,
                *([value] if value else []), ok=False)
        named = "--[no-]gradient-checkpointing" if "checkpointing" in option else option
        assert r.exit_code == 2 and f"{named}: only with --mode full" in r.output, option
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_evaluate_without_method_runs_every_one(tmp_path: Path, paired_dir: Path,
                                                monkeypatch) -> None:
    """No --method: every baseline and every retriever-backed method (the help's 'all of
    them'), then the --no-rerank-row row."""
    from xdretrieve.errors import XDRetrieveError

    asked = []

    def evaluate(dataset, methods, **kwargs):
        asked.extend(methods)
        raise XDRetrieveError("stop here")

    monkeypatch.setattr("xdretrieve.evaluate.runner.evaluate", evaluate)
    r = run("evaluate", "--data", str(paired_dir), "--no-rerank-row", "--out",
            str(tmp_path / "ev"), ok=False)
    assert r.exit_code == 1 and "stop here" in r.output
    assert asked == ["popularity", "itemknn", "userknn", "emcdr", "zeroshot", "xdretrieve",
                     "xdretrieve-no-rerank"]


def test_evaluate_says_when_its_xdretrieve_row_is_an_untrained_encoder(
        tmp_path: Path, paired_dir: Path, tiny_model: str, monkeypatch) -> None:
    """Before, `evaluate` without --model reported a row named 'xdretrieve' that was the
    pretrained encoder alone, with no word that the trained pipeline was not in the table."""
    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    r = run("evaluate", "--data", str(paired_dir), "--model", tiny_model, "--method",
            "xdretrieve", "--max-users", "2", "--out", str(tmp_path / "ev"), "-q")
    assert f"note: '{tiny_model}' is not a model `xdretrieve finetune` wrote" in r.output
    assert "'xdretrieve' row is that encoder untrained" in r.output
    r = run("evaluate", "--data", str(paired_dir), "--method", "popularity", "--out",
            str(tmp_path / "ev"), "-q")
    assert "note:" not in r.output  # no such row, no note


def test_a_full_disk_is_one_line_and_index_writes_nothing_first(
        tmp_path: Path, paired_dir: Path, monkeypatch) -> None:
    """Before: 'Bus error' (the engine's memory-mapped write on a full disk, exit 135), or its
    'No space left on device' as a traceback."""
    from collections import namedtuple

    from xdretrieve.store import edge

    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    store = tmp_path / "store"
    full = namedtuple("usage", "total used free")(1 << 30, 1 << 30, 4096)
    with monkeypatch.context() as m:
        m.setattr(edge.shutil, "disk_usage", lambda path: full)
        r = run("index", "--data", str(paired_dir), "--store", str(store), "-q", ok=False)
    assert r.exit_code == 1 and "Error: not enough disk space for the store" in r.output
    assert "0.0 MB are free; free some, or give --store another disk" in r.output
    assert not store.exists()  # refused before the first write

    def engine_out_of_space(*_args: object, **_kwargs: object) -> None:
        raise Exception("Service runtime error: IO Error: Failed to flush segment.json: No space "
                        "left on device (os error 28)")

    # the engine's own error, where the store writes (as the HTTP service's PUT /items meets it)
    monkeypatch.setattr(edge, "write_points", engine_out_of_space)
    r = run("index", "--data", str(paired_dir), "--store", str(store), "-q", ok=False)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert ("Error: out of disk space (Service runtime error: IO Error: Failed to flush "
            "segment.json: No space left on device (os error 28)): free some and run the command "
            "again (index goes on from what it wrote)") in r.output

    def engine_bug(*_args: object, **_kwargs: object) -> None:
        raise Exception("Service runtime error: something else")

    monkeypatch.setattr(edge, "write_points", engine_bug)
    with pytest.raises(Exception, match="something else"):  # a bug stays a traceback
        run("index", "--data", str(paired_dir), "--store", str(store), "-q", ok=False)


def test_paths_that_cannot_be_written_fail_before_the_work(tmp_path: Path, paired_dir: Path,
                                                           monkeypatch) -> None:
    """An output folder under a file is refused when the option is read (a usage error: no data
    read, no model trained, no evaluation run first); an OS error met later (here writing the
    rejects) is one line naming the path, not a traceback."""
    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    blocker = tmp_path / "F"
    blocker.write_text("")
    for args in (["index", "--data", str(paired_dir), "--store", str(blocker / "s.xdr")],
                 ["finetune", "--data", str(paired_dir), "--out", str(blocker / "m.model")],
                 ["evaluate", "--data", str(paired_dir), "--method", "popularity",
                  "--out", str(blocker / "results")],
                 ["demo", "--store", str(blocker / "d.xdr")]):
        r = run(*args, ok=False)
        assert r.exit_code == 2, (args, r.output)
        assert f"{blocker} is a file, not a folder" in r.output, args

    data = data_with_an_empty_title(tmp_path, paired_dir)
    rejects = blocker / "rejects.jsonl"
    r = run("index", "--data", str(data), "--store", str(tmp_path / "store"), "--skip-bad-rows",
            "--rejects", str(rejects), "-q", ok=False)
    assert r.exit_code == 1 and f"Error: {rejects}: Not a directory" in r.output


def test_a_system_error_without_a_path_is_said_as_the_system_says_it() -> None:
    """An OSError that names no file (a full disk met writing to a pipe) is its own line, not
    one that starts with an empty path and a colon."""
    import errno

    import click

    from xdretrieve.cli_checks import fail_cleanly

    @fail_cleanly
    def write() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(click.ClickException) as failed:
        write()
    assert failed.value.message == "[Errno 28] No space left on device"


def test_light_imports() -> None:
    """`import xdretrieve` and `xdretrieve --help` must not import torch."""
    code = ("import sys, xdretrieve, xdretrieve.cli\n"
            "from click.testing import CliRunner\n"
            "assert CliRunner().invoke(xdretrieve.cli.main, ['--help']).exit_code == 0\n"
            "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("package", ["xdretrieve", "xdretrieve.evaluate"])
def test_every_exported_name_resolves_and_an_unknown_one_is_refused(package: str) -> None:
    """`from xdretrieve import X` works for every name of ``__all__`` (an export pointed at the
    wrong module failed only at a user's first use), and a misspelt name is an ImportError
    (AttributeError), not a None that fails later and further away. The same for
    ``xdretrieve.evaluate``, whose names are lazy too."""
    import ast
    import importlib

    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert not hasattr(module, "Retreiver")
    with pytest.raises(ImportError, match="Retreiver"):
        exec(f"from {package} import Retreiver")
    # and every name the TYPE_CHECKING block imports (what an editor offers after `from
    # xdretrieve import`) is exported: one left out of the lazy table failed at run time
    tree = ast.parse(Path(module.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and getattr(node.test, "id", "") == "TYPE_CHECKING")
    typed = {alias.name for node in block.body for alias in node.names}
    assert set(module.__all__) == typed | ({"__version__"} if package == "xdretrieve" else set())


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run([sys.executable, "-m", "xdretrieve", "query", "--help"],
                          capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.startswith("Usage: xdretrieve query [OPTIONS]")


def test_the_version_is_the_package_s() -> None:
    """`xdretrieve --version` says the version pyproject.toml gives the package (the one a bug
    report names; the two were kept by hand)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    version = tomllib.loads(pyproject.read_text())["project"]["version"]
    assert run("--version").output == f"xdretrieve, version {version}\n"


def check_demo_answers(out: str) -> None:
    """Each user the demo shows: a test user of the sample (not trained on), queried with their
    books, answered with five movies, of which it counts those in their movie history right."""
    from xdretrieve.cli import DEMO_DIR
    from xdretrieve.data import Dataset

    sample = Dataset.from_dir(DEMO_DIR)
    blocks = re.findall(r"user (\S+), treated as cold-start in movies: the query is their (\d+) "
                        r"books only\n((?:   books: .*\n)+)rank +movies +score\n-[- ]+\n"
                        r"((?:\d .*\n)+)   \((\d) of these 5", out)
    assert len(blocks) == 2
    for user, n_books, books, rows, found in blocks:
        history = sample.histories[user]
        assert sample.splits[user] == "test"
        assert [line.split("books: ")[1] for line in books.splitlines()] == [
            sample.items[i].title for i in history["books"]] and int(n_books) == len(
            history["books"])
        titles = [re.split(r"\s{2,}", line)[1] for line in rows.splitlines()]
        movies = {item.title for item in sample.items.values() if item.domain == "movies"}
        assert len(titles) == 5 and set(titles) <= movies
        watched = {sample.items[i].title for i in history["movies"]}
        assert int(found) == len(set(titles) & watched)


def test_demo_trains_indexes_and_answers(tmp_path: Path, monkeypatch, minilm_model: str) -> None:
    """`xdretrieve demo`, the README's first command: a model trained on the packaged sample,
    the sample indexed with it, two cold-start users answered with some of their held-out
    movies; run again, it rebuilds both."""
    from xdretrieve.config import Settings
    from xdretrieve.store import open_store

    monkeypatch.setenv("XDR_CACHE_DIR", str(tmp_path / "cache"))
    store = tmp_path / "demo"
    for _ in range(2):
        out = run("demo", "--store", str(store)).output
        assert "training a model on the demo sample (80 items: books, movies; 48 train users)" in out
        assert re.search(r"re-ranker on valid users, .*: books->movies 0\.\d{4} -> 0\.\d{4}, "
                         r"movies->books 0\.\d{4} -> 0\.\d{4}; served into ", out)
        said = re.findall(r"\((\d) of these 5 (is|are) in the user's", out)
        found = [int(n) for n, _ in said]
        assert len(found) == 2 and all(n >= 1 for n in found)
        assert all(verb == ("is" if n == "1" else "are") for n, verb in said)
        check_demo_answers(out)
        with open_store(Settings(store=store)) as s:
            assert s.read_info().extra["trained"] == str((tmp_path / "demo.model").resolve())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "demo", "demo.model"]
    # the commands it suggests work as printed; the demo model's re-ranker explains its order
    import shlex

    tries = [shlex.split(line.split("Try:")[-1])[1:] for line in out.splitlines()
             if line.lstrip().startswith(("Try: xdretrieve", "xdretrieve query"))]
    assert len(tries) == 3
    answers = [run(*args).output for args in tries]
    assert "counted most" in answers[1] and "co-bought" in answers[1]


def test_a_cuda_device_the_machine_lacks_is_refused_before_the_data_is_read(
        tmp_path: Path, tiny_model: str, monkeypatch) -> None:
    """Before, `finetune` and `index` read the whole dataset first (minutes on a large one)
    and only then stopped on the device (index: only once it had items to embed)."""
    data = tmp_path / "data"
    data.mkdir()  # a bad row: read first, it would be the error
    (data / "items.jsonl").write_text('{"item_id": "x", "domain": "books", "title": ""}\n')
    (data / "interactions.csv").write_text("user_id,item_id\nu,x\n")
    monkeypatch.setattr("xdretrieve.encoder.has_cuda", lambda: False)  # as on a CPU machine
    for command in (["finetune", "--out", str(tmp_path / "m")],
                    ["index", "--store", str(tmp_path / "s")]):
        r = run(*command, "--data", str(data), "--model", tiny_model, "--device", "cuda:1",
                ok=False)
        assert r.exit_code == 2, r.output
        assert "device 'cuda:1': torch sees no CUDA device on this machine" in r.output
        assert "title" not in r.output and not list(tmp_path.glob("[ms]"))


def test_a_bad_parquet_row_is_named_by_its_row_number(tmp_path: Path, paired_dir: Path) -> None:
    """A Parquet file has rows, not lines: the command's message (the one with the
    --skip-bad-rows hint) says 'row 2' as the reader does, not 'line 2' of a binary file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    data.mkdir()
    (data / "items.jsonl").write_text((paired_dir / "items.jsonl").read_text())
    pq.write_table(pa.Table.from_pylist([{"user_id": "u1", "item_id": "book-0", "position": 0},
                                         {"user_id": "u1", "item_id": "zz", "position": 1}]),
                   data / "interactions.parquet")
    r = run("index", "--data", str(data), "--store", str(tmp_path / "store"), ok=False)
    assert r.exit_code == 1
    assert ("interactions.parquet, row 2, field 'item_id': unknown item 'zz' (--skip-bad-rows "
            "skips such rows") in r.output
