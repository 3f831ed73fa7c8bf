"""Data for the DLRM models: the Criteo TSV reader (streaming, C++ parsing, vocabularies) and a synthetic
Criteo-shaped generator. Both yield :class:`Batch` es in TBE layout."""

from .criteo import (
    KAGGLE_TABLE_SIZES,
    NUM_DENSE,
    NUM_SPARSE,
    Batch,
    CorruptFileError,
    CriteoReader,
    IdMap,
    MalformedLineError,
    Vocabulary,
    parse_criteo,
    read_all,
)
from .synthetic import SyntheticCriteo, zipf_ids

__all__ = [
    "KAGGLE_TABLE_SIZES",
    "NUM_DENSE",
    "NUM_SPARSE",
    "Batch",
    "CorruptFileError",
    "CriteoReader",
    "IdMap",
    "MalformedLineError",
    "Vocabulary",
    "parse_criteo",
    "read_all",
    "SyntheticCriteo",
    "zipf_ids",
]
