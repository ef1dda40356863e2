"""Evaluation metrics, as pure functions of counts or of decoded outputs.

Metrics over a full eval split are computed from sums, never from averages of
per-batch averages: the eval loop adds up `token_counts` over every batch (the
padded last batch contributes nothing, its weights are 0) and calls
`summarize` once. Sequence metrics take every hypothesis of the split at once:
BLEU is sacrebleu's corpus BLEU; the G2P rates follow the CMUdict G2P
literature: a word is correct when the prediction equals any of its reference
pronunciations (word error rate), and phoneme errors are the edit distance to
the closest reference over that reference's length (phoneme error rate).
"""

import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import sacrebleu

Phonemes = Union[str, Sequence[str]]  # 'HH AH L OW' or ['HH', 'AH', 'L', 'OW'].


def token_counts(logits, targets, weights):
  """Sums for one batch: {'nll': sum of -log p(target), 'correct': argmax hits,
  'weight': sum of weights}, each weighted. logits [..., classes], targets and
  weights [...]; works for LM/MLM ([b, l]) and classification ([b]) alike."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {'nll': (nll * weights).sum(), 'correct': (correct * weights).sum(),
          'weight': weights.sum()}


def mean_loss(nll_sum: float, num_tokens: float) -> float:
  """Cross-entropy in nats per token."""
  if num_tokens <= 0:
    raise ValueError(f'num_tokens={num_tokens}: nothing was evaluated; check the eval split.')
  return float(nll_sum) / float(num_tokens)


def perplexity(nll_sum: float, num_tokens: float) -> float:
  """exp(mean negative log-likelihood per token)."""
  return math.exp(mean_loss(nll_sum, num_tokens))


def bits_per_character(nll_sum: float, num_characters: float) -> float:
  """Total negative log-likelihood (nats) in bits, per character of text. With a
  character tokenizer num_characters is the token count; with subwords it is the
  length of the decoded text, so models with different tokenizers compare."""
  return mean_loss(nll_sum, num_characters) / math.log(2)


def accuracy(num_correct: float, num_total: float) -> float:
  if num_total <= 0:
    raise ValueError(f'num_total={num_total}: nothing was evaluated; check the eval split.')
  return float(num_correct) / float(num_total)


def summarize(counts: dict, num_characters: Optional[float] = None) -> dict:
  """loss, perplexity, accuracy (and bits_per_character given the character count)
  from `token_counts` summed over a split."""
  nll, weight = float(counts['nll']), float(counts['weight'])
  out = {'loss': mean_loss(nll, weight), 'perplexity': perplexity(nll, weight),
         'accuracy': accuracy(counts['correct'], weight)}
  if num_characters is not None:
    out['bits_per_character'] = bits_per_character(nll, num_characters)
  return out


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[Union[str, Sequence[str]]],
                tokenize: str = '13a') -> float:
  """sacrebleu corpus BLEU (0-100). references: one string per hypothesis, or a
  list of reference strings per hypothesis (the same number for each)."""
  if len(hypotheses) != len(references):
    raise ValueError(f'{len(hypotheses)} hypotheses but {len(references)} references; '
                     'give one reference (or list of references) per hypothesis.')
  per_sentence = [[r] if isinstance(r, str) else list(r) for r in references]
  counts = {len(r) for r in per_sentence}
  if len(counts) > 1:
    raise ValueError(f'hypotheses have different numbers of references {sorted(counts)}; '
                     'give every hypothesis the same number.')
  streams = [list(stream) for stream in zip(*per_sentence)]
  return sacrebleu.corpus_bleu(list(hypotheses), streams, tokenize=tokenize).score


def edit_distance(a: Sequence, b: Sequence) -> int:
  """Levenshtein distance (insertions, deletions, substitutions cost 1)."""
  previous = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    current = [i]
    for j, y in enumerate(b, 1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
    previous = current
  return previous[-1]


def _phonemes(p: Phonemes) -> tuple:
  return tuple(p.split()) if isinstance(p, str) else tuple(p)


def _check_g2p(predictions, references):
  if len(predictions) != len(references):
    raise ValueError(f'{len(predictions)} predictions but {len(references)} words of references; '
                     'give one prediction per word.')
  if not predictions:
    raise ValueError('no words to score; check the eval split.')
  if any(len(refs) == 0 for refs in references):
    raise ValueError('a word has no reference pronunciation; give at least one per word.')


def g2p_error_rates(predictions: Sequence[Phonemes],
                    references: Sequence[Sequence[Phonemes]]) -> dict:
  """{'wer', 'per'} for G2P, both fractions in [0, 1] (PER can exceed 1).

  predictions: one phoneme sequence per word; references: every reference
  pronunciation of that word. WER = words whose prediction equals none of its
  references / words. PER = sum over words of the edit distance to the closest
  reference / sum of those references' lengths (the first closest on ties).
  """
  _check_g2p(predictions, references)
  wrong, edits, length = 0, 0, 0
  for prediction, refs in zip(predictions, references):
    prediction = _phonemes(prediction)
    refs = [_phonemes(r) for r in refs]
    wrong += prediction not in refs
    distance, closest = min((edit_distance(prediction, r), i) for i, r in enumerate(refs))
    edits += distance
    length += len(refs[closest])
  return {'wer': wrong / len(predictions), 'per': edits / max(length, 1)}


def word_error_rate(predictions: Sequence[Phonemes],
                    references: Sequence[Sequence[Phonemes]]) -> float:
  """G2P word error rate; see `g2p_error_rates`."""
  return g2p_error_rates(predictions, references)['wer']


def phoneme_error_rate(predictions: Sequence[Phonemes],
                       references: Sequence[Sequence[Phonemes]]) -> float:
  """G2P phoneme error rate; see `g2p_error_rates`."""
  return g2p_error_rates(predictions, references)['per']
