"""Recipes: one encode for training and decode inputs, run-owned vocabularies,
eval references from the Datasets object."""

import logging

import pytest
import tensorflow_datasets as tfds

from transformer_jax import catalog
from transformer_jax import config as config_lib
from transformer_jax import evaluation
from transformer_jax.data import datasets
from transformer_jax.data import sources
from transformer_jax.data import tokenizers

from conftest import load_config  # pylint: disable=g-bad-import-order



def small_config(variant='decoder', **data):
  c = config_lib.base_config()
  c.model.variant = variant
  c.model.vocab_size = 300
  c.batch_size = 4
  c.seq_len = 16
  c.data.update(data)
  return c


def genre_config():
  c = small_config('encoder', task='classify')
  c.model.update(encoder_head='classify', num_classes=len(sources.GENRES))
  return c


@pytest.fixture(scope='module')
def text_files(tmp_path_factory):
  d = tmp_path_factory.mktemp('text')
  (d / 'lines.txt').write_text(''.join(f'line {i}: to be or not\n' for i in range(40)))
  (d / 'pairs.tsv').write_text(''.join(f'cat {i}\tchat {i}\n' for i in range(40)))
  return d


# (recipe, config) for every recipe and task kind; the tfds one under mock data.
CASES = {
    'shakespeare lm': (datasets.recipes.ShakespeareStream, lambda d: small_config()),
    'shakespeare mlm': (datasets.recipes.ShakespeareStream,
                        lambda d: small_config('encoder', task='mlm')),
    'shakespeare classify': (datasets.recipes.ShakespeareGenres, lambda d: genre_config()),
    'cmudict seq2seq': (datasets.recipes.Cmudict, lambda d: small_config(
        'seq2seq', name='cmudict', task='seq2seq', max_examples=200, overflow='drop')),
    'text lines lm': (datasets.recipes.TextFiles, lambda d: small_config(
        name='text', train_files=str(d / 'lines.txt'), overflow='truncate')),
    'text tsv seq2seq': (datasets.recipes.TextFiles, lambda d: small_config(
        'seq2seq', name='text', task='seq2seq', format='tsv', train_files=str(d / 'pairs.tsv'),
        bucketing=False)),
    'tfds lm1b lm': (datasets.recipes.Tfds, lambda d: small_config(
        name='tfds:lm1b', tokenizer='byte', overflow='truncate')),
}




def image_config(name):
  size, _, channels = catalog.DATASETS[name].image_shape
  c = load_config('digits_vit')
  c.model.update(image_size=size, num_channels=channels, patch_size=4)
  c.data.name = name
  c.batch_size = 4
  return c


# Image recipes encode pixels, not text (they have no encode_input); (recipe, config, raw
# train examples). cifar10's train rows are augmented: tests/test_vit.py.
IMAGE_CASES = {
    'digits': (datasets.recipes.Digits, lambda: image_config('digits'),
               lambda: [(sources.digits()[0][i], sources.digits()[1][i])
                        for i in sources.digits_split()['train']]),
    'tfds mnist': (datasets.recipes.TfdsImages, lambda: image_config('tfds:mnist'),
                   lambda: sources.tfds_examples('mnist', 'train')),
}


def test_every_recipe_is_covered():
  covered = {recipe for recipe, *_ in [*CASES.values(), *IMAGE_CASES.values()]}
  assert covered == set(datasets.RECIPES)


@pytest.mark.parametrize('case', sorted(IMAGE_CASES))
def test_image_train_rows_are_the_recipes_encode_of_train_images(case):
  recipe, make_config, train_raw = IMAGE_CASES[case]
  with tfds.testing.mock_data(num_examples=8):
    ds = datasets.create_datasets(make_config(), None)
    batch = next(ds.train)
    raw = train_raw()
  assert isinstance(ds.recipe, recipe) and ds.tokenizer is None
  encoded = {ds.recipe.encode(ex)['inputs'].tobytes(): int(ex[1]) for ex in raw}
  for inputs, label in zip(batch['inputs'], batch['targets']):
    assert encoded[inputs.tobytes()] == label


