"""Batches: the contract shapes, eval coverage, seeded order and exact resume."""

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from transformer_jax import config as config_lib
from transformer_jax.data import batching
from transformer_jax.data import datasets
from transformer_jax.data import examples
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
  return datasets.create_datasets(small_config(), None)


def test_char_lm_batches_follow_the_contract(char_lm):
  batch = next(iter(datasets.create_datasets(small_config(), None).train))
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
  first = lambda config: next(datasets.create_datasets(config, None).train)['inputs']
  np.testing.assert_array_equal(first(small_config()), first(small_config()))
  other_seed = small_config()
  other_seed.seed = 1
  assert not np.array_equal(first(small_config()), first(other_seed))


def test_shuffled_batches_cover_each_item_once_per_epoch():
  batches = batching.ShuffledBatches(num_items=10, batch_size=3, seed=0)
  epoch0 = np.concatenate([batches[i] for i in range(3)])
  epoch1 = np.concatenate([batches[i] for i in range(3, 6)])
  assert len(set(epoch0)) == len(set(epoch1)) == 9
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(batches[4], batching.ShuffledBatches(10, 3, 0)[4])


def test_orbax_checkpoint_resumes_at_the_next_batch(tmp_path):
  config = small_config()
  train = datasets.create_datasets(config, None).train
  for _ in range(7):
    next(train)
  manager = ocp.CheckpointManager(tmp_path)
  state = {'step': np.array(7)}
  manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=grain.checkpoint.CheckpointSave(train)))
  manager.wait_until_finished()
  expected = [next(train) for _ in range(3)]

  resumed = datasets.create_datasets(config, None).train
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
    datasets.global_batch_size(config, num_devices=4)
  config.data.uneven_batch = 'drop'
  assert datasets.global_batch_size(config, num_devices=4) == 4


def test_vocab_larger_than_model_is_a_config_error():
  config = small_config()
  config.model.vocab_size = 50
  with pytest.raises(config_lib.ConfigError, match='config.model.vocab_size=88'):
    datasets.create_datasets(config, None)


def test_unknown_dataset_name():
  with pytest.raises(config_lib.ConfigError, match='unknown; use shakespeare'):
    datasets.create_datasets(small_config(name='shakespear'), None)
  with pytest.raises(config_lib.ConfigError, match='empty'):
    datasets.create_datasets(small_config(name=''), None)


# ---------------------------------------------------------------------------
# Masked LM and genre classification on Shakespeare.


def test_bert_masking_is_80_10_10():
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, 90, (64, 256)).astype(np.int32)
  tokens[:, -10:] = 0  # padding is never chosen.
  out = examples.bert_mask(tokens, np.random.default_rng(1), 90, rate=0.15)
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
  ds = datasets.create_datasets(config, None)
  batch = next(ds.train)
  assert set(batch) == {'inputs', 'targets', 'weights'}
  assert batch['weights'].sum() > 0
  train_text, _ = sources.shakespeare_split()
  assert ds.tokenizer.decode(batch['targets'][0]) in train_text
  again = next(datasets.create_datasets(config, None).train)
  for k in batch:
    np.testing.assert_array_equal(batch[k], again[k])
  first_eval = next(iter(ds.eval()))
  np.testing.assert_array_equal(first_eval['inputs'], next(iter(ds.eval()))['inputs'])


def test_shakespeare_genre_passages():
  config = small_config('encoder', task='classify')
  config.model.encoder_head = 'classify'
  config.model.num_classes = 4
  ds = datasets.create_datasets(config, None)
  batch = next(ds.train)
  assert batch['inputs'].shape == (4, 16) and batch['targets'].shape == (4,)
  assert batch['weights'].shape == (4,) and set(batch['targets']) <= {0, 1, 2, 3}
  info = ds.info
  assert info['train_works'] + info['eval_works'] == 42
  assert all(n > 0 for n in info['eval_class_counts'])
  assert sum(b['weights'].sum() for b in ds.eval()) == info['eval_examples']
  config.model.num_classes = 2
  with pytest.raises(config_lib.ConfigError, match='num_classes=4'):
    datasets.create_datasets(config, None)


