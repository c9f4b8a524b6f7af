"""Datasets: every ``--dataset`` source loads into one :class:`AuditDataset`."""

from audit.data.base import TEST, TRAIN, AuditDataset, stratified_split
from audit.data.noise import inject_noise
from audit.data.sources import load_dataset

__all__ = ["AuditDataset", "TEST", "TRAIN", "inject_noise", "load_dataset", "stratified_split"]
