"""The performance suite of xdretrieve: ``python benchmarks/run.py [--quick]``.

Modules, one measurement each: :mod:`.common` (timing, memory, hardware), :mod:`.synthetic`
(a clustered stand-in for 1M real embeddings), :mod:`.engines` (the same filtered search by
Qdrant Edge, NumPy brute force and qdrant-client's in-process mode), :mod:`.querypath` (the full
query path: latency and throughput), :mod:`.recall` (HNSW recall against exact search),
:mod:`.indexing` (embedding, upsert, HNSW build, incremental re-index), :mod:`.report`
(markdown and plots), :mod:`.suite` (the whole run) and ``run.py`` (the command).
"""
