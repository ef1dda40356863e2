"""Sentence-pair classification: GLUE's pair tasks (TFDS, under tfds.testing.mock_data) and
text<TAB>text<TAB>label files read as [CLS] a [SEP] b [SEP] with token types."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import load_config, override
from transformer_jax import config as config_lib
from transformer_jax import restore
from transformer_jax import trainer
from transformer_jax.data import DataError
from transformer_jax.data import datasets
from transformer_jax.data import examples
from transformer_jax.data import sources
from transformer_jax.models.transformer import build_model


def _pair_of(row, types, tokenizer):
  """(a, b) of a row [CLS] a [SEP] b [SEP], checking its token types on the way."""
  real = row[row != 0]
  first_sep = 1 + list(real[1:]).index(tokenizer.sep_id)
  assert real[0] == tokenizer.cls_id and real[-1] == tokenizer.sep_id
  np.testing.assert_array_equal(types[:len(real)], [0] * (first_sep + 1) +
                                [1] * (len(real) - first_sep - 1))
  assert not types[len(real):].any()  # padding is of type 0.
  return tokenizer.decode(real[1:first_sep]), tokenizer.decode(real[first_sep + 1:-1])


@pytest.mark.parametrize('task, fields', [('mrpc', ('sentence1', 'sentence2')),
                                          ('mnli', ('premise', 'hypothesis'))])
def test_glue_pairs_are_rows_of_cls_a_sep_b_sep_with_their_token_types(task, fields):
  config = load_config('glue_pairs:quick')
  config.data.name = f'tfds:glue/{task}'
  config.model.num_classes = 3 if task == 'mnli' else 2
  with tfds.testing.mock_data(num_examples=12):
    ds = datasets.create_datasets(config, None)
    split = 'validation_matched' if task == 'mnli' else 'validation'
    raw = sources.tfds_examples(f'glue/{task}', split)
    record = tfds.data_source(f'glue/{task}', split=split)[0]
  assert raw[0] == (record[fields[0]], record[fields[1]], int(record['label']))
  assert ds.eval_split == split
  batch = next(ds.train)
  assert batch['token_types'].shape == batch['inputs'].shape == (8, config.seq_len)
  read = [(*_pair_of(row, types, ds.tokenizer), int(label)) for b in ds.eval()
          for row, types, label, weight in zip(b['inputs'], b['token_types'], b['targets'],
                                                b['weights']) if weight]
  assert read == raw


def test_a_glue_pair_run_trains_its_segment_embeddings(tmp_path):
  """The token types reach the model: sentence B's segment embedding E_B gets a
  gradient, which it gets from no other input."""
  config = override(load_config('glue_pairs:quick'), {'total_steps': 6, 'eval_every': 6,
                                                      'checkpoint_every': 6, 'eval_steps': 1})
  workdir = str(tmp_path / 'mrpc')
  with tfds.testing.mock_data(num_examples=40):
    result = trainer.train(config, workdir)
  assert result['step'] == 6 and 0 <= result['accuracy'] <= 1
  params = restore.open_run(config, workdir).params
  fresh = build_model(config.model).init(jax.random.key(config.seed),
                                         jnp.ones((1, 4), jnp.int32))['params']
  table, start = (p['encoder']['embedder']['token_type_embedding'] for p in (params, fresh))
  assert table.shape == (2, 32) and not np.allclose(table[1], start[1])


def test_a_pair_dataset_asks_for_segment_embeddings_and_its_classes_in_one_line():
  config = load_config('glue_pairs:quick')
  config.model.token_types = 0
  with pytest.raises(config_lib.ConfigError, match=r'^config.data.name=tfds:glue/mrpc holds '
                     r'sentence pairs, read with segment embeddings; set '
                     r'config.model.token_types=2.$'):
    config_lib.validate(config)
  config = load_config('glue_pairs:quick')
  config.data.name = 'tfds:glue/mnli'
  with tfds.testing.mock_data(num_examples=12):
    with pytest.raises(config_lib.ConfigError, match='set config.model.num_classes=3'):
      datasets.create_datasets(config, None)


def test_glue_test_splits_have_no_labels_and_say_so():
  with tfds.testing.mock_data(num_examples=2):
    record = dict(tfds.data_source('glue/mrpc', split='validation')[0], label=-1)
  with pytest.raises(DataError, match=r'labelled -1.*config.data.eval_split=validation'):
    sources.tfds_example('glue/mrpc', record)


def _pairs_config(tmp_path, lines, **data):
  path = tmp_path / 'pairs.tsv'
  path.write_text(''.join(lines))
  config = override(load_config('glue_pairs:quick'), {
      'data.name': 'text', 'data.format': 'tsv', 'data.train_files': str(path),
      'data.max_examples': 0, 'data.tokenizer': 'char', 'model.vocab_size': 64,
      'batch_size': 4, 'seq_len': 24, **{f'data.{k}': v for k, v in data.items()}})
  return config


def test_tsv_pairs_are_read_as_pairs_with_their_labels(tmp_path):
  lines = [f'a cat {i}\tthe cat {i}\t{"same" if i % 2 else "other"}\n' for i in range(20)]
  ds = datasets.create_datasets(_pairs_config(tmp_path, lines), None)
  assert ds.info['classes'] == ('other', 'same') and ds.info['eval_examples'] == 2
  batch = next(ds.train)
  assert batch['token_types'].shape == (4, 24)
  read = [(*_pair_of(row, types, ds.tokenizer), int(label)) for b in ds.eval()
          for row, types, label, weight in zip(b['inputs'], b['token_types'], b['targets'],
                                                b['weights']) if weight]
  assert read == [('a cat 18', 'the cat 18', 0), ('a cat 19', 'the cat 19', 1)]


def test_tsv_pairs_need_segment_embeddings_and_every_line_a_pair(tmp_path):
  pairs = [f'a {i}\tb {i}\t{i % 2}\n' for i in range(10)]
  config = _pairs_config(tmp_path, pairs)
  config.model.token_types = 0
  with pytest.raises(config_lib.ConfigError, match=r'pairs.tsv:1: the files hold sentence pairs '
                     r'\(text<TAB>text<TAB>label\), read with segment embeddings; set '
                     r'config.model.token_types=2.$'):
    datasets.create_datasets(config, None)
  mixed = _pairs_config(tmp_path, pairs[:4] + ['a single sentence\t1\n'] + pairs[4:])
  with pytest.raises(DataError, match=r'pairs.tsv:5: a sentence among sentence pairs; write '
                     'every line'):
    datasets.create_datasets(mixed, None)
  four_fields = _pairs_config(tmp_path, pairs + ['a\tb\tc\t1\n'])
  with pytest.raises(DataError, match=r'pairs.tsv:11: 4 tab-separated fields; write each '
                     r'example as text<TAB>label or, for a sentence pair'):
    datasets.create_datasets(four_fields, None)


def test_an_overlong_pair_loses_tokens_from_its_longer_sentence():
  overflow = examples.Overflow('truncate', seq_len=10)
  assert overflow.fit_pair([1, 2], [3, 4, 5], 'x') == ([1, 2], [3, 4, 5])  # 8 with specials.
  assert overflow.fit_pair([1, 2, 3, 4, 5, 6], [7, 8, 9], 'x') == ([1, 2, 3, 4], [7, 8, 9])
  # the longer loses its last token; at equal lengths, B (as BERT's _truncate_seq_pair).
  assert overflow.fit_pair([1, 2, 3, 4], [5, 6, 7, 8, 9], 'x') == ([1, 2, 3, 4], [5, 6, 7])
  assert overflow.truncated == 2
  assert examples.Overflow('drop', seq_len=10).fit_pair([1] * 6, [2] * 2, 'x') is None
  with pytest.raises(DataError, match=r'^x: example has 11 tokens, more than config.seq_len=10'):
    examples.Overflow('error', seq_len=10).fit_pair([1] * 6, [2] * 2, 'x')


def test_token_types_select_the_segment_embedding_and_none_means_type_0():
  config = load_config('glue_pairs:quick')
  model = build_model(config.model)
  tokens = jnp.asarray([[5, 6, 7, 8, 9, 0]], jnp.int32)
  params = model.init(jax.random.key(0), tokens)['params']
  zeros, ones = jnp.zeros_like(tokens), jnp.ones_like(tokens)
  plain = model.apply({'params': params}, tokens)
  np.testing.assert_allclose(model.apply({'params': params}, tokens, token_types=zeros), plain,
                             rtol=1e-6, atol=1e-6)
  assert not np.allclose(model.apply({'params': params}, tokens, token_types=ones), plain)
  without = build_model(override(config, {'model.token_types': 0}).model)
  with pytest.raises(ValueError, match='set it to 2 for sentence pairs'):
    without.init(jax.random.key(0), tokens, token_types=zeros)
