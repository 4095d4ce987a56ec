"""launch.device_check at tiny shapes on the CPU: every row is measured and written."""
import json

import pytest

from viar_jax.bench import device_check


@pytest.mark.slow
@pytest.mark.usefixtures('fast_compiles')  # 7 programs at tiny shapes: plumbing, not numerics
def test_device_check_rows_at_tiny_shapes(tmp_path):
  rows = device_check.run(tmp_path, depths=(30,), tiny=True)
  assert [(r['kind'], r['label'], r['batch']) for r in rows] == [
      ('sample', 'VAR', 2), ('sample', 'VIAR 3->1 per_iteration', 2),
      ('sample', 'VIAR 3->3 per_iteration', 2), ('sample', 'VAR', 4),
      ('sample', 'VIAR 3->1 per_iteration', 4), ('sample', 'VIAR 3->3 per_iteration', 4),
      ('train', 'VIAR train step', 4)]
  assert all(r['images_per_s'] > 0 and r['memory_bytes'] > 0 for r in rows)
  assert rows[-1]['mfu'] is None and rows[-1]['model_tflops_per_s'] > 0  # no CPU peak in the table
  saved = json.loads((tmp_path / 'device_check.json').read_text())
  assert saved['tiny'] and saved['backend'] == 'cpu' and len(saved['rows']) == len(rows)
  assert device_check.attention_implementations() == ['xla']