@pytest.mark.parametrize('case', sorted(CASES))
def test_encode_input_is_the_inputs_of_a_training_example(case, text_files):
  recipe, make_config = CASES[case]
  config = make_config(text_files)
  if case.startswith('tfds'):
    with tfds.testing.mock_data(num_examples=8):
      ds = datasets.create_datasets(config, None)
      batch = next(ds.train)
  else:
    ds = datasets.create_datasets(config, None)
    batch = next(ds.train)
  assert isinstance(ds.recipe, recipe)
  # An MLM example's inputs before masking are its targets.
  rows = batch['targets'] if config.data.task == 'mlm' else batch['inputs']
  for row in rows:
    ids = row[row != 0]
    assert ds.encode_input(ds.tokenizer.decode(ids)) == ids.tolist()


def test_encode_input_puts_eos_where_training_does(text_files):
  lines = datasets.create_datasets(CASES['text lines lm'][1](text_files), None)
  assert lines.encode_input('to be') == [tokenizers.EOS_ID] + lines.tokenizer.encode('to be')
  pairs = datasets.create_datasets(CASES['text tsv seq2seq'][1](text_files), None)
  assert pairs.encode_input('cat 3') == pairs.tokenizer.encode('cat 3') + [tokenizers.EOS_ID]
  stream = datasets.create_datasets(small_config(), None)
  assert stream.encode_input('to be') == stream.tokenizer.encode('to be')


# ---------------------------------------------------------------------------
# The run's vocabulary.


def vocabulary_warnings(caplog):
  return [r for r in caplog.records if 'vocabulary' in r.getMessage() and 'lacks' in
          r.getMessage()]


def test_char_vocabulary_is_read_back_not_rebuilt(tmp_path, caplog):
  train, test = tmp_path / 'train.txt', tmp_path / 'test.txt'
  train.write_text('the cat sat on the mat\n' * 20)
  test.write_text('the mat\n')
  config = small_config(name='text', train_files=str(train), eval_files=str(test),
                        overflow='truncate')
  workdir = str(tmp_path / 'run')
  first = datasets.create_datasets(config, workdir).tokenizer
  assert tokenizers.is_saved(str(tmp_path / 'run' / 'tokenizer'))
  with open(train, 'a') as f:
    f.write('QUIZ ZAP!\n')
  with caplog.at_level(logging.WARNING):
    again = datasets.create_datasets(config, workdir).tokenizer
  assert again.vocab_size == first.vocab_size and again.chars == first.chars
  assert again.encode('the cat sat') == first.encode('the cat sat')
  assert set(again.encode('QZ!')) == {tokenizers.UNK_ID}
  assert len(vocabulary_warnings(caplog)) == 1
  fresh = datasets.create_datasets(config, str(tmp_path / 'fresh')).tokenizer
  assert fresh.vocab_size == first.vocab_size + len(set('QUIZ ZAP!') - set(first.chars))
  assert tokenizers.UNK_ID not in fresh.encode('QUIZ ZAP!')


def test_g2p_symbol_tables_are_read_back(tmp_path, caplog):
  def config(max_examples):
    c = load_config('cmudict_g2p:quick')
    c.data.update(max_examples=max_examples, bucketing=False)
    c.batch_size = 4
    return c
  workdir = str(tmp_path / 'run')
  first = datasets.create_datasets(config(20), workdir).tokenizer
  with caplog.at_level(logging.WARNING):
    again = datasets.create_datasets(config(2000), workdir).tokenizer
  assert again.symbols == first.symbols and again.vocab_size == first.vocab_size
  assert len(vocabulary_warnings(caplog)) == 1
  fresh = datasets.create_datasets(config(2000), str(tmp_path / 'fresh')).tokenizer
  assert fresh.vocab_size > first.vocab_size


def test_another_tokenizer_in_the_same_workdir_is_a_one_line_error(tmp_path):
  datasets.create_datasets(small_config(), str(tmp_path))
  with pytest.raises(ValueError, match='holds the char vocabulary') as e:
    datasets.create_datasets(small_config(tokenizer='byte'), str(tmp_path))
  assert '\n' not in str(e.value)


