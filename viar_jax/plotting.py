"""The report plots of the benchmark, the quality curve and the study, through matplotlib (the
`plot` extra).

    plotting.ratio_bars(out / 'benchmark.png', labels, [('images/s vs VAR', speedups), ...])
    plotting.tradeoff(out / 'quality_curve.png', rows, floor=12.3)
    plotting.study_curves(out / 'study.png', points, x='images_per_s', xlabel='images / s')

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


@_optional
def study_curves(plt, points: List[Dict], x: str, xlabel: str,
                 panels: Sequence[Tuple[str, str]] = (('digits_fid', 'digits-FID (lower is better)'),),
                 floors: Optional[Dict[str, float]] = None, log_x: bool = False):
  """One panel per (y key, title): one curve per (model, width) with ±std error bars, VIAR in blues
  (points over schedules), VAR in reds (points over depths), each point labelled.

  Args:
    plt: supplied by the decorator; callers pass `path` (and `strict=`) first instead.
    points: dicts with 'model' ('VIAR' / 'VAR'), 'width', 'label' (a point's tag: schedule or
      depth), `x`, and for each panel's y key the key and optionally `<key>_std`.
    x, xlabel: the x key (e.g. 'images_per_s', 'params') and its axis title.
    panels: (y key, axis title) per panel, side by side.
    floors: {y key: a dashed reference line (e.g. real digits' FID)}.
    log_x: a log x axis (parameter counts spanning several sizes).
  """
  if not panels:
    raise ValueError('study_curves needs at least one panel')
  floors = floors or {}
  curves: Dict[Tuple[str, int], List[Dict]] = {}
  for p in points:
    curves.setdefault((p['model'], p['width']), []).append(p)
  widths = sorted({w for _, w in curves})
  cmaps = {'VIAR': plt.get_cmap('Blues'), 'VAR': plt.get_cmap('Reds')}
  shade = lambda w: 0.55 + 0.4 * (widths.index(w) / max(1, len(widths) - 1))  # wider: darker
  fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), squeeze=False)
  for ax, (key, title) in zip(axes[0], panels):
    for (model, width), ps in sorted(curves.items()):
      ps = sorted(ps, key=lambda p: (p[x], p[key]))
      color = cmaps[model](shade(width))
      ax.errorbar([p[x] for p in ps], [p[key] for p in ps],
                  yerr=[p.get(key + '_std', 0.0) for p in ps], fmt='o-' if model == 'VIAR' else 's--',
                  color=color, capsize=3, label=f'{model} width {width}')
      for p in ps:
        ax.annotate(p['label'], (p[x], p[key]), textcoords='offset points', xytext=(5, 5),
                    color=color, fontsize=8)
    if key in floors:
      ax.axhline(floors[key], color='gray', ls=':', lw=1, label='real train digits')
    if log_x:
      ax.set_xscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  return fig
