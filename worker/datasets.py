"""A job's data set as an ImageSet: built-in by name, or a tenant's upload by id (downloaded to a file)."""

from __future__ import annotations

import uuid
import zipfile

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.datasets import DatasetError
from shared.models import Dataset
from shared.specs import BUILTIN_DATASETS
from shared.storage import ObjectNotFound
from worker.engine import data
from worker.engine.imageset import ImageSet
from worker.runners.base import JobRun

# Splits of an upload: it has one, used for training, editing sources and as the real images of evaluation.
SPLITS = ("train", "test")


def has_test_split(name: str) -> bool:
    """Only the built-in data sets ship a held-out split."""
    return name in BUILTIN_DATASETS


def load_dataset(
    job: JobRun, name: str, split: str, size: int | None = None, channels: int | None = None
) -> ImageSet:
    """Raises DatasetError (the job fails with invalid_dataset) for an unknown, foreign or broken set."""
    if split not in SPLITS:
        raise DatasetError(f"split: must be one of {', '.join(SPLITS)}")
    if name in BUILTIN_DATASETS:
        images = data.load_builtin(name, split, size, root=str(job.settings.fashion_mnist_dir))
        return match_channels(images, channels) if channels else images
    row = _upload_row(job.sessions, job.tenant_id, name)
    path = job.workdir / f"dataset-{row.id}.{row.format}"
    if not path.exists():
        try:
            job.store.download_file(row.object_key, path)
        except ObjectNotFound:
            raise DatasetError(f"dataset {name}: its file is missing from storage") from None
    try:
        images = data.load_upload(path, size, channels)
    except DatasetError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        # Headers passed the upload check but the content does not hold what they declare.
        raise DatasetError(f"dataset {name}: its file is damaged ({type(error).__name__})") from None
    images.name = row.name
    return images


def _upload_row(sessions: sessionmaker[Session], tenant_id: uuid.UUID, name: str) -> Dataset:
    try:
        dataset_id = uuid.UUID(name)
    except ValueError:
        raise DatasetError(f"dataset: {name!r} is neither a built-in data set nor a dataset id") from None
    with sessions() as session:
        row = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id))
    if row is None:
        raise DatasetError(f"dataset {name}: not found")
    return row


def match_channels(images: ImageSet, channels: int) -> ImageSet:
    """Grey repeated to RGB, or RGB to ITU-R 601 luma: sources for a model trained on other data."""
    if images.channels == channels:
        return images
    pixels = images.images
    if channels == 3:
        converted = pixels.expand(-1, 3, -1, -1).contiguous()
    else:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        converted = (pixels.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    return ImageSet(converted, images.labels, images.class_names, images.name)
