"""Images/s of the training input pipeline alone (no model, no device), per grain worker count.

    python -m launch.bench_loader [--images 256] [--image_size 256] [--workers 0,1,2] [--batches 12]

Two sources: the embedded digits (8x8, R = 8) and a folder of JPEGs the size of ImageNet's typical
image (500x375, random smooth content, 10 classes) written to a temporary folder, read at R =
`image_size` with the reference augmentation (Lanczos resize to 1.125 R, random crop). Each row
times `batches` batches after 2 warm-up ones; the bytes column is what one batch moves to the device
(uint8 since the loader stopped normalising on the host: a quarter of float32's).
"""
import itertools
import pathlib
import tempfile
import time
from typing import Sequence

import numpy as np
from PIL import Image

from viar_jax import data as data_lib


def write_jpeg_folder(root, count: int, size=(500, 375), classes: int = 10, seed: int = 0):
  """`count` JPEGs (quality 90) of smooth random content in root/<class>/, like a photo folder."""
  rng = np.random.default_rng(seed)
  root = pathlib.Path(root)
  for i in range(count):
    coarse = rng.integers(0, 256, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
    folder = root / f'class_{i % classes}'
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / f'{i:05d}.jpg', quality=90)
  return root


def images_per_second(source, image_size: int, batch: int, workers: int, batches: int) -> float:
  loader = data_lib.make_loader(source, image_size=image_size, global_batch_size=batch, seed=0,
                                train=True, worker_count=workers)
  it = iter(loader)
  for _ in range(2):  # warm-up: worker start, first reads
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - start)


def run(images: int = 256, image_size: int = 256, workers: Sequence[int] = (0, 1, 2),
        batches: int = 12, batch: int = 32):
  """Prints one row per (source, worker count); returns them as dicts."""
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    sources = [('digits 8x8', data_lib.load_digits_source(), 8),
               (f'JPEG 500x375 -> {image_size}', data_lib.FolderSource(
                   write_jpeg_folder(pathlib.Path(tmp) / 'jpegs', images)), image_size)]
    print(f'{"source":<22} {"workers":>7} {"images/s":>9} {"batch to device":>16}')
    for (name, source, size), count in itertools.product(sources, workers):
      rate = images_per_second(source, size, batch, count, batches)
      mib = batch * size * size * 3 / 2**20  # uint8
      rows.append({'source': name, 'workers': count, 'images_per_s': rate,
                   'batch_mib': mib, 'batch_mib_float32': 4 * mib})
      print(f'{name:<22} {count:>7} {rate:>9.1f} {mib:>7.2f} MiB uint8 (float32 {4 * mib:.2f})',
            flush=True)
  return rows
