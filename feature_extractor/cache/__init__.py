"""Where features are cached: one HDF5 cache per FeatureSpec, rows keyed by the SHA-256 of the
image bytes, grown by immutable segments (segments.py) found through a SQLite key index
(index.py); feature_cache.py is the cache itself."""
from .feature_cache import FeatureCache, find_cache, list_caches

__all__ = ["FeatureCache", "find_cache", "list_caches"]
