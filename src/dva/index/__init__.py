"""The retrieval product: index a gallery, search it (``dva index``, ``dva search``, ``dva.Searcher``)."""

from dva.index.build import IndexReport, index_gallery
from dva.index.check import check_index
from dva.index.faiss_index import DEFAULT_APPROX_THRESHOLD, INDEX_TYPES, IndexSpec, plan_index
from dva.index.filters import Filter, parse_filters
from dva.index.gallery import GalleryItem, read_gallery
from dva.index.model import IndexModel
from dva.index.searcher import Match, Searcher
from dva.index.shards import index_gallery_distributed
from dva.index.store import GalleryIndex

__all__ = [
    "DEFAULT_APPROX_THRESHOLD",
    "Filter",
    "INDEX_TYPES",
    "GalleryIndex",
    "GalleryItem",
    "IndexModel",
    "IndexReport",
    "IndexSpec",
    "Match",
    "Searcher",
    "check_index",
    "index_gallery",
    "index_gallery_distributed",
    "parse_filters",
    "plan_index",
    "read_gallery",
]
