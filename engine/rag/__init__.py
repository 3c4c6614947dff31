"""Visual RAG: the encrypted reference-case library (FAISS index + reference database).

Public API: :class:`ReferenceLibrary` (build from images and reports, search by
embedding, stats); :func:`aggregate_labels` and :func:`similarity_from_cosine` define
the numbers search reports; :class:`HnswParams` tunes the approximate index.
"""

from engine.rag.aggregate import aggregate_labels, similarity_from_cosine
from engine.rag.index import DEFAULT_HNSW_THRESHOLD, HnswParams, VectorIndex
from engine.rag.library import ReferenceLibrary

__all__ = [
    "DEFAULT_HNSW_THRESHOLD",
    "HnswParams",
    "ReferenceLibrary",
    "VectorIndex",
    "aggregate_labels",
    "similarity_from_cosine",
]
