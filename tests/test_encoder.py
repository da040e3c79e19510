"""Encoder: model resolution without downloads, device choice, the embedding cache."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from xdretrieve.cli import main
from xdretrieve.config import Settings
from xdretrieve.data import Item
from xdretrieve.encoder import Encoder, has_cuda, item_text, pick_device, resolve_model
from xdretrieve.errors import XDRetrieveError


def test_resolve_default_and_local_dirs(tiny_model: str, tmp_path: Path) -> None:
    default = resolve_model("all-MiniLM-L6-v2")
    assert default.name == "all-MiniLM-L6-v2" and (default.path / "modules.json").is_file()
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == default
    tiny = resolve_model(tiny_model)
    assert tiny.fingerprint != default.fingerprint
    assert resolve_model(tiny_model).fingerprint == tiny.fingerprint  # content, not location
    with pytest.raises(XDRetrieveError, match="never downloads models"):
        resolve_model("bert-base-uncased")


def test_a_model_changed_in_this_process_gets_its_new_fingerprint(tiny_model: str,
                                                                  tmp_path: Path) -> None:
    """Read once a process, the fingerprint still follows the files: before, a model retrained
    in place by the same process (``xdretrieve demo`` twice, a notebook) kept the first
    fingerprint, and ``index`` recorded it for the new model."""
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    before = resolve_model(str(copy)).fingerprint
    assert resolve_model(str(copy)).fingerprint == before
    config = copy / "config.json"
    config.write_text(config.read_text().replace("{", '{"comment": "retrained",', 1))
    after = resolve_model(str(copy)).fingerprint
    assert after != before
    shutil.rmtree(copy)
    shutil.copytree(tiny_model, copy)  # the same content again: the same fingerprint
    assert resolve_model(str(copy)).fingerprint == before


def test_a_model_retrained_to_files_of_the_same_size_gets_a_new_fingerprint(
        tiny_model: str, tmp_path: Path) -> None:
    """Retrained weights have the very size of the old ones: only the modification time tells
    the process that read the fingerprint before that the files changed."""
    import os
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    before = resolve_model(str(copy)).fingerprint
    config = copy / "config.json"
    text = config.read_text()
    changed = text.replace('"', "'", 1) if '"' in text else text
    assert len(changed) == len(text) and changed != text
    mtime = config.stat().st_mtime_ns
    config.write_text(changed)
    os.utime(config, ns=(mtime + 10**9, mtime + 10**9))
    assert resolve_model(str(copy)).fingerprint != before


def test_docs_beside_the_weights_do_not_change_the_fingerprint(tiny_model: str,
                                                               tmp_path: Path) -> None:
    """A README.md written or edited next to a model changes nothing it computes: the same
    fingerprint, so that the store and the cache built with it stay valid."""
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    before = resolve_model(str(copy)).fingerprint
    (copy / "README.md").write_text("# my encoder\nfine-tuned on our catalog\n")
    assert resolve_model(str(copy)).fingerprint == before


def test_a_local_model_is_named_by_its_absolute_path_and_may_lack_modules_json(
        tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model given as a relative path is recorded by its absolute one (a store built from
    one folder is opened from another); a plain transformers folder (config.json, no
    modules.json) is a model too."""
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    monkeypatch.chdir(tmp_path)
    ref = resolve_model("model")
    assert ref.name == str(copy.resolve()) and ref.path == copy.resolve()
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(copy / "config.json", plain / "config.json")
    assert resolve_model(str(plain)).path == plain.resolve()


def test_item_text_template() -> None:
    item = Item("b1", "books", "Dune", "a desert planet")
    assert item_text(item, "{title}. {text}") == "Dune. a desert planet"
    assert item_text(Item("b2", "books", "Emma"), "{title}. {text}") == "Emma"
    assert item_text(item, "[{domain}] {title}: {text}") == "[books] Dune: a desert planet"


