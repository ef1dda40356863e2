"""The dataset catalog: what reads it, and the evaluators it names."""

import pytest

from transformer_jax import catalog
from transformer_jax import config as config_lib
from transformer_jax import configs
from transformer_jax import evaluators
from transformer_jax.data import datasets
from transformer_jax.data import sources

from conftest import override  # pylint: disable=g-bad-import-order


def test_every_task_of_every_dataset_has_a_recipe():
  for name, dataset in catalog.DATASETS.items():
    assert dataset.kind in catalog.KINDS, name
    assert set(dataset.evaluators) <= set(catalog.EVALUATORS), name
    for task in dataset.tasks:
      config = override(config_lib.base_config(), {'data.name': name, 'data.task': task})
      recipe = datasets.recipe_for(config)
      assert task in recipe.tasks_for(name) and recipe.serves(name)


def test_every_evaluator_the_catalog_names_is_loaded_by_that_name():
  assert set(evaluators.EVALUATORS) == set(catalog.EVALUATORS)


@pytest.mark.parametrize('config, data, expected', [
    ('shakespeare_char', {}, ('bits_per_character',)),
    ('shakespeare_char', {'data.tokenizer': 'byte'}, ()),  # a token is not a character.
    ('shakespeare_mlm', {}, ()),
    ('cmudict_g2p', {}, ('g2p_error_rates',)),
    ('wmt14_ende_base', {}, ('bleu',)),
    ('digits_vit', {}, ()),
])
def test_a_run_reports_its_datasets_evaluators_that_fit_it(config, data, expected):
  c = override(configs.load(config), data)
  config_lib.validate(c)
  assert config_lib.evaluators(c) == expected


def test_config_evals_names_the_evaluators_or_none():
  c = configs.load('shakespeare_char')
  assert config_lib.evaluators(override(c, {'evals': 'none'})) == ()
  assert config_lib.evaluators(override(c, {'evals': ' bits_per_character '})) == (
      'bits_per_character',)


@pytest.mark.parametrize('config, evals, message', [
    ('shakespeare_char', 'perplexity',
     r"^config.evals='perplexity' names an unknown evaluator 'perplexity'; use one of "
     r'bits_per_character, bleu, g2p_error_rates \(comma-separated\), or none.$'),
    ('cmudict_g2p', 'bleu',
     r"^config.evals='bleu': bleu scores dataset kind translation, not g2p "
     r'\(config.data.name=cmudict, task=seq2seq, tokenizer=char\); use g2p_error_rates.$'),
    ('shakespeare_mlm', 'bits_per_character',
     r"^config.evals='bits_per_character': bits_per_character scores task lm, not mlm .*; "
     r'use none.$'),
])
def test_an_evaluator_that_is_unknown_or_does_not_fit_is_a_config_error(config, evals, message):
  c = override(configs.load(config), {'evals': evals})
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(c)


def test_g2p_error_rates_score_the_generated_words_against_every_pronunciation():
  c = configs.load('cmudict_g2p')
  c.decode.max_examples = 3
  references = [('read', ['R EH D', 'R IY D']), ('cat', ['K AE T']), ('dog', ['D AO G']),
                ('not', ['N AA T'])]
  outputs = {'read': 'R IY D', 'cat': 'K AE T', 'dog': 'D AO'}
  seen = []
  inputs = evaluators.Inputs(config=c, loss=1.0, references=references,
                             generate=lambda words: seen.extend(words) or [outputs[w]
                                                                           for w in words])
  result = evaluators.evaluate(('g2p_error_rates',), inputs)
  assert seen == ['read', 'cat', 'dog']  # the first config.decode.max_examples words.
  assert result == {'word_error_rate': 1 / 3, 'phoneme_error_rate': 1 / 9, 'decoded_words': 3}


def test_an_unknown_dataset_name_lists_the_catalogs():
  c = override(config_lib.base_config(), {'data.name': 'shakspeare'})
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  message = str(e.value)
  assert message.startswith("config.data.name='shakspeare' is unknown; use shakespeare, ")
  assert all(name.removeprefix('tfds:') in message for name in catalog.DATASETS)
  assert '\n' not in message


def test_a_task_the_dataset_does_not_serve_names_those_it_does():
  c = override(configs.load('shakespeare_char'), {'data.name': 'tfds:glue/sst2'})
  with pytest.raises(config_lib.ConfigError,
                     match=r'^config.data.task=lm is not available for tfds:glue/sst2; use '
                           r'classify.$'):
    config_lib.validate(c)


def test_tfds_records_are_read_by_the_catalogs_fields():
  record = {'sentence': b'a fine film', 'label': 1, 'idx': 7}
  assert sources.tfds_example('glue/sst2', record) == ('a fine film', 1)
  assert sources.tfds_example('lm1b', {'text': b'one line'}) == 'one line'
  with pytest.raises(ValueError, match=r'^tfds:imdb is not supported; use one of tfds:'):
    sources.tfds_example('imdb', {})
