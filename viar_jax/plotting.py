"""The report plots of the benchmark and the quality curve, through matplotlib (the `plot` extra).

    plotting.ratio_bars(out / 'benchmark.png', labels, [('images/s vs VAR', speedups), ...])
    plotting.tradeoff(out / 'quality_curve.png', rows, floor=12.3)

matplotlib is optional: without it a plot function prints why no plot was written and returns None
(`strict=True` raises instead), so reports still get their tables.
"""
import functools
import pathlib
from typing import Dict, List, Optional, Sequence, Tuple

INSTALL_HINT = "pip install 'viar-jax[plot]' (or pip install matplotlib)"
VIAR_COLOR, VAR_COLOR = '#1f77b4', '#d62728'


class MissingExtra(ImportError):
  """matplotlib is not installed."""


def pyplot():
  """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise MissingExtra(f'plots need matplotlib: {INSTALL_HINT}') from e
  return plt


def _optional(plot):
  """Lets `plot(path, ..., strict=False)` return None with a message when matplotlib is absent."""
  @functools.wraps(plot)
  def wrapper(path, *args, strict: bool = False, **kwargs) -> Optional[pathlib.Path]:
    try:
      plt = pyplot()
    except MissingExtra as e:
      if strict:
        raise
      print(f'no plot written to {path}: {e}', flush=True)
      return None
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = plot(plt, *args, **kwargs)
    try:
      fig.tight_layout()
      fig.savefig(path, dpi=120)
    finally:
      plt.close(fig)
    print(f'plot written to {path}', flush=True)
    return path
  return wrapper


@_optional
def ratio_bars(plt, labels: Sequence[str], panels: Sequence[Tuple[str, Sequence[float]]],
               reference: float = 1.0):
  """One horizontal bar panel per (title, values), bars in `labels` order, a line at `reference`.

  Args:
    plt: supplied by the decorator; callers pass `path` (and `strict=`) first instead.
    labels: one per bar, shared by the panels (shown on the first).
    panels: (title, one value per label).
    reference: where the vertical reference line goes (1.0: "same as the baseline").
  """
  if not panels or any(len(values) != len(labels) for _, values in panels):
    raise ValueError(f'every panel needs one value per label ({len(labels)})')
  fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 1.5 + 0.4 * len(labels)),
                           squeeze=False)
  for i, (ax, (title, values)) in enumerate(zip(axes[0], panels)):
    ax.barh(range(len(labels)), values)
    ax.set_yticks(range(len(labels)), labels if i == 0 else [''] * len(labels))
    ax.axvline(reference, color='k', lw=0.8)
    ax.set_title(title)
    ax.invert_yaxis()
  return fig


@_optional
def tradeoff(plt, rows: List[Dict], x: str = 'images_per_s', y: str = 'digits_fid',
             xlabel: str = 'images / s', ylabel: str = 'digits-FID (lower is better)',
             floor: Optional[float] = None, floor_label: str = 'real train digits'):
  """Quality (y) vs speed (x): VIAR rows joined in x order and labelled by schedule, VAR red squares.

  Args:
    plt: supplied by the decorator; callers pass `path` (and `strict=`) first instead.
    rows: dicts with 'model' ('VIAR' or 'VAR'), 'schedule' and the `x` and `y` keys.
    x, y: the row keys plotted.
    xlabel, ylabel: axis titles.
    floor: a dashed horizontal reference (e.g. real data's score), or None.
    floor_label: its legend entry.
  """
  viar = sorted((r for r in rows if r['model'] == 'VIAR'), key=lambda r: r[x])
  var = [r for r in rows if r['model'] == 'VAR']
  fig, ax = plt.subplots(figsize=(7.5, 5))
  if viar:
    ax.plot([r[x] for r in viar], [r[y] for r in viar], 'o-', color=VIAR_COLOR,
            label='VIAR (iterations / scale)')
    for r in viar:
      ax.annotate(r['schedule'], (r[x], r[y]), textcoords='offset points', xytext=(6, 6),
                  color=VIAR_COLOR, fontsize=9)
  if var:
    ax.plot([r[x] for r in var], [r[y] for r in var], 's', color=VAR_COLOR, markersize=9,
            label='VAR')
  if floor is not None:
    ax.axhline(floor, color='gray', ls='--', lw=1, label=floor_label)
  ax.set_ylim(bottom=0)  # FID differences read true against a zero baseline
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend()
  return fig
