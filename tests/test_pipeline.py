"""Batches: the contract shapes, eval coverage, seeded order and exact resume."""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from transformer_jax import config as config_lib
from transformer_jax.data import pipeline
from transformer_jax.data import sources


def small_config(variant='decoder', **data):
  c = config_lib.base_config()
  c.model.variant = variant
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


# ---------------------------------------------------------------------------
# Masked LM and genre classification on Shakespeare.


def test_bert_masking_is_80_10_10():
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, 90, (64, 256)).astype(np.int32)
  tokens[:, -10:] = 0  # padding is never chosen.
  out = pipeline.bert_mask(tokens, np.random.default_rng(1), 90, rate=0.15)
  chosen = out['weights'] > 0
  np.testing.assert_array_equal(out['targets'], tokens)
  assert not chosen[:, -10:].any()
  assert abs(chosen.mean() / (246 / 256) - 0.15) < 0.01
  masked = (out['inputs'] == 3)[chosen].mean()
  kept = (out['inputs'] == tokens)[chosen].mean()
  assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1 - 1 / 86 * 0.1) < 0.02
  np.testing.assert_array_equal(out['inputs'][~chosen], tokens[~chosen])


def test_shakespeare_mlm_batches_are_seeded_windows():
  config = small_config('encoder', task='mlm')
  ds = pipeline.create_datasets(config, None)
  batch = next(ds.train)
  assert set(batch) == {'inputs', 'targets', 'weights'}
  assert batch['weights'].sum() > 0
  train_text, _ = sources.shakespeare_split()
  assert ds.tokenizer.decode(batch['targets'][0]) in train_text
  again = next(pipeline.create_datasets(config, None).train)
  for k in batch:
    np.testing.assert_array_equal(batch[k], again[k])
  first_eval = next(iter(ds.eval()))
  np.testing.assert_array_equal(first_eval['inputs'], next(iter(ds.eval()))['inputs'])


def test_shakespeare_genre_passages():
  config = small_config('encoder', task='classify')
  config.model.encoder_head = 'classify'
  config.model.num_classes = 4
  ds = pipeline.create_datasets(config, None)
  batch = next(ds.train)
  assert batch['inputs'].shape == (4, 16) and batch['targets'].shape == (4,)
  assert batch['weights'].shape == (4,) and set(batch['targets']) <= {0, 1, 2, 3}
  info = ds.info
  assert info['train_works'] + info['eval_works'] == 42
  assert all(n > 0 for n in info['eval_class_counts'])
  assert sum(b['weights'].sum() for b in ds.eval()) == info['eval_examples']
  config.model.num_classes = 2
  with pytest.raises(config_lib.ConfigError, match='num_classes=4'):
    pipeline.create_datasets(config, None)


def test_task_must_match_the_model():
  with pytest.raises(config_lib.ConfigError, match='task=lm needs config.model.variant=decoder'):
    pipeline.create_datasets(small_config('seq2seq'), None)


# ---------------------------------------------------------------------------
# CMUdict seq2seq: padding, bucketing, packing.


def cmudict_config(**data):
  config = small_config('seq2seq', name='cmudict', task='seq2seq', **data)
  config.seq_len = 24
  config.batch_size = 8
  config.data.overflow = 'drop'
  return config


@pytest.fixture(scope='module')
def g2p():
  return pipeline.create_datasets(cmudict_config(), None)


def test_g2p_bucketed_batches(g2p):
  tok = g2p.tokenizer
  for _ in range(20):
    batch = next(g2p.train)
    length = batch['inputs'].shape[1]
    assert length in pipeline.bucket_boundaries(24)
    assert batch['targets'].shape == (8, length) == batch['weights'].shape
    # Rows end in <eos>; weights cover the target and its <eos>, nothing else.
    np.testing.assert_array_equal(batch['weights'], batch['targets'] > 0)
    assert ((batch['targets'] == 2).sum(1) == 1).all()
  assert ' ' not in tok.decode(batch['inputs'][0])  # a word: graphemes only.
  assert tok.decode(batch['targets'][0]).split()[0].isupper()  # phonemes.


def test_g2p_eval_covers_every_dev_pronunciation(g2p):
  from transformer_jax.data import sources as src  # pylint: disable=g-import-not-at-top
  dev = src.cmudict_g2p()['dev']
  want = sum(len(p) for w, p in dev if len(w) < 24 and all(len(x.split()) < 24 for x in p))
  rows = sum(int((b['weights'].sum(1) > 0).sum()) for b in g2p.eval())
  assert rows == g2p.info['eval_examples'] == want - g2p.info['eval_dropped']
  assert g2p.info['dev_words'] == len(dev)


def test_packed_rows_have_segments_and_restarting_positions():
  ds = pipeline.create_datasets(cmudict_config(packing=True), None)
  batch = next(ds.train)
  for side in ('inputs', 'targets'):
    seg, pos = batch[f'{side}_segment_ids'], batch[f'{side}_positions']
    np.testing.assert_array_equal(seg > 0, batch[side] > 0)
    assert seg.max() > 1  # several words per row.
    for row_seg, row_pos in zip(seg, pos):
      for s in range(1, row_seg.max() + 1):
        np.testing.assert_array_equal(row_pos[row_seg == s], np.arange((row_seg == s).sum()))
  np.testing.assert_array_equal(batch['targets_segment_ids'].max(1),
                                batch['inputs_segment_ids'].max(1))


@pytest.mark.parametrize('data', [dict(packing=True), dict(packing=False)])
def test_g2p_iterators_resume_exactly(data):
  config = cmudict_config(**data)
  train = pipeline.create_datasets(config, None).train
  for _ in range(3):
    next(train)
  state = train.get_state()
  expected = [next(train) for _ in range(2)]
  resumed = pipeline.create_datasets(config, None).train
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
