"""A job's data set as an ImageSet: built-in by name, or a tenant's upload by id (downloaded to a file)."""

from __future__ import annotations

import uuid
import zipfile

from sqlalchemy.orm import Session, sessionmaker

from shared import registry
from shared.datasets import DatasetError
from shared.models import Dataset
from shared.specs import BUILTIN_DATASETS
from shared.storage import ObjectNotFound
from worker.engine import api as engine
from worker.engine.api import ImageSet
from worker.runners.base import JobRun


def has_test_split(name: str) -> bool:
    """Only the built-in data sets ship a held-out split; an upload has one, used for training, editing
    sources and as the real images of evaluation."""
    return name in BUILTIN_DATASETS


def load_dataset(
    job: JobRun, name: str, split: str, size: int | None = None, channels: int | None = None
) -> ImageSet:
    """`split`: "train" or "test". Raises DatasetError (the job fails with invalid_dataset) for an
    unknown, foreign or broken set."""
    if name in BUILTIN_DATASETS:
        images = engine.load_builtin(name, split, size, root=str(job.settings.fashion_mnist_dir))
        if channels is None:
            return images
        # Grey repeated to RGB, or RGB to luma: sources for a model trained on other data.
        converted = engine.convert_channels(images.images, channels)
        return ImageSet(converted, images.labels, images.class_names, images.name)
    row = _upload_row(job.sessions, job.tenant_id, name)
    path = job.workdir / f"dataset-{row.id}.{row.format}"
    if not path.exists():
        try:
            job.store.download_file(row.object_key, path)
        except ObjectNotFound:
            raise DatasetError(f"dataset {name}: its file is missing from storage") from None
    try:
        images = engine.load_upload(path, size, channels)
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
        row = registry.get_dataset(session, tenant_id, dataset_id)
    if row is None:
        raise DatasetError(f"dataset {name}: not found")
    return row