def test_task_must_match_the_model():
  with pytest.raises(config_lib.ConfigError, match='task=lm needs config.model.variant=decoder'):
    datasets.create_datasets(small_config('seq2seq'), None)


# ---------------------------------------------------------------------------
# CMUdict seq2seq: padding, bucketing, packing.


def cmudict_config(**data):
  data.setdefault('max_examples', 4000)
  config = small_config('seq2seq', name='cmudict', task='seq2seq', **data)
  config.seq_len = 24
  config.batch_size = 8
  config.data.overflow = 'drop'
  return config


@pytest.fixture(scope='module')
def g2p():
  return datasets.create_datasets(cmudict_config(), None)


def test_g2p_bucketed_batches(g2p):
  tok = g2p.tokenizer
  for _ in range(20):
    batch = next(g2p.train)
    length = batch['inputs'].shape[1]
    assert length in batching.bucket_boundaries(24)
    assert batch['targets'].shape == (8, length) == batch['weights'].shape
    # Rows end in <eos>; weights cover the target and its <eos>, nothing else.
    np.testing.assert_array_equal(batch['weights'], batch['targets'] > 0)
    assert ((batch['targets'] == 2).sum(1) == 1).all()
  assert ' ' not in tok.decode(batch['inputs'][0])  # a word: graphemes only.
  assert tok.decode(batch['targets'][0]).split()[0].isupper()  # phonemes.


def test_a_bucket_smaller_than_a_batch_is_trained_in_a_longer_one():
  """3 long examples and a batch of 4: they ride in the next longer bucket's
  rows (the longest bucket in the one below), padded to its length."""
  for lengths, long in (([5] * 40 + [12] * 3 + [30] * 9, range(40, 43)),
                        ([5] * 40 + [30] * 3, range(40, 43))):
    ds = batching.BucketBatches(np.asarray(lengths), batching.bucket_boundaries(32), 4, 0)
    seen = set()
    for i in range(300):  # 20+ epochs.
      length, indices = ds[i]
      assert all(lengths[j] <= length for j in indices)
      seen.update(indices.tolist())
    assert seen == set(range(len(lengths))), set(long) - seen


def test_g2p_eval_covers_every_dev_pronunciation(g2p):
  from transformer_jax.data import sources as src  # pylint: disable=g-import-not-at-top
  dev = src.cmudict_g2p()['dev']
  want = sum(len(p) for w, p in dev)
  ds = datasets.create_datasets(cmudict_config(max_examples=0), None)
  rows = sum(int((b['weights'].sum(1) > 0).sum()) for b in ds.eval())
  assert rows == ds.info['eval_examples'] == want - ds.info['eval_dropped']
  assert ds.info['eval_dropped'] < 5 and ds.info['dev_words'] == len(dev) == 6_302


def test_packed_rows_have_segments_and_restarting_positions():
  ds = datasets.create_datasets(cmudict_config(packing=True), None)
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
  train = datasets.create_datasets(config, None).train
  for _ in range(3):
    next(train)
  state = train.get_state()
  expected = [next(train) for _ in range(2)]
  resumed = datasets.create_datasets(config, None).train
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


# ---------------------------------------------------------------------------
# Packing: a packed example's logits equal its logits alone.


def tiny_model(variant, vocab_size):
  import jax  # pylint: disable=g-import-not-at-top
  from transformer_jax.models import transformer  # pylint: disable=g-import-not-at-top
  m = config_lib.model_config()
  m.update(variant=variant, num_layers=2, d_model=32, num_heads=4, vocab_size=vocab_size,
           max_len=64, dropout_rate=0.0)
  model = transformer.build_model(m)
  ones = np.ones((1, 8), np.int32)
  params = model.init(jax.random.PRNGKey(0), *([ones] * (2 if variant == 'seq2seq' else 1)))
  return model, params


def alone(tokens, length):
  row = np.zeros((1, length), np.int32)
  row[0, :len(tokens)] = tokens
  return row