@pytest.mark.parametrize(("template", "expected"), [
    ("{title} by {brand}", "has the field {brand}; an item's text is made of {title}, {text}, "
                           "{domain}"),
    ("{0}", "has the field {0}"),
    ("{title.upper}", "has the field {title.upper}"),
    ("{title} {", "is not a template: Single '{' encountered"),
    ("{title} {}", "has the field {}"),  # a positional field: an IndexError when embedding
])
def test_a_template_with_an_unknown_field_is_refused_in_the_settings(
        template: str, expected: str, tmp_path: Path, monkeypatch) -> None:
    # before: a KeyError from the middle of `index`, after the data had been read
    with pytest.raises(ValueError, match=re.escape(expected)):
        Settings(text_template=template)
    monkeypatch.setenv("XDR_TEXT_TEMPLATE", template)
    r = CliRunner().invoke(main, ["index", "--data", str(tmp_path), "--store",
                                  str(tmp_path / "store")])
    assert r.exit_code == 2 and f"setting text_template: '{template}' " in r.output
    assert Settings(text_template="{{{title}}}: {text}").text_template == "{{{title}}}: {text}"


def test_a_device_that_is_not_there_is_refused_in_one_line(
        paired_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, torch's traceback ('Torch not compiled with CUDA enabled', 'Expected one of cpu,
    cuda, ipu, ...'), from the model's loading."""
    import torch

    from xdretrieve import encoder
    from xdretrieve.errors import ConfigError

    with pytest.raises(ValueError, match="'tpu' is not a device xdretrieve runs on"):
        Settings(device="tpu")
    assert Settings(device="cuda:1").device == "cuda:1"
    assert Settings(device="cuda:10").device == "cuda:10"  # a machine of 16 GPUs has a tenth
    for near in ("cpu0", "cuda:1x", "auto-gpu"):  # the whole name, not its start
        with pytest.raises(ValueError, match=f"'{near}' is not a device xdretrieve runs on"):
            Settings(device=near)
    monkeypatch.setattr(encoder, "has_cuda", lambda: False)
    assert pick_device("auto") == "cpu" and pick_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="'cuda': torch sees no CUDA device"):
        pick_device("cuda")
    index = ["index", "--data", str(paired_dir), "--store", str(tmp_path / "s"), "-q"]
    r = CliRunner().invoke(main, [*index, "--device", "cuda:0"])  # a usage error, as 'mps' is
    assert r.exit_code == 2 and "torch sees no CUDA device" in r.output
    r = CliRunner().invoke(main, [*index, "--device", "mps"])
    assert r.exit_code == 2 and "'mps' is not a device xdretrieve runs on" in r.output
    monkeypatch.setattr(encoder, "has_cuda", lambda: True)
    assert pick_device("auto") == "cuda"  # a GPU is used when there is one
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("cuda") == "cuda"  # plain 'cuda' is cuda:0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match="has 2 CUDA device.*cuda:0 to cuda:1"):
        pick_device("cuda:2")


def test_cache_is_used_and_can_be_bypassed(tiny_model: str, tmp_path: Path) -> None:
    enc = Encoder.from_settings(Settings(model=tiny_model, cache_dir=tmp_path))
    assert enc.device == pick_device("auto")
    texts = ["red pencil", "blue stapler"]
    first = enc.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert set(enc.cache.get(texts)) == {0, 1}
    enc._embed = None  # a cache hit must not embed again
    np.testing.assert_array_equal(enc.encode(texts), first)
    with pytest.raises(TypeError):
        enc.encode(texts, cache=False)  # bypassing the cache embeds (and _embed is gone)
    assert enc.cache.get(["never cached"]) == {}


def test_embedding_shows_its_progress_only_when_asked(tiny_model: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    """Long embedding shows a bar that counts the texts it embeds (each distinct text once),
    named as the caller says; nothing when not asked."""
    enc = Encoder.from_settings(Settings(model=tiny_model, cache_dir=tmp_path))
    enc.encode(["green ink", "black ink"])
    assert capsys.readouterr().err == ""
    enc.encode(["red pencil", "blue stapler", "red pencil"], progress=True, desc="embedding items")
    err = capsys.readouterr().err
    assert "embedding items" in err and "2/2" in err


def test_the_token_limit_is_the_model_s_at_most_and_keys_the_cache(tiny_model: str,
                                                                   tmp_path: Path) -> None:
    """A limit above what the model has positions for is the model's own (64 here): asked for
    1,000 tokens, a long text is embedded as at 64, not past the model's 128 positions. Vectors
    cut at one limit are cached apart from those cut at another."""
    long = " ".join(f"word{k}" for k in range(300))
    short_cut = Encoder.from_settings(Settings(model=tiny_model, cache_dir=tmp_path,
                                               max_seq_length=16))
    at_16 = short_cut.encode([long])
    wide = Encoder.from_settings(Settings(model=tiny_model, cache_dir=tmp_path,
                                          max_seq_length=1000))
    assert wide.model.max_seq_length == 64
    at_64 = wide.encode([long])  # not the 16-token vector cached above
    assert wide.cache_hits == 0 and not np.allclose(at_64, at_16, atol=1e-3)
    np.testing.assert_allclose(at_64, wide.encode([long], cache=False), atol=1e-6)
    np.testing.assert_array_equal(short_cut.encode([long]), at_16)  # its own, from the cache


def test_the_cache_keeps_each_text_s_own_vector(tmp_path: Path) -> None:
    """Texts that differ only at their end (a catalog's items share long category paths) get
    their own vectors, and a read of more texts than one SQL statement takes finds them all."""
    from xdretrieve.embedding_cache import EmbeddingCache

    prefix = "arts crafts sewing > painting > acrylic paints > brand x > " * 2
    texts = [f"{prefix}{k}" for k in range(1_200)]
    vectors = np.random.default_rng(0).normal(size=(len(texts), 8)).astype(np.float32)
    cache = EmbeddingCache(tmp_path, "enc")
    cache.put(texts, vectors)
    cache.close()
    again = EmbeddingCache(tmp_path, "enc")  # from the file
    found = again.get(["not cached", *texts])
    assert sorted(found) == list(range(1, len(texts) + 1))
    np.testing.assert_array_equal(np.stack([found[k + 1] for k in range(len(texts))]), vectors)
    assert EmbeddingCache(tmp_path, "other").get(texts) == {}  # one file per encoder
    again.close()


def test_vectors_cached_by_one_process_are_found_by_the_next(tmp_path: Path) -> None:
    """A rerun is another process: the keys must not depend on the process (Python's hash() of
    a text is salted per process), or every rerun would embed the whole catalog again."""
    import os
    import subprocess
    import sys

    from xdretrieve.embedding_cache import EmbeddingCache

    write = ("import sys; from pathlib import Path; import numpy as np; "
             "from xdretrieve.embedding_cache import EmbeddingCache; "
             "c = EmbeddingCache(Path(sys.argv[1]), 'enc'); "
             "c.put(['red pencil', 'blue stapler'], np.eye(2, 4, dtype=np.float32)); c.close()")
    subprocess.run([sys.executable, "-c", write, str(tmp_path)], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "random"})
    cache = EmbeddingCache(tmp_path, "enc")
    found = cache.get(["blue stapler", "green ink", "red pencil"])
    cache.close()
    assert sorted(found) == [0, 2]
    np.testing.assert_array_equal(np.stack([found[2], found[0]]), np.eye(2, 4))


def test_a_cache_that_cannot_be_used_is_only_a_warning(tiny_model: str, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The cache only saves time: one that cannot be opened (a file in the way, a read-only
    home) is skipped, and one that cannot be written is still read."""
    import sqlite3

    blocker = tmp_path / "F"
    blocker.write_text("")
    enc = Encoder.from_settings(Settings(model=tiny_model, cache_dir=blocker / "cache"))
    assert enc.cache is None and "cannot be used" in caplog.text
    assert enc.encode(["red pencil"]).shape == (1, enc.dim)

    enc = Encoder.from_settings(Settings(model=tiny_model, cache_dir=tmp_path / "cache"))
    first = enc.encode(["red pencil"])
    enc.cache._db = sqlite3.connect(f"file:{enc.cache.path}?mode=ro", uri=True)  # read-only
    both = enc.encode(["red pencil", "blue stapler"])  # writing the new one fails, said so
    assert "cannot be written" in caplog.text
    np.testing.assert_array_equal(both[0], first[0])
    assert set(enc.cache.get(["red pencil", "blue stapler"])) == {0}


def test_a_text_given_twice_is_embedded_once_and_rereads_the_same(tiny_model: str,
                                                                 tmp_path: Path) -> None:
    """Copies of a text get one vector, embedded once, so that a rerun that reads them from the
    cache gets the very vectors (to the bit) that the run which embedded them got."""
    enc = Encoder.from_settings(Settings(model=tiny_model, cache_dir=tmp_path, batch_size=2))
    texts = ["a long text about a red pencil", "glue", "glue", "tape", "glue",
             "a long text about a red pencil"]
    embedded: list[str] = []
    embed = enc._embed
    enc._embed = lambda chunk: embedded.extend(chunk) or embed(chunk)
    fresh = enc.encode(texts)
    assert sorted(embedded) == sorted(set(texts))
    assert all(np.array_equal(fresh[i], fresh[j]) for i, j in [(1, 2), (1, 4), (0, 5)])
    embedded.clear()
    np.testing.assert_array_equal(enc.encode(texts), fresh)  # from the cache
    assert embedded == []
    np.testing.assert_array_equal(enc.encode(texts, cache=False), fresh)


def test_texts_past_one_chunk_are_all_embedded_and_counted_from_the_cache(
        tiny_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Texts are embedded and cached a chunk at a time: none is left out at a chunk's edge, and
    the count of texts read from the cache (index's report) adds up over calls."""
    from xdretrieve import encoder

    monkeypatch.setattr(encoder, "_ENCODE_CHUNK", 2)
    enc = Encoder.from_settings(Settings(model=tiny_model, cache_dir=tmp_path))
    texts = [f"item number {k}" for k in range(5)]
    vectors = enc.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, enc.encode(texts, cache=False), atol=1e-6)
    assert enc.cache_hits == 0 and set(enc.cache.get(texts)) == set(range(5))
    enc.encode(texts[:3])
    enc.encode(texts[3:])
    assert enc.cache_hits == 5


def test_a_cache_that_cannot_be_written_says_so_once(tiny_model: str, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """One warning, then embedding goes on without writing: not a warning (and a failed write)
    for every chunk of a long run."""
    import sqlite3

    enc = Encoder.from_settings(Settings(model=tiny_model, cache_dir=tmp_path))
    enc.encode(["red pencil"])
    enc.cache._db = sqlite3.connect(f"file:{enc.cache.path}?mode=ro", uri=True)  # read-only
    enc.encode(["blue stapler"])
    enc.encode(["green ruler"])
    assert caplog.text.count("cannot be written") == 1


@pytest.mark.gpu
@pytest.mark.skipif(not has_cuda(), reason="needs a CUDA device")
def test_gpu_encoder_runs_in_half_precision(tiny_model: str, tmp_path: Path) -> None:
    import torch

    enc = Encoder.from_settings(Settings(model=tiny_model, cache_dir=tmp_path))
    assert enc.device == "cuda"
    assert next(enc.model.parameters()).dtype == torch.float16
    vectors = enc.encode(["a", "b"], cache=False)
    assert vectors.dtype == np.float32 and vectors.shape == (2, enc.dim)
