"""The report plots (matplotlib, optional): both plot kinds write PNGs; without matplotlib, a message."""
import sys

import pytest
from PIL import Image

from viar_jax import plotting

ROWS = [{'model': 'VIAR', 'schedule': '4', 'images_per_s': 300.0, 'digits_fid': 64.5},
        {'model': 'VIAR', 'schedule': '1', 'images_per_s': 545.0, 'digits_fid': 66.3},
        {'model': 'VAR', 'schedule': '-', 'images_per_s': 470.0, 'digits_fid': 62.2}]


def assert_png(path):
  with Image.open(path) as im:
    assert im.format == 'PNG' and min(im.size) > 100


def test_plots_write_pngs(tmp_path):
  pytest.importorskip('matplotlib', reason="the `plot` extra: pip install 'viar-jax[plot]'")
  path = plotting.tradeoff(tmp_path / 'a' / 'curve.png', ROWS, floor=4.6)
  assert path == tmp_path / 'a' / 'curve.png'
  assert_png(path)
  labels = ['VAR', 'VIAR 2->2', 'VIAR 2->1']
  assert_png(plotting.ratio_bars(tmp_path / 'bars.png', labels,
                                 [('images/s vs VAR', [1.0, 1.5, 2.4]), ('memory', [1.0, .5, .3])]))
  with pytest.raises(ValueError, match='one value per label'):
    plotting.ratio_bars(tmp_path / 'bad.png', labels, [('x', [1.0])])


def test_without_matplotlib_no_plot_and_a_message(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, 'matplotlib', None)  # `import matplotlib` now raises ImportError
  assert plotting.tradeoff(tmp_path / 'curve.png', ROWS) is None
  assert "viar-jax[plot]" in capsys.readouterr().out
  assert not (tmp_path / 'curve.png').exists()
  with pytest.raises(ImportError, match=r'viar-jax\[plot\]'):
    plotting.ratio_bars(tmp_path / 'bars.png', ['a'], [('x', [1.0])], strict=True)
