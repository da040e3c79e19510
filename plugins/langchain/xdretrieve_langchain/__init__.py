"""xdretrieve as a LangChain retriever: a query string in, ``Document``s out.

Example:
    >>> from xdretrieve import Retriever, Settings
    >>> from xdretrieve_langchain import XDRetrieveRetriever
    >>> r = XDRetrieveRetriever(retriever=Retriever(Settings(store="shop.xdr")),
    ...                         mode="history", domain="movies", limit=5)   # doctest: +SKIP
    >>> r.invoke("book-1,book-7")[0].metadata["item_id"]
    'movie-7'
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field

__all__ = ["XDRetrieveRetriever"]


class XDRetrieveRetriever(BaseRetriever):
    """Items of ``domain`` for the query string, read according to ``mode``:

    - ``"user"``: a stored user's id;
    - ``"history"``: comma-separated item ids, oldest first (a user the store has never seen);
    - ``"text"``: free text.

    Each hit becomes ``Document(page_content=title, metadata={item_id, domain, score, ...})``
    with the item's stored payload (text and extra fields) in the metadata.
    """

    retriever: Any = Field(description="An xdretrieve.Retriever.")
    domain: str
    mode: Literal["user", "history", "text"] = "history"
    limit: int = Field(10, ge=1)

    def _get_relevant_documents(self, query: str, *,
                                run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        if self.mode == "user":
            hits = self.retriever.recommend_user(query.strip(), self.domain, self.limit)
        elif self.mode == "history":
            items = [i.strip() for i in query.split(",") if i.strip()]
            hits = self.retriever.recommend_history(items, self.domain, self.limit)
        else:
            hits = self.retriever.search_text(query, self.domain, self.limit)
        return [Document(page_content=h.title, metadata={
            **h.fields,
            "item_id": h.item_id, "domain": h.domain, "score": h.score}) for h in hits]
