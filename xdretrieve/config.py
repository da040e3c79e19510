"""Settings: one validated object at the edge.

Precedence: arguments > environment (``XDR_...``) > ``xdretrieve.toml`` in the working directory
> defaults. The CLI builds one :class:`Settings` from its options and passes it down.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Formatter
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from xdretrieve.errors import ConfigError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# How an item becomes text for the encoder. Fields: {title}, {text}, {domain}.
DEFAULT_TEMPLATE = "{title}. {text}"
TEMPLATE_FIELDS = ("title", "text", "domain")
# HNSW ef of a search. With the default index (one graph per domain, m = 32,
# ef_construct = 256, int8) the 200-candidate search has recall@10 0.999 at 38k real items and
# 0.988 at 1M synthetic vectors (benchmarks/README.md, "Recall"; ef 400: 0.969 at 1M).
DEFAULT_SEARCH_EF = 800


class Settings(BaseSettings):
    """Everything that can be configured, with its default.

    Example:
        >>> Settings(store="shop.xdr", pooling="mean").pooling
        'mean'
    """

    # an empty XDR_ variable (`XDR_STORE=`, a compose file's `${XDR_STORE:-}`) is an unset one
    model_config = SettingsConfigDict(env_prefix="XDR_", env_ignore_empty=True,
                                      toml_file="xdretrieve.toml", extra="forbid")

    # where vectors live
    store: Path = Field(Path(".xdretrieve"), description="Directory of the embedded Qdrant Edge store.")
    url: str | None = Field(None, description="Qdrant server URL; when set, used instead of `store`.")
    # a secret: shown as '**********' wherever the settings are printed or logged
    api_key: SecretStr | None = Field(None, description="Qdrant server API key.")
    collection_prefix: str = Field("xdr_", description="Prefix of the server's collection names.")
    # server collections (applied when a collection is created)
    shards: int = Field(1, ge=1, description="Shards of a new server collection.")
    replicas: int = Field(1, ge=1, description="Copies of each shard on a cluster.")

    # encoder
    model: str = Field(DEFAULT_MODEL, description="Encoder: the packaged default or a local model directory.")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...")
    batch_size: int = Field(64, ge=1)
    max_seq_length: int = Field(128, ge=8, description="Tokens per item text; longer text is cut.")
    text_template: str = Field(DEFAULT_TEMPLATE)
    cache_dir: Path = Field(Path.home() / ".cache" / "xdretrieve",
                            description="Embedding cache (by encoder and text).")

    # users
    pooling: Literal["mean", "recency"] = Field("recency")
    recency_half_life: float = Field(5.0, gt=0, description="Items back at which weight halves.")

    # index and search (hnsw_*, quantization: applied when a collection is created)
    hnsw_m: int = Field(32, ge=4, description="HNSW links per point.")
    hnsw_ef_construct: int = Field(256, ge=8)
    hnsw_per_domain: bool = Field(True, description="Embedded store: one shard, hence one HNSW "
                                  "graph, per domain (what every query searches) instead of one "
                                  "over all items; large upserts write the shards in parallel.")
    quantization: Literal["int8", "none"] = Field(
        "int8", description="Embedded store: search int8 copies of the vectors (in RAM), "
        "rescore the candidates on the originals.")
    search_ef: int = Field(DEFAULT_SEARCH_EF, ge=8, description="HNSW ef at query time.")
    search_threads: int = Field(1, ge=0, description="Embedded store: threads of a collection's "
                                "search pool; 1 searches on the calling thread, 0 takes one per "
                                "CPU (the engine's default: segments searched in parallel).")
    candidates: int = Field(200, ge=1, description="Candidates handed to the re-ranker (half "
                            "nearest neighbours, half items co-occurring with the history).")
    rerank: bool = Field(True, description="Use the trained model's re-ranker when it has one.")

    @field_validator("store", "cache_dir")
    @classmethod
    def _home_folder(cls, path: Path) -> Path:
        """'~' is the home folder, as in a shell: from xdretrieve.toml, an environment variable
        or ``--store=~/x`` it arrives unexpanded (and a folder named '~' was made)."""
        return path.expanduser()

    @field_validator("model")
    @classmethod
    def _model_home_folder(cls, model: str) -> str:
        return str(Path(model).expanduser()) if model.startswith("~") else model

    @field_validator("device")
    @classmethod
    def _device_name(cls, device: str) -> str:
        """Refused here, not as torch's traceback when the model is loaded; whether this
        machine has the device is checked where it is used (:func:`encoder.pick_device`)."""
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            raise ValueError(f"'{device}' is not a device xdretrieve runs on; expected auto, cpu, "
                             f"cuda or cuda:N")
        return device

    @field_validator("text_template")
    @classmethod
    def _known_fields(cls, template: str) -> str:
        """Refused here, not as a KeyError in the middle of embedding a catalog."""
        try:
            fields = [f for _, f, _, _ in Formatter().parse(template) if f is not None]
        except ValueError as e:  # a lone '{' or '}'
            raise ValueError(f"{template!r} is not a template: {e} (write a brace as {{{{ or "
                             f"}}}})") from None
        unknown = [f for f in fields if f not in TEMPLATE_FIELDS]
        if unknown:
            raise ValueError(f"{template!r} has the field {{{unknown[0]}}}; an item's text is made "
                             f"of {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")
        return template

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        try:  # reading the file parses it
            toml = TomlConfigSettingsSource(settings_cls)
        except ValueError as e:  # TOMLDecodeError (tomllib's; tomli's on Python 3.10)
            raise ConfigError(f"xdretrieve.toml (in {Path.cwd()}): {e}") from e
        return init_settings, env_settings, toml
