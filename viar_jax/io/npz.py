"""ADM-style sample files (.npz: `arr_0` uint8 (N, H, W, 3) images, `arr_1` (N,) labels) of any size.

    npz.write_streamed(path, image_chunks, (N, H, W, 3), labels)   # chunks written as they come
    images = npz.images(path)                                       # memory-mapped, not read

`np.savez` needs every image in memory, and `np.load` reads a whole member. Both files here are
ordinary uncompressed .npz files (what np.savez writes and the ADM evaluator reads), but the image
member is written chunk by chunk and read through a memory map at its offset in the archive, so
neither side holds N images at once.
"""
import struct
import zipfile
from typing import Iterable, Sequence

import numpy as np
from etils import epath

_LOCAL_HEADER = struct.Struct('<4sHHHHHIIIHH')  # a zip member's local file header (30 bytes)


def write_streamed(path, image_chunks: Iterable[np.ndarray], shape: Sequence[int], labels) -> None:
  """Writes `path` from uint8 chunks whose rows add up to `shape` (fails if they do not). The file
  appears only once complete: an interrupted write leaves no `path`, and an older one stays."""
  shape = tuple(int(d) for d in shape)
  header = {'descr': np.lib.format.dtype_to_descr(np.dtype(np.uint8)), 'fortran_order': False,
            'shape': shape}
  row_bytes, rows = int(np.prod(shape[1:])), 0
  path = epath.Path(path)
  partial = path.with_name(path.name + '.partial')
  with partial.open('wb') as raw, zipfile.ZipFile(raw, 'w', zipfile.ZIP_STORED,
                                                          allowZip64=True) as archive:
    with archive.open('arr_0.npy', 'w', force_zip64=True) as member:
      np.lib.format.write_array_header_1_0(member, header)
      for chunk in image_chunks:
        chunk = np.ascontiguousarray(chunk, np.uint8)
        if chunk.shape[1:] != shape[1:]:
          raise ValueError(f'image chunk of shape {chunk.shape} in a file of {shape} images')
        member.write(chunk.tobytes())
        rows += chunk.shape[0]
      if rows * row_bytes != int(np.prod(shape)):
        raise ValueError(f'{rows} images written to a file declared to hold {shape[0]}')
    with archive.open('arr_1.npy', 'w') as member:
      np.lib.format.write_array(member, np.asarray(labels))
  partial.rename(path)


def images(path) -> np.ndarray:
  """`arr_0` of a local uncompressed .npz as a read-only memory map (np.load's array if the member
  is compressed, which then is read whole)."""
  path = epath.Path(path)
  with zipfile.ZipFile(path) as archive:
    info = archive.getinfo('arr_0.npy')
  if info.compress_type != zipfile.ZIP_STORED:
    with np.load(path) as z:
      return z['arr_0']
  with path.open('rb') as f:
    f.seek(info.header_offset)
    fields = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
    f.seek(info.header_offset + _LOCAL_HEADER.size + fields[-2] + fields[-1])  # name, extra
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, fortran_order, dtype = read_header(f)
    offset = f.tell()
  if fortran_order:
    raise ValueError(f'{path}: arr_0 is stored in Fortran order; expected C order')
  return np.memmap(path, dtype=dtype, mode='r', shape=shape, offset=offset)
