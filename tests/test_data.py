"""Input pipeline: digits TFDS builder, image-folder source, grain loader (shapes, seeds, sharding,
checkpointed iterator state, corrupt files), reference transforms and error messages."""
import itertools
import io
import logging

import grain.python as grain
import numpy as np
from PIL import Image
import pytest

from viar_jax import data

# Grain reads ahead 500 records by default; tiny test sources only need a few.
SMALL_READ = grain.ReadOptions(num_threads=1, prefetch_buffer_size=16)


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers.


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
  """A data_dir with the digits dataset prepared once for the module."""
  d = tmp_path_factory.mktemp('tfds')
  data.load_digits_source('train', d)
  return d


class IndexSource:
  """Record i: an 18x18 RGB image filled with (i // 256, i % 256, 7), label i % 10.

  18 = round(1.125 * 16), so with image_size=16 nothing is resized and every crop / flip keeps
  the colour: the record index can be read back from a batch.
  """

  def __init__(self, n):
    self.n = n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    img = np.empty((18, 18, 3), np.uint8)
    img[...] = (i // 256, i % 256, 7)
    return {'image': img, 'label': i % 10}

  def __repr__(self):
    return f'IndexSource({self.n})'


def record_ids(batch):
  """(B, R, R, 3) float images of `IndexSource` records -> (B,) record indices."""
  px = batch['image'][:, 0, 0].astype(np.int64)
  assert np.all(px[:, 2] == 7)
  return px[:, 0] * 256 + px[:, 1]


def take(iterator, k):
  return [next(iterator) for _ in range(k)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])


# ---------------------------------------------------------------------------------------------
# Digits builder.


def test_digits_splits(digits_dir):
  from sklearn.datasets import load_digits
  sk = load_digits()
  splits = {s: data.load_digits_source(s, digits_dir) for s in ('train', 'test')}
  assert (len(splits['train']), len(splits['test'])) == (1500, 297)
  keys = {}
  for name, src in splits.items():
    recs = [src[i] for i in range(len(src))]
    images = np.stack([r['image'] for r in recs])
    labels = np.array([r['label'] for r in recs])
    index = np.array([r['index'] for r in recs])
    assert images.dtype == np.uint8 and images.shape == (len(src), 8, 8, 1)
    assert images.min() == 0 and images.max() == 255
    assert set(labels.tolist()) == set(range(10))
    # Stored in ascending sklearn order; images and labels are sklearn's, scaled round(v*255/16).
    assert np.all(np.diff(index) > 0)
    np.testing.assert_array_equal(labels, sk.target[index])
    np.testing.assert_array_equal(images[..., 0], np.round(sk.images[index] * 255 / 16))
    keys[name] = {(int(i), im.tobytes()) for i, im in zip(index, images)}
  assert not keys['train'] & keys['test']
  assert {i for i, _ in keys['train'] | keys['test']} == set(range(1797))
  # Stratified: 29 or 30 test images per class.
  test_labels = np.array([splits['test'][i]['label'] for i in range(297)])
  assert set(np.bincount(test_labels, minlength=10).tolist()) <= {29, 30}


def test_digits_rule_and_generic_tfds_path(digits_dir):
  from sklearn.datasets import load_digits
  idx = data.digits.split_indices(load_digits().target)
  rng = np.random.default_rng(0)  # The documented rule, spelled out once more.
  target = load_digits().target
  want = np.sort(np.concatenate([
      rng.choice(np.flatnonzero(target == c), int(round((target == c).sum() * 297 / 1797)),
                 replace=False) for c in range(10)]))
  np.testing.assert_array_equal(idx['test'], want)
  # The prepared files read back through the generic by-name path (as ImageNet would).
  src = data.open_source('sklearn_digits', 'test', digits_dir)
  assert len(src) == 297 and src[0]['image'].shape == (8, 8, 1)


def test_default_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv('VIAR_JAX_DATA_DIR', str(tmp_path))
  assert data.default_data_dir() == tmp_path
  monkeypatch.delenv('VIAR_JAX_DATA_DIR')
  assert str(data.default_data_dir()).endswith('.cache/viar_jax/tfds')


# ---------------------------------------------------------------------------------------------
# Loader.


