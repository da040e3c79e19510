"""xdretrieve as a LlamaIndex retriever: a query string in, scored ``TextNode``s out.

Example:
    >>> from xdretrieve import Retriever, Settings
    >>> from xdretrieve_llamaindex import XDRetrieveRetriever
    >>> r = XDRetrieveRetriever(Retriever(Settings(store="shop.xdr")), domain="movies",
    ...                         mode="user", limit=5)                      # doctest: +SKIP
    >>> r.retrieve("u42")[0].node.node_id
    'movie-7'
"""

from __future__ import annotations

from typing import Any, Literal

from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

__all__ = ["XDRetrieveRetriever"]


class XDRetrieveRetriever(BaseRetriever):
    """Items of ``domain`` for the query string, read according to ``mode``: a stored user's
    id (``"user"``), comma-separated item ids, oldest first (``"history"``), or free text
    (``"text"``).

    Each hit becomes ``NodeWithScore(TextNode(id_=item_id, text=title, metadata={item_id,
    domain, score, ...}), score)`` with the item's stored payload in the metadata.

    Args:
        retriever: an ``xdretrieve.Retriever``.
        domain: the target domain.
        mode: how to read the query string.
        limit: how many nodes.
    """

    def __init__(self, retriever: Any, domain: str,
                 mode: Literal["user", "history", "text"] = "history", limit: int = 10,
                 **kwargs: Any):
        if mode not in ("user", "history", "text"):
            raise ValueError(f"mode must be 'user', 'history' or 'text', not {mode!r}")
        self.retriever, self.domain, self.mode, self.limit = retriever, domain, mode, limit
        super().__init__(**kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str
        if self.mode == "user":
            hits = self.retriever.recommend_user(query.strip(), self.domain, self.limit)
        elif self.mode == "history":
            items = [i.strip() for i in query.split(",") if i.strip()]
            hits = self.retriever.recommend_history(items, self.domain, self.limit)
        else:
            hits = self.retriever.search_text(query, self.domain, self.limit)
        return [NodeWithScore(node=TextNode(id_=h.item_id, text=h.title, metadata={
            **h.fields,
            "item_id": h.item_id, "domain": h.domain, "score": h.score}), score=h.score)
            for h in hits]
