"""Offline datasets: on-disk format, writing, validation, loading, statistics."""

from ovmse.collection.layout import field_specs, trim_to_filled

from .format import QUALITIES, dataset_dir, resolve_dataset
from .loading import OfflineDataset, load_dataset
from .stats import dataset_stats, episode_stats
from .validation import DatasetError
from .writer import EpisodeDatasetWriter

__all__ = [
    "QUALITIES",
    "DatasetError",
    "EpisodeDatasetWriter",
    "OfflineDataset",
    "dataset_dir",
    "resolve_dataset",
    "dataset_stats",
    "episode_stats",
    "field_specs",
    "load_dataset",
    "trim_to_filled",
]
