"""PNG writing (Pillow) and grids: exact pixel round trip, layout, bad input."""
import numpy as np
import pytest
from PIL import Image

from viar_jax.io import png


@pytest.mark.parametrize('shape,mode', [((5, 7, 3), 'RGB'), ((5, 7), 'L')])
def test_write_png_round_trip(tmp_path, shape, mode):
  img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  path = png.write_png(tmp_path / 'a' / 'b.png', img[:, ::-1])  # non-contiguous, parents created
  with Image.open(path) as im:
    assert (im.format, im.mode) == ('PNG', mode)
    np.testing.assert_array_equal(np.asarray(im), img[:, ::-1])


@pytest.mark.parametrize('bad', [np.zeros((2, 2, 4), np.uint8), np.zeros((2, 2, 3), np.float32),
                                 np.zeros((2,), np.uint8)])
def test_write_png_rejects_other_arrays(tmp_path, bad):
  with pytest.raises(ValueError, match='uint8'):
    png.write_png(tmp_path / 'x.png', bad)


def test_to_uint8_and_grid():
  np.testing.assert_array_equal(png.to_uint8(np.array([-2.0, -1.0, 0.0, 1.0, 3.0])),
                                [0, 0, 128, 255, 255])
  np.testing.assert_array_equal(png.to_uint8(np.array([0.0, 0.5, 1.0]), (0.0, 1.0)), [0, 128, 255])
  images = np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3)
  g = png.grid(images, cols=2, pad=1, zoom=2)
  assert g.shape == (2 * (4 + 1) + 1, 2 * (4 + 1) + 1, 3)
  np.testing.assert_array_equal(g[1:5, 6:10], np.repeat(np.repeat(images[1], 2, 0), 2, 1))
  assert (g[6:10, 6:10] == 255).all()  # the missing fourth image stays white