def test_digits_loader_shapes_and_seeds(digits_dir):
  src = data.load_digits_source('train', digits_dir)
  make = lambda seed: iter(data.make_loader(src, image_size=16, global_batch_size=32, seed=seed,
                                            train=True, hflip=True))
  a, b, c = take(make(0), 3), take(make(0), 3), take(make(1), 3)
  batch = a[0]
  assert batch['image'].shape == (32, 16, 16, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (32,) and batch['label'].dtype == np.int32
  assert batch['image'].min() == 0  # Digit backgrounds.
  model_input = data.to_model_range(batch['image'])  # what the train steps do on the device
  assert model_input.dtype == np.float32 and model_input.min() == -1.0 and model_input.max() <= 1.0
  np.testing.assert_array_equal(model_input, batch['image'] / np.float32(127.5) - np.float32(1))
  # Grey digits are repeated to 3 equal channels.
  np.testing.assert_array_equal(batch['image'][..., 0], batch['image'][..., 2])
  assert_same_batches(a, b)
  assert not np.array_equal(a[0]['label'], c[0]['label'])

  ev = list(data.make_loader(src, image_size=16, global_batch_size=64, seed=0, train=False,
                             resize_mode='nearest'))
  assert [len(x['label']) for x in ev] == [64] * 23 + [28]  # One epoch, last batch kept.
  np.testing.assert_array_equal(np.concatenate([x['label'] for x in ev]),
                                [src[i]['label'] for i in range(1500)])  # Source order.


def test_loader_without_augmentation_yields_the_exact_pixels(digits_dir):
  src = data.load_digits_source('train', digits_dir)
  originals = {np.repeat(np.asarray(src[i]['image']).reshape(8, 8, 1), 3, -1).tobytes()
               for i in range(len(src))}
  exact = lambda **kw: data.make_loader(src, image_size=8, global_batch_size=32, seed=0,
                                        train=True, **kw)
  batch = next(iter(exact(augment=False)))['image']
  assert batch.shape == (32, 8, 8, 3) and all(im.tobytes() in originals for im in batch)
  resampled = next(iter(exact()))['image']  # the reference resize 8 -> 9 and crop: none is exact
  assert sum(im.tobytes() in originals for im in resampled) < 4
  with pytest.raises(ValueError, match='exactly 16x16, got 8x8'):
    next(iter(data.make_loader(src, image_size=16, global_batch_size=32, seed=0, train=True,
                               augment=False)))
  with pytest.raises(ValueError, match='augment must be True or False'):
    data.loader_options({'augment': 'no'})


@pytest.mark.parametrize('num_epochs', [1, None])
def test_processes_read_rows_of_the_one_process_batches(num_epochs):
  """Process p's batches are rows [p·b, (p+1)·b) of the 1-process batches, augmentation included:
  a run's global batches do not depend on how many processes read them."""
  src = IndexSource(100)
  make = lambda p, n: data.make_loader(src, image_size=16, global_batch_size=10, seed=3,
                                       train=True, hflip=True, process_index=p, process_count=n,
                                       num_epochs=num_epochs, read_options=SMALL_READ)
  whole = list(itertools.islice(make(0, 1), 12))
  halves = [list(itertools.islice(make(p, 2), 12)) for p in range(2)]
  assert make(1, 2).local_batch_size == 5 and make(1, 2).num_records == 50
  assert len(whole) == (10 if num_epochs == 1 else 12) == len(halves[0]) == len(halves[1])
  for k, batch in enumerate(whole):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][k][key], halves[1][k][key]]), batch[key])
  first_epoch = np.concatenate([record_ids(b) for b in halves[0][:10]])
  assert len(set(first_epoch.tolist())) == 50  # an epoch: each record once, half of them here


def test_epochs_reshuffle():
  it = iter(data.make_loader(IndexSource(20), image_size=16, global_batch_size=20, seed=0,
                             train=True, read_options=SMALL_READ))
  e0, e1 = record_ids(next(it)), record_ids(next(it))
  assert sorted(e0) == sorted(e1) == list(range(20)) and not np.array_equal(e0, e1)


