"""pytest fixtures for the tests of an integration (``plugins/*``): a store whose right answer
is known, and what the integration's README example prints. Each plugin is a package of its
own; its ``tests/conftest.py`` imports these rather than repeating them::

    from xdretrieve.testing import paired_settings, readme_example_output, themes  # noqa: F401

Needs pytest (not a dependency of xdretrieve: imported only by tests).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

THEMES = ["dragons", "cooking", "baseball", "submarines"]


@pytest.fixture(scope="session")
def themes() -> list[str]:
    return THEMES


@pytest.fixture(scope="session")
def paired_settings(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Settings of a store of books and movies; user ``u{t}`` read book t and nothing else, and
    a reader of book t likes movie t."""
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
def readme_example_output(request: pytest.FixtureRequest, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What the Python example of the README beside the test's folder prints, run as printed
    on the store it names (the one ``xdretrieve demo --store shop.xdr`` builds)."""
    from click.testing import CliRunner

    from xdretrieve.cli import main

    monkeypatch.chdir(tmp_path)
    built = CliRunner().invoke(main, ["demo", "--store", "shop.xdr"])
    assert built.exit_code == 0, built.output
    readme = (Path(request.path).parents[1] / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    exec(compile(example, "README.md", "exec"), {})
    return capsys.readouterr().out.splitlines()
