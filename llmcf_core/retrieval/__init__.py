"""Embeddings, the Qdrant pool and leakage-safe retrieval of in-context examples (docs/retrieval.md).

Stages (thin CLIs in ``jobs/``):
- ``upsert.embed_upsert``: a day's CoT pool -> vectors -> Qdrant (+ full rebuild and alias swap).
- ``retrieve.retrieve_partition``: a day's samples -> K label-balanced examples, verified.

Building blocks: ``embed`` (sentence encoder, Ray Data, item vectors), ``pool`` (pool partitions),
``store`` (Qdrant), ``search`` (exact batched search), ``online`` (in-memory index for serving),
``checks`` (GX suites), ``gates`` (cheap post-publish checks for DAG tasks), ``admin``
(collection and alias operations for an Airflow task or by hand).

Importing this package is cheap: nothing below is imported until used.
"""