def test_packed_lm_logits_equal_unpacked(tmp_path):
  lines = [f'line {i}: ' + 'to be or not to be '[:(i * 7) % 19] for i in range(60)]
  path = tmp_path / 'lines.txt'
  path.write_text('\n'.join(lines) + '\n')
  config = small_config(name='text', train_files=str(path), packing=True)
  config.seq_len = 48
  ds = datasets.create_datasets(config, None)
  batch = next(ds.train)
  assert set(batch) == {'inputs', 'targets', 'weights', 'segment_ids', 'positions'}
  row = int(np.argmax(batch['segment_ids'].max(1)))
  seg = batch['segment_ids'][row]
  assert seg.max() >= 2
  model, params = tiny_model('decoder', ds.tokenizer.vocab_size)
  packed = model.apply(params, batch['inputs'][row:row + 1], segment_ids=seg[None],
                       positions=batch['positions'][row:row + 1])[0]
  for s in range(1, seg.max() + 1):
    tokens = batch['inputs'][row][seg == s]
    assert ds.tokenizer.decode(batch['targets'][row][seg == s]) in lines
    single = model.apply(params, alone(tokens, 48))[0, :len(tokens)]
    np.testing.assert_allclose(packed[seg == s], single, atol=1e-5, rtol=1e-5)


