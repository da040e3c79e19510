"""Query xdretrieve's collections with Qdrant's own API, for a stack that already talks to Qdrant.

``xdretrieve index --url ...`` leaves two collections on the server: ``xdr_items`` (one point per
item, payload ``item_id``, ``domain``, ``title``, ...) and ``xdr_users`` (one point per user and
domain: the pooled profile vector, payload ``user_id``, ``domain``, ``history``). Point ids are
deterministic (:func:`xdretrieve.store.item_point_id`, :func:`xdretrieve.store.user_point_id`),
so Qdrant's recommend query can take a user's profile straight from ``xdr_users``
(``lookup_from``) and search ``xdr_items`` in the target domain: no xdretrieve process in the
query path, the same answer as ``Retriever.recommend_user`` for a user known in one domain.

Usage (a server with a store built by ``xdretrieve index --url http://localhost:6333``):

    python plugins/qdrant_native/example.py --url http://localhost:6333 \\
        --user A7PVZNHRTX1J7 --source arts --domain office
"""

from __future__ import annotations

import argparse

from qdrant_client import QdrantClient, models

from xdretrieve.store import item_point_id, user_point_id


def recommend_for_user(client: QdrantClient, user_id: str, source_domain: str,
                       target_domain: str, limit: int = 10, prefix: str = "xdr_",
                       exclude_items: list[str] | None = None) -> list[models.ScoredPoint]:
    """Items of ``target_domain`` nearest to the user's ``source_domain`` profile.

    ``exclude_items`` leaves out items the user already has (``Retriever`` leaves out their
    history in the target domain: the ``history`` payload of their target-domain profile).
    """
    must_not = ([models.HasIdCondition(has_id=[item_point_id(i) for i in exclude_items])]
                if exclude_items else None)
    return client.query_points(
        collection_name=prefix + "items",
        query=models.RecommendQuery(recommend=models.RecommendInput(
            positive=[user_point_id(user_id, source_domain)])),
        lookup_from=models.LookupLocation(collection=prefix + "users"),
        query_filter=models.Filter(
            must=[models.FieldCondition(key="domain",
                                        match=models.MatchValue(value=target_domain))],
            must_not=must_not),
        limit=limit,
        with_payload=["item_id", "title"],
    ).points


def target_history(client: QdrantClient, user_id: str, target_domain: str,
                   prefix: str = "xdr_") -> list[str]:
    """The user's item ids in ``target_domain`` (empty for a cold-start user)."""
    points = client.retrieve(prefix + "users", [user_point_id(user_id, target_domain)],
                             with_payload=["history"])
    return list(points[0].payload["history"]) if points else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:6333")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--prefix", default="xdr_", help="xdretrieve's collection prefix")
    parser.add_argument("--user", required=True)
    parser.add_argument("--source", required=True, help="the domain the user is known in")
    parser.add_argument("--domain", required=True, help="the domain to recommend from")
    parser.add_argument("--limit", type=int, default=10)
    args = parser.parse_args()

    client = QdrantClient(url=args.url, api_key=args.api_key)
    seen = target_history(client, args.user, args.domain, args.prefix)
    for rank, point in enumerate(recommend_for_user(
            client, args.user, args.source, args.domain, args.limit, args.prefix, seen), start=1):
        print(f"{rank:>3}  {point.score:.4f}  {point.payload['item_id']}  {point.payload['title']}")


if __name__ == "__main__":
    main()
