"""The TFDS datasets end to end under tfds.testing.mock_data (random strings)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from transformer_jax import config as config_lib
from transformer_jax.data import batching
from transformer_jax.data import datasets
from transformer_jax.data import examples
from transformer_jax.data import sources


def tfds_config(name, variant, task, **data):
  c = config_lib.base_config()
  c.model.variant = variant
  c.model.vocab_size = 300
  c.batch_size = 4
  c.seq_len = 32
  c.data.update({'name': f'tfds:{name}', 'task': task, 'tokenizer': 'byte',
                 'overflow': 'truncate', **data})
  return c


@pytest.mark.parametrize('name', ['wmt14_translate/de-en', 'wmt17_translate/de-en'])
def test_translation(name):
  with tfds.testing.mock_data(num_examples=12):
    ds = datasets.create_datasets(tfds_config(name, 'seq2seq', 'seq2seq', bucketing=False), None)
  assert ds.info['train_examples'] == 12 and ds.info['eval_examples'] == 12
  batch = next(ds.train)
  assert {'inputs', 'targets', 'weights'} <= set(batch)
  assert batch['targets'].shape == batch['weights'].shape and batch['inputs'].shape[0] == 4
  assert sum(int((b['weights'].sum(1) > 0).sum()) for b in ds.eval()) == 12


def test_translation_direction_and_sentencepiece(tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    raw = sources.tfds_examples('wmt14_translate/de-en', 'train')
    config = tfds_config('wmt14_translate/de-en', 'seq2seq', 'seq2seq', packing=True,
                         tokenizer='sentencepiece', vocab_size=40)
    ds = datasets.create_datasets(config, str(tmp_path))
  assert (tmp_path / 'tokenizer' / 'spm.model').exists()  # the run's own vocabulary.
  batch = next(ds.train)
  assert 'inputs_segment_ids' in batch and 'targets_positions' in batch
  # config.data.source_language=en: inputs are the English side.
  first = batch['inputs'][0][batch['inputs_segment_ids'][0] == 1]
  assert ds.tokenizer.decode(first) in [en for en, _ in raw]


def test_lm1b():
  with tfds.testing.mock_data(num_examples=10):
    ds = datasets.create_datasets(tfds_config('lm1b', 'decoder', 'lm'), None)
  batch = next(ds.train)
  assert batch['inputs'].shape == batch['targets'].shape == (4, 32)
  assert 'unigram_entropy' in ds.info and ds.info['eval_examples'] == 10


def test_sst2():
  with tfds.testing.mock_data(num_examples=9):
    config = tfds_config('glue/sst2', 'encoder', 'classify')
    config.model.encoder_head = 'classify'
    ds = datasets.create_datasets(config, None)
  batch = next(ds.train)
  assert batch['targets'].shape == batch['weights'].shape == (4,)
  assert set(np.unique(batch['targets'])) <= {0, 1}
  eval_batches = list(ds.eval())
  assert len(eval_batches) == 3 and eval_batches[-1]['weights'].sum() == 1


def test_ag_news_topics_are_read_from_the_description_in_four_classes():
  with tfds.testing.mock_data(num_examples=9):
    config = tfds_config('ag_news_subset', 'encoder', 'classify')
    config.model.update(encoder_head='classify', num_classes=4)
    ds = datasets.create_datasets(config, None)
    raw = sources.tfds_examples('ag_news_subset', 'test')
    config.model.num_classes = 2
    with pytest.raises(config_lib.ConfigError, match='set config.model.num_classes=4'):
      datasets.create_datasets(config, None)
  assert ds.eval_split == 'test' and ds.info['eval_examples'] == 9
  assert [text for text, _ in raw] == [
      ds.tokenizer.decode(row[row > 0]) for b in ds.eval() for row in b['inputs']][:9]
  assert {label for _, label in raw} <= {0, 1, 2, 3}
  assert sorted(int(t) for b in ds.eval() for t, w in zip(b['targets'], b['weights'])
                if w) == sorted(label for _, label in raw)


def test_wrong_task_for_a_tfds_dataset():
  with pytest.raises(config_lib.ConfigError, match='not available for tfds:lm1b; use lm or mlm'):
    datasets.create_datasets(tfds_config('lm1b', 'seq2seq', 'seq2seq'), None)


def test_train_split_is_streamed_and_each_epoch_reads_every_example_once(monkeypatch):
  made = []
  make_example = examples.make_example
  monkeypatch.setattr(examples, 'make_example',
                      lambda raw, *args: made.append(raw) or make_example(raw, *args))
  name = 'wmt14_translate/de-en'
  with tfds.testing.mock_data(num_examples=12):
    raw = sources.tfds_examples(name, 'train')
    # No reader threads or prefetch: nothing reads ahead in the background, so what
    # is made before the first batch is exactly what creating the datasets made.
    ds = datasets.create_datasets(tfds_config(name, 'seq2seq', 'seq2seq', bucketing=False,
                                              num_threads=0, prefetch=0), None)
    assert len(made) == 12  # the eval split; no train example is tokenized up front.
    epoch = [next(ds.train) for _ in range(3)]  # 12 examples, batch 4.
  sources_read = sorted(ds.tokenizer.decode(row[row != 0][:-1])  # without <eos>
                        for batch in epoch for row in batch['inputs'])
  assert sources_read == sorted(en for en, _ in raw)


def test_streamed_seq2seq_cannot_bucket():
  with tfds.testing.mock_data(num_examples=12):
    with pytest.raises(config_lib.ConfigError, match='set config.data.packing=True or bucketing'):
      datasets.create_datasets(tfds_config('wmt14_translate/de-en', 'seq2seq', 'seq2seq'), None)


def test_streamed_dropped_examples_become_empty_rows():
  rows = batching.pad_rows([{'inputs': np.array([5, 6], np.int32),
                             'weights': np.ones(2, np.float32)}, None], 4)
  np.testing.assert_array_equal(rows['inputs'], [[5, 6, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(rows['weights'].sum(1), [2, 0])


def test_tfrecord_prepared_data_gets_one_line_fix(monkeypatch):
  def tfrecord_only(*args, **kwargs):
    raise NotImplementedError('Random access data source for file format tfrecord ...\n...')
  monkeypatch.setattr(tfds, 'data_source', tfrecord_only)
  with pytest.raises(ValueError, match=r'prepared as tfrecord.*--file_format=array_record'):
    sources.tfds_source('lm1b', 'train', '/data/tfds')


def test_without_tensorflow_the_error_names_the_install_command(monkeypatch):
  find_spec = sources.importlib.util.find_spec
  monkeypatch.setattr(sources.importlib.util, 'find_spec',
                      lambda name: None if name == 'tensorflow' else find_spec(name))
  with pytest.raises(ImportError, match=r"need tensorflow; install them with "
                                        r"pip install 'transformer_jax\[tfds\]'"):
    sources.tfds_examples('wmt14_translate/de-en', 'train')
