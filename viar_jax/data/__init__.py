"""Input pipeline: sources (embedded digits, image folders, prepared TFDS datasets) -> grain batches.

Batches are {'image': (B_local, R, R, 3) uint8, 'label': (B_local,) int32}; `to_model_range` maps
the images to the models' float32 [-1, 1] (on the device, inside the train steps).
"""
from viar_jax.data.digits import SklearnDigits, default_data_dir, load_digits_source
from viar_jax.data.folder import IMAGE_EXTENSIONS, FolderSource
from viar_jax.data.pipeline import (Loader, loader_options, loader_state, make_loader,
                                    restore_loader)
from viar_jax.data.skips import (NoReadableRecordsError, SkipReport, SkipStats, Unreadable,
                                 is_skipped)
from viar_jax.data.sources import open_source, open_tfds_source
from viar_jax.data.transforms import (reference_eval_transform, reference_train_transform,
                                      resize_shorter_side, to_model_range)

__all__ = [
    'FolderSource', 'IMAGE_EXTENSIONS', 'Loader', 'NoReadableRecordsError', 'SkipReport',
    'SkipStats', 'SklearnDigits', 'Unreadable', 'default_data_dir', 'is_skipped',
    'load_digits_source', 'loader_options', 'loader_state', 'make_loader', 'open_source', 'open_tfds_source',
    'reference_eval_transform', 'reference_train_transform', 'resize_shorter_side',
    'restore_loader', 'to_model_range',
]