def test_sentencepiece_model_is_the_runs_and_not_retrained(tmp_path, monkeypatch):
  train = tmp_path / 'train.txt'
  train.write_text(''.join(f'to be or not to be, line {i}\n' for i in range(200)))
  config = small_config(name='text', train_files=str(train), tokenizer='sentencepiece',
                        vocab_size=60, overflow='truncate')
  workdir = str(tmp_path / 'run')
  first = datasets.create_datasets(config, workdir).tokenizer
  assert (tmp_path / 'run' / 'tokenizer' / 'spm.model').exists()
  monkeypatch.setattr(tokenizers, 'train_sentencepiece',
                      lambda *args, **kwargs: pytest.fail('retrained the run\'s model'))
  again = datasets.create_datasets(config, workdir).tokenizer
  assert again.encode('to be or not') == first.encode('to be or not')


def test_an_edited_file_gets_a_new_cached_sentencepiece_model(tmp_path, monkeypatch):
  """Without a workdir the model is cached by the training text, not the file name."""
  monkeypatch.setattr(datasets.recipes, 'SPM_CACHE', str(tmp_path / 'cache'))
  train = tmp_path / 'train.txt'
  config = small_config(name='text', train_files=str(train), tokenizer='sentencepiece',
                        vocab_size=40, overflow='truncate')
  train.write_text(''.join(f'to be or not to be, line {i}\n' for i in range(50)))
  datasets.create_datasets(config, None)
  train.write_text(''.join(f'quick brown fox jumps, line {i}\n' for i in range(50)))
  tokenizer = datasets.create_datasets(config, None).tokenizer
  assert tokenizer.unk_id not in tokenizer.encode('quick brown fox jumps')


# ---------------------------------------------------------------------------
# Eval splits and references.

@pytest.mark.parametrize('split', ['', 'test'])
def test_cmudict_references_are_the_eval_splits_words(split):
  c = small_config('seq2seq', name='cmudict', task='seq2seq', max_examples=100,
                   overflow='drop', eval_split=split)
  ds = datasets.create_datasets(c, None)
  assert ds.eval_split == (split or 'dev')
  assert ds.references == sources.cmudict_g2p()[ds.eval_split]  # every word.
  assert evaluation.eval_tags(c, ds)['eval_split'] == ds.eval_split


def test_a_g2p_word_in_capitals_is_spelled_not_read_as_phonemes():
  c = small_config('seq2seq', name='cmudict', task='seq2seq', max_examples=100, overflow='drop')
  ds = datasets.create_datasets(c, None)
  graphemes = {ds.tokenizer.encode(g)[0] for g in ds.tokenizer.graphemes}
  ids = ds.encode_input('WORLD')
  assert ids == ds.encode_input('world')
  assert set(ids) - {tokenizers.EOS_ID} <= graphemes and tokenizers.UNK_ID not in ids
  assert ds.tokenizer.encode('W R L D') != ds.tokenizer.encode('wrld')  # what the fix avoids.


@pytest.mark.parametrize('data, message', [
    (dict(name='cmudict', task='seq2seq', eval_split='tset'),
     r"^config.data.eval_split='tset' is not a held-out split of cmudict; use dev or test.$"),
    (dict(eval_split='test'),
     r"^config.data.eval_split='test': shakespeare has one eval split \(validation\); drop "
     r"--config.data.eval_split.$"),
])
def test_an_eval_split_the_dataset_lacks_is_refused_in_one_line(data, message):
  # Not a KeyError traceback (cmudict), nor the validation split evaluated under
  # the name asked for (a dataset with a single eval split).
  with pytest.raises(config_lib.ConfigError, match=message):
    datasets.create_datasets(small_config('seq2seq' if 'task' in data else 'decoder', **data))


def test_translation_references_are_the_eval_pairs():
  c = small_config('seq2seq', name='tfds:wmt14_translate/de-en', task='seq2seq',
                   tokenizer='byte', overflow='truncate', bucketing=False)
  with tfds.testing.mock_data(num_examples=6):
    ds = datasets.create_datasets(c, None)
    pairs = sources.tfds_examples('wmt14_translate/de-en', 'test')
  assert ds.eval_split == 'test' and ds.references == pairs


def test_datasets_without_references():
  ds = datasets.create_datasets(small_config(), None)
  assert ds.references is None and ds.eval_split == 'validation'
  assert 'eval_split' not in evaluation.eval_tags(small_config(), ds)
