"""Multi-host data: N processes, each yielding its rows, together yield the
one-process batches (same rows, order and values, MLM masks included), in
training and eval. The processes are simulated in this one by patching
jax.process_count and jax.process_index while each one's datasets are built."""

import itertools

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from transformer_jax import config as config_lib
from transformer_jax.data import datasets

from conftest import load_config, override  # pylint: disable=g-bad-import-order

STEPS = 4  # train steps compared per case.


def text_mlm_config(path, **values):
  """Packed MLM on a text file: the masking applied to packed rows."""
  c = config_lib.base_config()
  c.model.update(variant='encoder', vocab_size=300)
  c.data.update(name='text', task='mlm', train_files=str(path), tokenizer='char',
                packing=True, overflow='truncate')
  return override(c, {'batch_size': 8, 'seq_len': 32, **values})


@pytest.fixture(scope='module')
def text_file(tmp_path_factory):
  path = tmp_path_factory.mktemp('text') / 'lines.txt'
  path.write_text(''.join(f'line {i}: to be or not to be\n' for i in range(200)))
  return path


@pytest.fixture(scope='module')
def short_lines(tmp_path_factory):
  """8 train lines of one character (and 1 eval line): a global batch packs
  them into one row, so the later hosts' rows are all padding."""
  path = tmp_path_factory.mktemp('short') / 'lines.txt'
  path.write_text('\n'.join('abcdefghi') + '\n')
  return path


SMALL = {'batch_size': 8, 'seq_len': 128}  # ~100 eval batches of Shakespeare.
CMUDICT = {'batch_size': 8, 'data.max_examples': 2000}
CASES = {
    'stream windows': lambda f, s: override(load_config('shakespeare_char'), SMALL),
    'stream mlm': lambda f, s: override(load_config('shakespeare_mlm:quick'), SMALL),
    'bucketed seq2seq': lambda f, s: override(load_config('cmudict_g2p:quick'), CMUDICT),
    'packed seq2seq': lambda f, s: override(load_config('cmudict_g2p:quick'),
                                            {**CMUDICT, 'data.packing': True}),
    'packed mlm': lambda f, s: text_mlm_config(f),
    'packed, padding rows': lambda f, s: text_mlm_config(s),
}


def build(ds, batch_size, count, index, monkeypatch):
  """(train iterator, eval iterable) of process `index` of `count`."""
  with monkeypatch.context() as m:
    m.setattr(jax, 'process_count', lambda: count)
    m.setattr(jax, 'process_index', lambda: index)
    train, evals, _ = ds.recipe.batches(ds.tokenizer, batch_size)
  return iter(train), evals


def assert_union(per_process: list, whole: dict, where: str):
  """The processes' batches concatenated by process index == the whole batch."""
  for batch in per_process:
    assert batch.keys() == whole.keys(), where
  for k, v in whole.items():
    joined = np.concatenate([b[k] for b in per_process])
    assert joined.dtype == v.dtype, (where, k)
    np.testing.assert_array_equal(joined, v, err_msg=f'{where}: {k}')


def check_processes(ds, count, monkeypatch):
  """`count` processes' first STEPS train batches and every eval batch,
  concatenated, are those of `ds`, the one-process datasets."""
  batch_size = ds.info['batch_size']
  processes = [build(ds, batch_size, count, i, monkeypatch) for i in range(count)]
  for step in range(STEPS):
    assert_union([next(train) for train, _ in processes], next(ds.train), f'train step {step}')
  whole_eval = list(ds.eval())
  evals = [list(e) for _, e in processes]
  assert all(len(e) == len(whole_eval) for e in evals)
  for i, whole in enumerate(whole_eval):
    assert_union([e[i] for e in evals], whole, f'eval batch {i}')


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('count', [2, 4])
def test_processes_yield_the_one_process_batches(case, count, text_file, short_lines,
                                                 monkeypatch):
  check_processes(datasets.create_datasets(CASES[case](text_file, short_lines)), count,
                  monkeypatch)


@pytest.mark.parametrize('count', [2, 4])
def test_streamed_packed_mlm(count, monkeypatch):
  """A TFDS train split (StreamedExamples, encoded as batches are read), packed and masked."""
  c = config_lib.base_config()
  c.model.update(variant='encoder', vocab_size=300)
  c.data.update(name='tfds:lm1b', task='mlm', tokenizer='byte', overflow='truncate',
                packing=True)
  with tfds.testing.mock_data(num_examples=40):
    check_processes(datasets.create_datasets(override(c, {'batch_size': 8, 'seq_len': 32})),
                    count, monkeypatch)


def test_a_batch_that_does_not_split_over_the_processes_is_a_one_line_error(monkeypatch):
  ds = datasets.create_datasets(override(load_config('shakespeare_char'), SMALL))
  with pytest.raises(config_lib.ConfigError, match='does not split over 3 hosts') as error:
    build(ds, 8, 3, 0, monkeypatch)
  assert '\n' not in str(error.value)


def test_packing_leaves_padding_rows_to_the_later_processes(short_lines, monkeypatch):
  """The padding-rows case above is what it says: one packed row, the rest zeros."""
  ds = datasets.create_datasets(text_mlm_config(short_lines))
  for batch in itertools.islice(build(ds, 8, 4, 3, monkeypatch)[0], 2):
    assert batch['inputs'].shape == (2, 32) and not batch['segment_ids'].any()
  first = next(build(ds, 8, 4, 0, monkeypatch)[0])
  assert first['segment_ids'][0].max() == 8 and not first['segment_ids'][1].any()
