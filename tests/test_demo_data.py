"""The demo dataset shipped in the package loads and has the shape the demos rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from xdretrieve.data import Dataset

try:
    import xdretrieve

    DEMO = Path(xdretrieve.__file__).resolve().parent / "demo_data"
except (ImportError, TypeError):  # package __init__ missing: locate it from the test file
    DEMO = Path(__file__).resolve().parent.parent / "xdretrieve" / "demo_data"


@pytest.fixture(scope="module")
def demo() -> Dataset:
    return Dataset.from_dir(DEMO)


def test_both_domains_present(demo: Dataset) -> None:
    assert demo.domains == ("books", "movies")
    assert len(demo.items_in("books")) == 40
    assert len(demo.items_in("movies")) == 40


def test_every_user_has_both_domains(demo: Dataset) -> None:
    assert len(demo.histories) >= 50
    for user in demo.histories:
        assert demo.history(user, "books"), f"{user} has no books"
        assert demo.history(user, "movies"), f"{user} has no movies"


def test_splits_cover_every_user(demo: Dataset) -> None:
    assert demo.splits is not None
    assert set(demo.splits.values()) == {"train", "valid", "test"}
    assert set(demo.splits) == set(demo.histories)


def test_items_have_text(demo: Dataset) -> None:
    for item in demo.items.values():
        assert item.title and item.text, item.item_id


def test_pure_single_theme_user(demo: Dataset) -> None:
    # u01 is a jazz fan (theme 18: book-35/36, movie-35/36): the demo query in the README.
    assert set(demo.history("u01", "books")) <= {"book-35", "book-36"}
    assert set(demo.history("u01", "movies")) <= {"movie-35", "movie-36"}


def test_demo_data_is_small() -> None:
    assert sum(p.stat().st_size for p in DEMO.iterdir() if p.is_file()) < 30_000
