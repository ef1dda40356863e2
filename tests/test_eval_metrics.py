"""Evaluation metrics against values computed by hand."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import metrics
from transformer_jax.train import cross_entropy


def test_sums_and_summary():
  # p = (1/2, 1/4, 1/4): target 0 costs ln 2, target 1 costs ln 4.
  logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]]))
  targets = jnp.array([[0, 1, 2]])
  weights = jnp.array([[1.0, 1.0, 0.0]])  # the last position is padding.
  objective, sums = cross_entropy(logits, targets, weights)
  np.testing.assert_allclose(sums['nll'], math.log(2) + math.log(4), rtol=1e-6)
  np.testing.assert_allclose(objective, sums['nll'], rtol=1e-6)
  assert float(sums['correct']) == 1.0 and float(sums['weight']) == 2.0
  summary = metrics.summarize(sums, task='lm')
  np.testing.assert_allclose(summary['loss'], 1.5 * math.log(2), rtol=1e-6)
  np.testing.assert_allclose(summary['perplexity'], 2**1.5, rtol=1e-6)
  assert summary['accuracy'] == 0.5
  assert 'perplexity' not in metrics.summarize(sums, task='classify')


def test_label_smoothing_changes_the_objective_not_the_nll():
  logits = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
  objective, sums = cross_entropy(logits, jnp.array([0]), jnp.array([1.0]), label_smoothing=0.3)
  np.testing.assert_allclose(sums['nll'], math.log(2), rtol=1e-6)
  # (1 - eps) * ln 2 + eps * mean(ln 2, ln 4, ln 4)
  expected = 0.7 * math.log(2) + 0.3 * (math.log(2) + 2 * math.log(4)) / 3
  np.testing.assert_allclose(objective, expected, rtol=1e-6)


def test_sums_classification_shape():
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [5.0, 0.0]])
  _, sums = cross_entropy(logits, jnp.array([0, 0, 1]), jnp.array([1.0, 1.0, 0.0]))
  assert float(sums['correct']) == 1.0 and float(sums['weight']) == 2.0


def test_bleu_hand_computed():
  # n-gram precisions 5/6, 4/5, 3/4, 2/3; equal lengths, so BP = 1.
  score = metrics.corpus_bleu(['a b c d e f'], ['a b c d e g'])
  assert score == pytest.approx(100 * (5 / 6 * 4 / 5 * 3 / 4 * 2 / 3)**0.25, abs=1e-6)
  # All precisions 1, hypothesis 5 vs reference 7 words: BP = exp(1 - 7/5).
  score = metrics.corpus_bleu(['a b c d e'], ['a b c d e f g'])
  assert score == pytest.approx(100 * math.exp(1 - 7 / 5), abs=1e-6)


def test_bleu_is_corpus_level():
  # Counts are summed over sentences: 10/11, 8/9, 6/7, 4/5, lengths 11 vs 13.
  score = metrics.corpus_bleu(['a b c d e f', 'a b c d e'],
                                   ['a b c d e g', 'a b c d e f g'])
  expected = math.exp(1 - 13 / 11) * (10 / 11 * 8 / 9 * 6 / 7 * 4 / 5)**0.25
  assert score == pytest.approx(100 * expected, abs=1e-6)


def test_bleu_multiple_references():
  # 'a' only in the first reference, 'f' only in the second: every n-gram matches.
  score = metrics.corpus_bleu(['a b c d e f'], [['a b c d e g', 'x b c d e f']])
  assert score == pytest.approx(100.0)
  with pytest.raises(ValueError, match='different numbers of references'):
    metrics.corpus_bleu(['a', 'b'], [['a'], ['b', 'c']])
  with pytest.raises(ValueError, match='one reference'):
    metrics.corpus_bleu(['a', 'b'], ['a'])


@pytest.mark.parametrize('a,b,distance', [
    ('kitten', 'sitting', 3),
    ('', 'abc', 3),
    ('abc', '', 3),
    ('flaw', 'lawn', 2),
    (['HH', 'AH', 'L', 'OW'], ['HH', 'EH', 'L', 'OW'], 1),
])
def test_edit_distance(a, b, distance):
  assert metrics.edit_distance(a, b) == distance


def test_g2p_error_rates_hand_computed():
  predictions = ['HH EH L OW', 'W ER L D', ['K', 'AH', 'T']]
  references = [
      ['HH AH L OW', 'HH EH L OW'],  # equals the second pronunciation: correct, 0 edits / 4.
      ['W ER L D Z'],  # one deletion: wrong, 1 edit / 5.
      ['K AE T S', 'K AA T'],  # 2 edits to the first, 1 to the second (closest): 1 / 3.
  ]
  rates = metrics.g2p_error_rates(predictions, references)
  assert rates['wer'] == pytest.approx(2 / 3)
  assert rates['per'] == pytest.approx(2 / 12)


def test_g2p_per_ties_use_the_first_closest_reference():
  # 1 edit to both references; the first (length 2) is the denominator.
  rates = metrics.g2p_error_rates(['A B C'], [['A B', 'A B C D']])
  assert rates == {'wer': 1.0, 'per': 0.5}


def test_g2p_bad_input():
  with pytest.raises(ValueError, match='one prediction per word'):
    metrics.g2p_error_rates(['A'], [['A'], ['B']])
  with pytest.raises(ValueError, match='no reference pronunciation'):
    metrics.g2p_error_rates(['A'], [[]])
