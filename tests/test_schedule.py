"""Per-scale iteration schedules: the ramp, the reference's variant and the one spec grammar."""
import pytest

from viar_jax.sample import schedule


def test_ramps():
  assert schedule.iteration_schedule(10, 5, 10) == (10, 9, 8, 8, 7, 7, 6, 6, 5, 5)
  assert schedule.iteration_schedule(10, 2, 10) == (10, 9, 8, 7, 6, 5, 4, 3, 2, 2)
  assert schedule.iteration_schedule(4, 1, 4) == (4, 3, 2, 1)
  assert schedule.iteration_schedule(3, 3, 1) == (3,)
  assert schedule.reference_iteration_schedule(4, 1, 4) == (4, 3, 3, 3)
  assert schedule.reference_iteration_schedule(1, 4, 4) == (1, 1, 1, 2)
  assert schedule.reference_iteration_schedule(1, 10, 4) == (1, 2, 3, 4)
  assert schedule.reference_iteration_schedule(10, 5, 10) == schedule.iteration_schedule(10, 5, 10)
  with pytest.raises(ValueError, match='< 1 iteration'):
    schedule.iteration_schedule(3, 0, 4)
  with pytest.raises(ValueError, match='num_scales'):
    schedule.iteration_schedule(3, 1, 0)
  with pytest.raises(ValueError, match='1..10'):
    schedule.reference_iteration_schedule(10, 1, 11)


def test_one_grammar_for_every_cli():
  assert schedule.parse('', 10) is None and schedule.parse([], 10) is None
  assert schedule.parse('4', 3) == schedule.parse(['4'], 3) == schedule.parse(4, 3) == (4, 4, 4)
  assert schedule.parse('10,2', 10) == schedule.parse(['10', '2'], 10) == (10, 9, 8, 7, 6, 5, 4, 3,
                                                                           2, 2)
  assert schedule.parse('10,2', 4) == (10, 7, 4, 2)
  assert schedule.parse('3,2,1', 3) == (3, 2, 1)
  assert schedule.parse('3,1', 2) == (3, 1)  # with 2 scales ramp and explicit list agree
  assert [schedule.label(s) for s in ('4', '10,2', ['3', '2', '1'], '')] == [
      '4', '10->2', '3,2,1', 'eval_iters']
  with pytest.raises(ValueError, match='one count per scale'):
    schedule.parse('1,2,3', 4)
  with pytest.raises(ValueError, match='>= 1 iteration'):
    schedule.parse('0', 3)
  with pytest.raises(ValueError, match='comma-separated integers'):
    schedule.parse('10->2', 3)
