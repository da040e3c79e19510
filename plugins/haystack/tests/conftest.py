"""A store whose right answer is known: a reader of book i likes movie i."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

THEMES = ["dragons", "cooking", "baseball", "submarines"]


@pytest.fixture(scope="session")
def themes() -> list[str]:
    return THEMES


@pytest.fixture(scope="session")
def paired_settings(tmp_path_factory: pytest.TempPathFactory):
    """Settings of a store of books and movies; user ``u{t}`` read book t and nothing else."""
    from xdretrieve import Dataset, Settings, index_dataset

    root = tmp_path_factory.mktemp("paired")
    items, rows = [], ["user_id,item_id,domain,position"]
    for t, theme in enumerate(THEMES):
        items += [{"item_id": f"book-{t}", "domain": "books", "title": f"The {theme} chronicles",
                   "text": f"a novel about {theme}"},
                  {"item_id": f"movie-{t}", "domain": "movies",
                   "title": f"{theme.capitalize()}: the movie", "text": f"a film about {theme}"}]
        rows += [f"u{t},book-{t},books,0", f"v{t},book-{t},books,0", f"v{t},movie-{t},movies,1"]
    (root / "items.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n")
    (root / "interactions.csv").write_text("\n".join(rows) + "\n")
    settings = Settings(store=root / "store", cache_dir=root / "cache")
    index_dataset(Dataset.from_dir(root), settings)
    return settings


@pytest.fixture
def readme_example_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What the README's Python example prints, run as printed on the store it names."""
    from click.testing import CliRunner

    from xdretrieve.cli import main

    monkeypatch.chdir(tmp_path)
    built = CliRunner().invoke(main, ["demo", "--store", "shop.xdr"])
    assert built.exit_code == 0, built.output
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    exec(compile(example, "README.md", "exec"), {})
    return capsys.readouterr().out.splitlines()
