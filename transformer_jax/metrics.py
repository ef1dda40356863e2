"""Metric maths: means from summed counts, MFU, BLEU, G2P error rates.

Metrics over a full split are computed from sums, never from averages of
per-batch averages: the steps return summed `nll`, `correct` and `weight`
(train.cross_entropy; a padded row has weight 0) and `summarize` divides once.
`loss` is the mean negative log-likelihood per weighted target in nats, without
label smoothing, so train and eval losses, perplexity and the unigram baseline
compare directly. Sequence metrics take every hypothesis of a split at once:
BLEU is sacrebleu's corpus BLEU; the G2P rates follow the CMUdict G2P
literature: a word is correct when the prediction equals any of its reference
pronunciations (word error rate), and phoneme errors are the edit distance to
the closest reference over that reference's length (phoneme error rate).
Where records are written: run_log.py.
"""

import functools
import math
import time
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import sacrebleu

Phonemes = Union[str, Sequence[str]]  # 'HH AH L OW' or ['HH', 'AH', 'L', 'OW'].

# Dense bfloat16 peak FLOP/s per chip, for MFU when config.peak_flops is 0.
PEAK_BF16_FLOPS = {'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'L4': 121e12,
                   'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5p': 459e12}


def summarize(sums: dict, task: str) -> dict:
  """Means from per-target sums: loss, accuracy and (LM tasks) perplexity."""
  weight = max(float(sums['weight']), 1e-9)
  out = {'loss': float(sums['nll']) / weight, 'accuracy': float(sums['correct']) / weight}
  if task != 'classify':
    out['perplexity'] = math.exp(min(out['loss'], 700.0))
  return out


def peak_flops(config) -> Optional[float]:
  """Per-device peak FLOP/s: the config's; a known accelerator's bf16 peak; on CPU
  the measured float32 matmul roof (a datasheet number would flatter or shame it),
  shared by this host's CPU devices (JAX_NUM_CPU_DEVICES splits one set of cores)."""
  if config.peak_flops > 0:
    return float(config.peak_flops)
  device = jax.devices()[0]
  if device.platform == 'cpu':
    return measured_matmul_flops() / jax.local_device_count()
  if config.model.dtype != 'bfloat16':
    return None
  for name, flops in PEAK_BF16_FLOPS.items():
    if name in device.device_kind:
      return flops
  return None


@functools.lru_cache(maxsize=None)
def measured_matmul_flops(size: int = 2048, dtype: str = 'float32', repeats: int = 3) -> float:
  """FLOP/s of the best of `repeats` jitted [size, size] @ [size, size] matmuls on
  the first device (benchmarks/peak.py's roof; measured once per process)."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32).astype(dtype)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()  # compile
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * size**3 / best


def mfu(flops_per_token: float, tokens_per_sec: float, peak: Optional[float],
        num_devices: int) -> Optional[float]:
  """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak."""
  if not peak or not tokens_per_sec:
    return None
  return flops_per_token * tokens_per_sec / (peak * num_devices)


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