def test_packed_seq2seq_logits_equal_unpacked():
  ds = datasets.create_datasets(cmudict_config(packing=True), None)
  batch = next(ds.train)
  model, params = tiny_model('seq2seq', ds.tokenizer.vocab_size)
  r = slice(0, 1)
  packed = model.apply(params, batch['inputs'][r], batch['targets'][r],
                       inputs_segment_ids=batch['inputs_segment_ids'][r],
                       inputs_positions=batch['inputs_positions'][r],
                       targets_segment_ids=batch['targets_segment_ids'][r],
                       targets_positions=batch['targets_positions'][r])[0]
  in_seg, t_seg = batch['inputs_segment_ids'][0], batch['targets_segment_ids'][0]
  assert in_seg.max() >= 2
  for s in range(1, in_seg.max() + 1):
    source, target = batch['inputs'][0][in_seg == s], batch['targets'][0][t_seg == s]
    single = model.apply(params, alone(source, 24), alone(target, 24))[0, :len(target)]
    np.testing.assert_allclose(packed[t_seg == s], single, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# Local files: overflow policy and config errors.


@pytest.fixture
def lines_file(tmp_path):
  path = tmp_path / 'train.txt'
  path.write_text('\n'.join(['short line'] * 30 + ['x' * 40] + ['another one'] * 9) + '\n')
  return str(path)


def text_config(path, **data):
  config = small_config(name='text', train_files=path, **data)
  config.seq_len = 20
  return config


def test_overflow_error_names_the_example_and_the_fix(lines_file):
  with pytest.raises(ValueError, match=r'train\.txt:31: example has 41 tokens, more than '
                                       r'config.seq_len=20; raise seq_len or set '
                                       r'config.data.overflow=truncate or drop'):
    datasets.create_datasets(text_config(lines_file), None)


def test_overflow_drop_and_truncate_are_counted(lines_file):
  dropped = datasets.create_datasets(text_config(lines_file, overflow='drop'), None)
  assert dropped.info['train_dropped'] == 1 and dropped.info['train_examples'] == 35
  assert dropped.info['eval_examples'] == 4  # the last 10% of the lines.
  cut = datasets.create_datasets(text_config(lines_file, overflow='truncate'), None)
  assert cut.info['train_truncated'] == 1 and cut.info['train_examples'] == 36
  for batch in cut.eval():
    assert batch['inputs'].shape == (4, 20)
  # Line LM rows: <eos> starts the inputs and ends the targets.
  batch = next(cut.train)
  assert (batch['inputs'][:, 0] == 2).all()
  real = batch['weights'][:, 1:]
  np.testing.assert_array_equal(batch['inputs'][:, 1:] * real, batch['targets'][:, :-1] * real)


def test_text_classification_from_tsv(tmp_path):
  train, test = tmp_path / 'train.tsv', tmp_path / 'test.tsv'
  train.write_text(''.join(f'{"good" if i % 2 else "bad"} film {i}\t{"pos" if i % 2 else "neg"}\n'
                           for i in range(20)))
  test.write_text('good one\tpos\nbad one\tneg\nmeh\tneg\n')
  config = small_config('encoder', name='text', task='classify', format='tsv',
                        train_files=str(train), eval_files=str(test))
  config.model.encoder_head = 'classify'
  ds = datasets.create_datasets(config, None)
  assert ds.info['classes'] == ('neg', 'pos')
  batches = list(ds.eval())
  assert len(batches) == 1
  np.testing.assert_array_equal(batches[0]['targets'], [1, 0, 0, 0])
  np.testing.assert_array_equal(batches[0]['weights'], [1, 1, 1, 0])


def test_a_one_line_file_without_eval_files_names_the_fix(tmp_path):
  path = tmp_path / 'one.txt'
  path.write_text('only one line\n')
  with pytest.raises(ValueError, match=r'one\.txt: one example, too few to hold out the last '
                                       r'10% for eval; add examples or set '
                                       r'config.data.eval_files\.'):
    datasets.create_datasets(text_config(str(path)), None)


def test_an_eval_file_that_is_also_a_train_file_is_refused(tmp_path):
  for name in ('a.txt', 'b.txt'):
    (tmp_path / name).write_text('to be or not\n' * 10)
  config = text_config(f'{tmp_path}/*.txt', eval_files=str(tmp_path / 'b.txt'))
  with pytest.raises(ValueError, match=r'b\.txt is in both config.data.train_files and '
                                       r'eval_files, so eval would score training examples'):
    datasets.create_datasets(config, None)


def test_a_label_only_in_the_held_out_lines_names_the_split(tmp_path):
  path = tmp_path / 'sorted.tsv'
  path.write_text(''.join(f'text {i}\t{"pos" if i < 18 else "neg"}\n' for i in range(20)))
  config = small_config('encoder', name='text', task='classify', format='tsv',
                        train_files=str(path))
  config.model.encoder_head = 'classify'
  with pytest.raises(ValueError, match=r"^the last 10% of config.data.train_files: labels "
                                       r"\['neg'\] never occur .* \(or shuffle the lines"):
    datasets.create_datasets(config, None)


@pytest.mark.parametrize('data, message', [
    (dict(name='text'), r'config.data.name=text needs config.data.train_files'),
    (dict(name='text', train_files='/nonexistent/x.txt'), r'/nonexistent/x.txt: no such file'),
    (dict(name='text', train_files='x', format='tsv'), r'set config.data.format=lines'),
    (dict(tokenizer='words'), r"config.data.tokenizer='words' is unknown"),
    (dict(name='tfds:imdb'), r"config.data.name='tfds:imdb' is not supported; use one of"),
])
def test_config_errors_are_one_line(data, message):
  with pytest.raises(ValueError, match=message) as e:
    datasets.create_datasets(small_config(**data), None)
  assert '\n' not in str(e.value)


@pytest.mark.parametrize('long_in', ['train', 'held-out'])
def test_an_example_too_long_is_named_by_its_file_and_line(tmp_path, long_in):
  """The overflow error points at the line to fix, across a glob of files, blank
  lines counted, in the train files and in the held-out last 10% alike."""
  (tmp_path / 'a.txt').write_text('to be\n' * 30)
  long_line = 'x' * 200
  lines = ['or not', '', long_line] + ['or not'] * 7
  if long_in == 'held-out':
    lines = ['or not'] * 7 + ['', long_line]
  (tmp_path / 'b.txt').write_text('\n'.join(lines) + '\n')
  where = 'b.txt:3' if long_in == 'train' else 'b.txt:9'
  with pytest.raises(ValueError, match=rf'{tmp_path}/{where}: example has 201 tokens, more than '
                                       r'config.seq_len=20'):
    datasets.create_datasets(text_config(f'{tmp_path}/*.txt'), None)
