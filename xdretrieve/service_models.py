"""Request and response bodies of the HTTP service (:mod:`xdretrieve.service`).

Validated here, at the edge: a body that does not fit gets a 422 with the field that is wrong,
before anything reaches the retriever or the store.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from xdretrieve.data.records import INDEX_FIELDS, domain_problem, payload_int

MAX_LIMIT = 1000
MAX_BATCH = 1000  # items per PUT / DELETE


def _text(min_length: int, max_length: int) -> Any:
    # pydantic refuses lone surrogates ("\ud800" in JSON) itself: they could not be stored
    return Annotated[str, StringConstraints(strip_whitespace=True, min_length=min_length,
                                            max_length=max_length)]


Id = _text(1, 512)
Title = _text(1, 1000)
Body = _text(0, 20_000)
QueryText = _text(1, 10_000)
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description="How many hits, best first.")]
Explain = Annotated[bool, Field(description="Also say why each hit is there (`why`).")]
# payload values: flat JSON scalars that every Qdrant backend stores as given (an integer
# beyond 64 bits arrives here as its digits: ItemIn's validator)
Scalar = str | bool | int | Annotated[float, Field(allow_inf_nan=False)] | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserRequest(_Body):
    """A stored user: their history in the other domains is the query."""

    user_id: Id
    domain: Id = Field(description="The target domain to recommend from.")
    limit: Limit = 10
    explain: Explain = False

    model_config = ConfigDict(json_schema_extra={
        "examples": [{"user_id": "u3-0", "domain": "movies", "limit": 10}]})


class HistoryRequest(_Body):
    """A user the store has never seen, given by item ids (oldest first); no items at all: the
    target domain's most popular items (the response's `query` says so)."""

    item_ids: list[Id] = Field(max_length=MAX_BATCH)
    domain: Id = Field(description="The target domain to recommend from.")
    limit: Limit = 10
    explain: Explain = False

    model_config = ConfigDict(json_schema_extra={
        "examples": [{"item_ids": ["book-3"], "domain": "movies", "limit": 10}]})


class TextRequest(_Body):
    """A free-text query, embedded by the store's encoder."""

    text: QueryText
    domain: Id = Field(description="The target domain to search.")
    limit: Limit = 10

    model_config = ConfigDict(json_schema_extra={
        "examples": [{"text": "space opera", "domain": "movies", "limit": 10}]})


class Why(BaseModel):
    features: dict[str, float] = Field(description="What the re-ranker saw of the item: the "
                                       "model's score and cosine, log popularity, co-occurrence "
                                       "with the history in train users, text overlap.")
    standardised: dict[str, float] = Field(description="Each feature's value in standard "
                                           "deviations from its mean over the candidates the "
                                           "re-ranker was fitted on (below 0: lower than usual).")
    contributions: dict[str, float] = Field(description="Each feature's part of the score "
                                            "(weight x standardised value; they sum to it).")


class HitOut(BaseModel):
    rank: int = Field(ge=1)
    item_id: str
    title: str
    score: float
    why: Why | None = Field(default=None, description="With `explain`: why the re-ranker put "
                            "the item here; null where none ordered the answer.")


class HitsResponse(BaseModel):
    query: str = Field(description="What the query vector came from.")
    domain: str
    hits: list[HitOut]


class ItemIn(_Body):
    """An item as ``index`` reads it: ``extra`` fields travel to the store as payload."""

    item_id: Id
    domain: Id
    title: Title
    text: Body = ""
    extra: dict[Annotated[str, StringConstraints(min_length=1, max_length=128)], Scalar] = Field(
        default_factory=dict, max_length=100)

    @field_validator("extra", mode="before")
    @classmethod
    def _wide_integers_as_text(cls, extra: Any) -> Any:
        # as the readers keep them (before: stored as a float, which lost their digits)
        if not isinstance(extra, dict):
            return extra  # refused as not an object, below
        return {k: payload_int(v) if type(v) is int else v for k, v in extra.items()}

    @field_validator("domain")
    @classmethod
    def _a_domain_name(cls, domain: str) -> str:
        problem = domain_problem(domain)  # as the files are held to
        if problem:
            raise ValueError(problem)
        return domain

    @field_validator("extra")
    @classmethod
    def _not_the_index_fields(cls, extra: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(set(extra) & set(INDEX_FIELDS))
        if reserved:  # the index would overwrite them with its own
            raise ValueError(f"{', '.join(reserved)}: names xdretrieve keeps for itself in the "
                             f"store; rename the field")
        return extra


class UpsertRequest(_Body):
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_BATCH)

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [
        {"item_id": "movie-12", "domain": "movies", "title": "Knitting: the movie",
         "text": "a film about knitting"}]}]})


class UpsertResponse(BaseModel):
    upserted: int = Field(description="Distinct items embedded and written.")
    domains: list[str] = Field(description="The store's domains after the write.")
    new_to_model: int = Field(0, description=(
        "Of them, items the store's trained model learned no bias for (added since it was "
        "trained): they seldom reach a user's top 10 until the model is trained again with "
        "them. 0 for a store without a trained model."))


class DeleteRequest(_Body):
    item_ids: list[Id] = Field(min_length=1, max_length=MAX_BATCH)


class DeleteResponse(BaseModel):
    deleted: list[str] = Field(description="Ids that were in the store and are now gone.")
    not_found: list[str] = Field(description="Ids the store did not have.")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    version: str


class ReadyResponse(BaseModel):
    ready: bool
    items: int = Field(description="Items in the store.")
    reason: str | None = Field(None, description="Why it is not ready.")


class InfoResponse(BaseModel):
    """What built the store (:class:`xdretrieve.store.StoreInfo`) and what it holds."""

    encoder: str
    fingerprint: str
    dim: int
    version: str
    domains: list[str]
    text_template: str
    max_seq_length: int
    pooling: str
    created_at: str
    updated_at: str
    extra: dict[str, Any] = Field(default_factory=dict)
    points: dict[str, int] = Field(description="Points per collection (items, users).")
    model: dict[str, Any] | str | None = Field(
        default=None, description="What the store's trained model learned (`xdretrieve info`'s "
                                  "`model`); null for a store of a pretrained encoder.")


class ErrorResponse(BaseModel):
    detail: str