@pytest.mark.parametrize('which', ['digits', 'index'])
def test_checkpointed_state_resumes_exactly(digits_dir, which):
  if which == 'digits':
    kw = dict(image_size=16, global_batch_size=32, hflip=True)
    src_fn = lambda: data.load_digits_source('train', digits_dir)
  else:  # 20 records, batches of 8: the resume point k=3 lies past an epoch boundary.
    kw = dict(image_size=16, global_batch_size=8, read_options=SMALL_READ)
    src_fn = lambda: IndexSource(20)
  make = lambda: data.make_loader(src_fn(), seed=5, train=True, **kw)
  reference = take(iter(make()), 7)
  it = iter(make())
  take(it, 3)
  state = data.loader_state(it)
  assert isinstance(state, bytes)
  resumed = data.restore_loader(iter(make()), state)  # A fresh loader, as after a restart.
  assert_same_batches(take(resumed, 4), reference[3:])


def test_batch_and_process_errors():
  src = IndexSource(10)
  with pytest.raises(ValueError, match='multiple of process_count'):
    data.make_loader(src, image_size=16, global_batch_size=5, seed=0, train=True,
                     process_count=2)
  with pytest.raises(ValueError, match='process_index'):
    data.make_loader(src, image_size=16, global_batch_size=4, seed=0, train=True,
                     process_index=2, process_count=2)
  with pytest.raises(ValueError, match='resize_mode'):
    data.make_loader(src, image_size=16, global_batch_size=4, seed=0, train=True,
                     resize_mode='bicubic')
  with pytest.raises(ValueError, match='seed'):
    data.make_loader(src, image_size=16, global_batch_size=4, seed=-1, train=True)
  with pytest.raises(ValueError, match='shared=True'):
    data.make_loader(src, image_size=16, global_batch_size=4, seed=0, train=True,
                     worker_count=1, skip_stats=data.SkipStats())


def test_unknown_dataset_and_missing_dir(tmp_path, digits_dir):
  with pytest.raises(ValueError, match=r"imagenet2012.*" + str(digits_dir)):
    data.open_source('imagenet2012', 'train', digits_dir)
  missing = tmp_path / 'nowhere'
  with pytest.raises(FileNotFoundError, match=r"imagenet2012.*nowhere"):
    data.open_source('imagenet2012', 'train', missing)
  with pytest.raises(FileNotFoundError, match='nowhere'):
    data.FolderSource(missing)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='no class subfolders'):
    data.FolderSource(tmp_path / 'empty')
  with pytest.raises(ValueError, match=r"sklearn_digits.*'validation'"):
    data.open_tfds_source('sklearn_digits', 'validation', digits_dir)


# ---------------------------------------------------------------------------------------------
# Image folders with a corrupt file.


@pytest.fixture
def image_folder(tmp_path):
  """root/cat: 3 PNG/JPEG images, root/dog: 2 images + a corrupt PNG; plus ignored clutter."""
  root = tmp_path / 'imgs'
  rng = np.random.default_rng(0)
  files = {'cat': ['a.png', 'b.jpg', 'c.PNG'], 'dog': ['d.png', 'e.bmp']}
  for cls, names in files.items():
    (root / cls).mkdir(parents=True)
    for k, name in enumerate(names):
      size = (20 + 4 * k, 24)  # (W, H): shapes differ per file.
      arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
      Image.fromarray(arr).save(root / cls / name)
  (root / 'dog' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really a png')
  (root / 'dog' / 'notes.txt').write_text('not an image')
  (root / '.cache').mkdir()
  return root


def test_folder_source(image_folder):
  src = data.FolderSource(image_folder)
  assert src.class_names == ['cat', 'dog'] and len(src) == 6
  assert [p.split('/')[-1] for p in src.paths] == ['a.png', 'b.jpg', 'c.PNG', 'broken.png',
                                                   'd.png', 'e.bmp']
  np.testing.assert_array_equal(src.labels, [0, 0, 0, 1, 1, 1])
  rec = src[1]
  assert rec['image'].dtype == np.uint8 and rec['image'].shape == (24, 24, 3) and rec['label'] == 0
  bad = src[3]
  assert data.is_skipped(bad) and bad.what.endswith('broken.png')
  # By name: no 'train' subfolder here, so the root itself is the split.
  assert data.open_source('folder', 'train', image_folder).paths == src.paths


def test_encoded_bytes_records_decode_or_skip():
  buf = io.BytesIO()
  Image.fromarray(pattern(18, 18)).save(buf, format='PNG')
  recs = [{'image': buf.getvalue(), 'label': 3}, {'image': b'garbage', 'label': 4, 'index': 9}]
  loader = data.make_loader(recs, image_size=16, global_batch_size=2, seed=0, train=False,
                            read_options=SMALL_READ)
  (batch,) = list(loader)
  np.testing.assert_array_equal(to_u8(batch['image'][0]), pattern(18, 18)[1:17, 1:17])
  assert batch['label'].tolist() == [3] and loader.skip_stats.names == {'record 9'}


def test_folder_loader_skips_and_counts_corrupt(image_folder, caplog):
  src = data.FolderSource(image_folder)
  caplog.set_level(logging.WARNING)
  ev = data.make_loader(src, image_size=16, global_batch_size=2, seed=0, train=False)
  batches = list(ev)
  assert [len(b['label']) for b in batches] == [2, 2, 1]
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches]), [0, 0, 0, 1, 1])
  assert ev.skip_stats.count == 1
  assert {n.split('/')[-1] for n in ev.skip_stats.names} == {'broken.png'}

  # Two training epochs: skipped (and counted) each time, warned about once per file.
  tr = data.make_loader(src, image_size=16, global_batch_size=5, seed=0, train=True,
                        num_epochs=2)
  batches = list(tr)
  assert [b['image'].shape for b in batches] == [(5, 16, 16, 3)] * 2
  assert tr.skip_stats.count == 2
  warnings = [r for r in caplog.records if 'broken.png' in r.getMessage()]
  assert len(warnings) == 1


