"""The loader benchmark runs end to end on a tiny folder and reports what it measured."""
from viar_jax.bench import loader


def test_loader_benchmark_rows(capsys):
  rows = loader.run(images=12, image_size=16, workers=(0,), batches=2, batch=4)
  assert [(r['source'], r['workers']) for r in rows] == [('digits 8x8', 0), ('JPEG 500x375 -> 16', 0)]
  assert all(r['images_per_s'] > 0 for r in rows)
  assert rows[1]['batch_mib'] * 4 == rows[1]['batch_mib_float32'] == 4 * 4 * 16 * 16 * 3 / 2**20
  assert 'JPEG 500x375 -> 16' in capsys.readouterr().out
