"""xdretrieve as a Haystack 2 component: a user, a history or a text in, ``Document``s out.

Example:
    >>> from haystack import Pipeline
    >>> from xdretrieve_haystack import XDRetrieveRetriever
    >>> pipe = Pipeline()
    >>> pipe.add_component("recommend", XDRetrieveRetriever(domain="movies", store="shop.xdr"))
    >>> pipe.run({"recommend": {"history": ["book-01", "book-05"]}})  # doctest: +SKIP
    {'recommend': {'documents': [Document(id=movie-08, content: 'Convoy North', ...), ...]}}
"""

from __future__ import annotations

from typing import Any

from haystack import Document, component, default_from_dict, default_to_dict

__all__ = ["XDRetrieveRetriever"]


@component
class XDRetrieveRetriever:
    """Items of a domain for a stored user, a history of item ids (oldest first) or a text.

    Args:
        domain: the target domain (``run`` may override it).
        limit: how many documents (``run`` may override it).
        store: directory of the embedded store (xdretrieve's ``Settings.store``).
        url: a Qdrant server instead (``Settings.url``).
        model: the encoder, when not the store's default (``Settings.model``).

    Each hit becomes ``Document(id=item_id, content=title, score=score, meta={item_id, domain,
    score, ...})`` with the item's stored payload (text, extra fields) in ``meta``.
    """

    def __init__(self, domain: str, limit: int = 10, store: str | None = None,
                 url: str | None = None, model: str | None = None):
        self.domain, self.limit = domain, limit
        self.store, self.url, self.model = store, url, model
        self._retriever: Any = None

    def warm_up(self) -> None:
        """Open the store (Haystack calls this before a pipeline runs)."""
        if self._retriever is None:
            from xdretrieve import Retriever, Settings

            given = {"store": self.store, "url": self.url, "model": self.model}
            self._retriever = Retriever(Settings(**{k: v for k, v in given.items() if v}))

    def close(self) -> None:
        """Close the store, so that another component or process can open it (an embedded
        store is open in one place at a time). Haystack has no teardown: a component dropped
        unclosed frees the store when it is collected."""
        if self._retriever is not None:
            self._retriever.close()
            self._retriever = None

    @component.output_types(documents=list[Document])
    def run(self, user_id: str | None = None, history: list[str] | None = None,
            text: str | None = None, domain: str | None = None,
            limit: int | None = None) -> dict[str, list[Document]]:
        """Exactly one of ``user_id``, ``history``, ``text``."""
        if sum(x is not None for x in (user_id, history, text)) != 1:
            raise ValueError("give exactly one of user_id, history, text")
        self.warm_up()
        domain = self.domain if domain is None else domain
        limit = self.limit if limit is None else limit
        if user_id is not None:
            hits = self._retriever.recommend_user(user_id, domain, limit)
        elif history is not None:
            hits = self._retriever.recommend_history(history, domain, limit)
        else:
            hits = self._retriever.search_text(text, domain, limit)
        return {"documents": [Document(id=h.item_id, content=h.title, score=h.score, meta={
            **h.fields,
            "item_id": h.item_id, "domain": h.domain, "score": h.score}) for h in hits]}

    def to_dict(self) -> dict[str, Any]:
        return default_to_dict(self, domain=self.domain, limit=self.limit, store=self.store,
                               url=self.url, model=self.model)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> XDRetrieveRetriever:
        return default_from_dict(cls, data)