# ---------------------------------------------------------------------------------------------
# Reference transforms.


def pattern(h, w):
  """(h, w, 3) uint8 with pixel (y, x) = (y, x, 0): positions readable from values."""
  img = np.zeros((h, w, 3), np.uint8)
  img[..., 0] = np.arange(h)[:, None]
  img[..., 1] = np.arange(w)[None, :]
  return img


def to_u8(x):
  assert x.dtype == np.uint8  # the loader's transforms stay in uint8
  return x


def test_eval_transform_is_centre_crop():
  # Shorter side 18 = round(1.125 * 16): no resize; offsets round((18-16)/2)=1, round((30-16)/2)=7.
  img = pattern(18, 30)
  out = data.reference_eval_transform(img, 16)
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(to_u8(out), img[1:17, 7:23])
  out = data.reference_eval_transform(pattern(30, 18), 16)
  np.testing.assert_array_equal(to_u8(out), pattern(30, 18)[7:23, 1:17])


def test_train_transform_crops_flips_and_resizes():
  img = pattern(18, 18)
  rng = np.random.default_rng(0)
  windows = {img[t:t + 16, l:l + 16].tobytes(): (t, l) for t in range(3) for l in range(3)}
  flipped = {img[t:t + 16, l:l + 16][:, ::-1].tobytes() for t in range(3) for l in range(3)}
  outs = [to_u8(data.reference_train_transform(img, 16, rng, hflip=True)) for _ in range(40)]
  assert all(o.tobytes() in windows or o.tobytes() in flipped for o in outs)
  assert any(o.tobytes() in flipped for o in outs) and any(o.tobytes() in windows for o in outs)
  assert len({o.tobytes() for o in outs}) > 5  # Offsets vary.
  # Upscaling: shorter side -> round(1.125 * R), longer side int(18 * 16 / 8) as torchvision.
  assert data.resize_shorter_side(pattern(8, 16), 18).shape == (18, 36, 3)
  grey = np.arange(64, dtype=np.uint8).reshape(8, 8, 1)
  assert data.resize_shorter_side(grey, 18, 'nearest').shape == (18, 18, 1)
  out = data.reference_eval_transform(grey, 16, resize_mode='nearest')
  assert out.shape == (16, 16, 3) and np.array_equal(out[..., 0], out[..., 1])
  with pytest.raises(ValueError, match='uint8'):
    data.reference_eval_transform(grey.astype(np.float32), 16)


def test_folder_loader_with_worker_process_counts_skips_in_parent(image_folder):
  """A grain worker process (spawned) drops the corrupt file; the count reaches this process."""
  src = data.FolderSource(image_folder)
  kw = dict(image_size=16, global_batch_size=2, seed=0, train=False)
  loader = data.make_loader(src, worker_count=1, **kw)
  assert loader.skip_stats.shared
  batches = list(loader)
  assert loader.skip_stats.count == 1
  assert {n.split('/')[-1] for n in loader.skip_stats.names} == {'broken.png'}
  assert_same_batches(batches, list(data.make_loader(src, **kw)))
