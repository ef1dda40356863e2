"""Batches: the contract shapes, eval coverage, seeded order and exact resume."""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from transformer_jax import config as config_lib
from transformer_jax.data import pipeline
from transformer_jax.data import sources


def small_config(**data):
  c = config_lib.base_config()
  c.model.vocab_size = 300
  c.batch_size = 4
  c.seq_len = 16
  for k, v in data.items():
    c.data[k] = v
  return c


@pytest.fixture(scope='module')
def char_lm():
  return pipeline.create_datasets(small_config(), None)


def test_char_lm_batches_follow_the_contract(char_lm):
  batch = next(iter(pipeline.create_datasets(small_config(), None).train))
  assert set(batch) == {'inputs', 'targets', 'weights'}
  assert batch['inputs'].shape == batch['targets'].shape == (4, 16)
  assert batch['inputs'].dtype == np.int32 and batch['weights'].dtype == np.float32
  np.testing.assert_array_equal(batch['inputs'][:, 1:], batch['targets'][:, :-1])
  assert (batch['weights'] == 1).all()
  # Every window is a real slice of the training text.
  train_text, _ = sources.shakespeare_split()
  tok = char_lm.tokenizer
  for row_in, row_t in zip(batch['inputs'], batch['targets']):
    assert tok.decode(row_in) + tok.decode(row_t)[-1:] in train_text


def test_char_lm_info(char_lm):
  info = char_lm.info
  assert info['train_tokens'] == 4_551_478 and info['eval_tokens'] == 505_720
  assert info['vocab_size'] == 88  # 84 characters + pad, unk, eos, mask.
  assert 3.0 < info['unigram_entropy'] < 3.6


def test_eval_covers_the_validation_split_once(char_lm):
  _, valid = sources.shakespeare_split()
  targets = []
  batches = list(char_lm.eval())
  assert len(batches) == len(char_lm.eval())
  for batch in batches:
    assert batch['inputs'].shape == (4, 16)
    targets.append(batch['targets'][batch['weights'] > 0])
  assert (batches[-1]['weights'] == 0).any()
  assert char_lm.tokenizer.decode(np.concatenate(targets)) == valid[1:]
  # A second call starts again and gives the same batches.
  np.testing.assert_array_equal(next(iter(char_lm.eval()))['inputs'], batches[0]['inputs'])


def test_train_order_is_seeded():
  first = lambda config: next(pipeline.create_datasets(config, None).train)['inputs']
  np.testing.assert_array_equal(first(small_config()), first(small_config()))
  other_seed = small_config()
  other_seed.seed = 1
  assert not np.array_equal(first(small_config()), first(other_seed))


def test_orbax_checkpoint_resumes_at_the_next_batch(tmp_path):
  config = small_config()
  train = pipeline.create_datasets(config, None).train
  for _ in range(7):
    next(train)
  manager = ocp.CheckpointManager(tmp_path)
  state = {'step': np.array(7)}
  manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=grain.checkpoint.CheckpointSave(train)))
  manager.wait_until_finished()
  expected = [next(train) for _ in range(3)]

  resumed = pipeline.create_datasets(config, None).train
  manager.restore(7, args=ocp.args.Composite(state=ocp.args.StandardRestore(state),
                                             data=grain.checkpoint.CheckpointRestore(resumed)))
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_batch_not_divisible_by_devices():
  config = small_config()
  config.batch_size = 6
  with pytest.raises(config_lib.ConfigError, match='uneven_batch=drop'):
    pipeline.global_batch_size(config, num_devices=4)
  config.data.uneven_batch = 'drop'
  assert pipeline.global_batch_size(config, num_devices=4) == 4


def test_vocab_larger_than_model_is_a_config_error():
  config = small_config()
  config.model.vocab_size = 50
  with pytest.raises(config_lib.ConfigError, match='config.model.vocab_size=88'):
    pipeline.create_datasets(config, None)


def test_unknown_dataset_name():
  with pytest.raises(config_lib.ConfigError, match='unknown; use shakespeare'):
    pipeline.create_datasets(small_config(name='shakespear'), None)
  with pytest.raises(config_lib.ConfigError, match='empty'):
    pipeline.create_datasets(small_config(name=''), None)


def test_timed_iterator_counts_waiting():
  timed = pipeline.TimedIterator(iter(pipeline.create_datasets(small_config(), None).train))
  next(timed)
  assert timed.pop_wait() > 0
  assert timed.pop_wait() == 0
