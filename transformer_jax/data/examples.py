"""Raw examples -> example dicts of variable-length int32 arrays, BERT masking,
and images (scaled to [0, 1]; the CIFAR augmentation).

`make_example` is the one place that decides how a raw example becomes model
rows (where <eos> goes, what is cut); datasets.py's recipes encode training,
eval and decode inputs through it (`image_example` for images). `StreamedExamples`
does the same lazily for a random-access source too large to hold in memory.
"""

import collections.abc
import functools
from typing import Callable, Optional

from absl import logging
import numpy as np

from transformer_jax import config as config_lib
from transformer_jax.data import batching
from transformer_jax.data import tokenizers as tok_lib
from transformer_jax.data import DataError


PAIR_SPECIALS = 3  # a sentence pair's [CLS] and two [SEP].


def pair_ids(a: list, b: list, tokenizer) -> tuple:
  """(ids, token types) of the sentence pair a, b: [CLS] a [SEP] b [SEP], types 0
  through the first [SEP] and 1 after it (Devlin et al. 2019, section 3, figure 2:
  segments A and B), with the tokenizer's `cls_id` and `sep_id` (<eos> for ours)."""
  ids = [tokenizer.cls_id, *a, tokenizer.sep_id, *b, tokenizer.sep_id]
  return ids, [0] * (len(a) + 2) + [1] * (len(b) + 1)


class Overflow:
  """Applies config.data.overflow to examples longer than the row, and counts."""

  def __init__(self, policy: str, seq_len: int, streamed: bool = False):
    self.policy, self.seq_len, self.streamed = policy, seq_len, streamed
    self.dropped = self.truncated = 0

  def fit(self, ids: list, where: str, reserve: int = 0) -> Optional[list]:
    """ids cut to seq_len - reserve, None (drop), or a DataError."""
    limit = self.seq_len - reserve
    if len(ids) <= limit:
      return ids
    return ids[:limit] if self._over(len(ids) + reserve, where) else None

  def fit_pair(self, a: list, b: list, where: str) -> Optional[tuple]:
    """(a, b) cut so that [CLS] a [SEP] b [SEP] fits the row, None (drop), or a
    DataError. Truncation takes the last token off the longer of the two until
    the pair fits, as BERT's fine-tuning code does (`_truncate_seq_pair`)."""
    limit = self.seq_len - PAIR_SPECIALS
    if len(a) + len(b) <= limit:
      return a, b
    if not self._over(len(a) + len(b) + PAIR_SPECIALS, where):
      return None
    a, b = list(a), list(b)
    while len(a) + len(b) > limit:
      (a if len(a) > len(b) else b).pop()
    return a, b

  def _over(self, tokens: int, where: str) -> bool:
    """Applies the policy to an example of `tokens` tokens, more than the row
    holds: raises (error), or counts it and says whether to cut it (truncate)."""
    if self.policy == 'error':
      raise DataError(f'{where}: example has {tokens} tokens, more than '
                      f'config.seq_len={self.seq_len}; raise seq_len or set '
                      'config.data.overflow=truncate or drop.')
    if self.policy == 'truncate':
      self.truncated += 1
    else:
      self.dropped += 1
    if self.streamed:  # counted as batches are read, so logged as it goes.
      logging.log_every_n_seconds(
          logging.WARNING, '%s: so far %d examples longer than seq_len=%d dropped, %d '
          'truncated (config.data.overflow=%s).', 60, where, self.dropped, self.seq_len,
          self.truncated, self.policy)
    return self.policy == 'truncate'

  def report(self, split: str) -> dict:
    if self.dropped or self.truncated:
      logging.warning('%s: %d examples longer than seq_len=%d dropped, %d truncated '
                      '(config.data.overflow=%s).', split, self.dropped, self.seq_len,
                      self.truncated, self.policy)
    return {f'{split}_dropped': self.dropped, f'{split}_truncated': self.truncated}


def make_example(raw, task: str, tokenizer, overflow: Overflow, where: str) -> Optional[dict]:
  """A raw example -> a dict of variable-length int32 arrays, or None when
  config.data.overflow=drop drops it.

  lm:       text -> inputs [<eos>, t1..tn], targets [t1..tn, <eos>]: <eos> both
            starts and ends a line, so every token is predicted.
  mlm:      text -> inputs [t1..tn] (masked per batch).
  classify: (text, label) -> inputs [t1..tn], targets label, weights 1; a
            sentence pair (a, b, label) -> inputs [CLS] a [SEP] b [SEP] and
            token_types (`pair_ids`), targets label, weights 1.
  seq2seq:  (source, target) -> inputs [s1..sm, <eos>], targets [t1..tn, <eos>]
            (the model shifts the targets right itself).
  <eos> is the tokenizer's (`tokenizer.eos_id`: GPT-2's <|endoftext|>).
  """
  eos = tokenizer.eos_id
  as_ids = lambda ids: np.asarray(ids, np.int32)
  if task in ('lm', 'mlm'):
    ids = overflow.fit(tokenizer.encode(raw), where, reserve=int(task == 'lm'))
    if ids is None:
      return None
    if task == 'mlm':
      return {'inputs': as_ids(ids)}
    return {'inputs': as_ids([eos] + ids), 'targets': as_ids(ids + [eos]),
            'weights': np.ones(len(ids) + 1, np.float32)}
  if task == 'classify' and len(raw) == 3:
    pair = overflow.fit_pair(tokenizer.encode(raw[0]), tokenizer.encode(raw[1]), where)
    if pair is None:
      return None
    ids, types = pair_ids(*pair, tokenizer)
    return {'inputs': as_ids(ids), 'token_types': as_ids(types), 'targets': np.int32(raw[2]),
            'weights': np.float32(1.0)}
  if task == 'classify':
    ids = overflow.fit(tokenizer.encode(raw[0]), where)
    if ids is None:
      return None
    return {'inputs': as_ids(ids), 'targets': np.int32(raw[1]), 'weights': np.float32(1.0)}
  source = overflow.fit(tokenizer.encode(raw[0]), where + ' (source)', reserve=1)
  target = overflow.fit(tokenizer.encode(raw[1]), where + ' (target)', reserve=1)
  if source is None or target is None:
    return None
  return {'inputs': as_ids(source + [eos]), 'targets': as_ids(target + [eos]),
          'weights': np.ones(len(target) + 1, np.float32)}


def make_examples(raw: list, encode: Callable, where) -> list:
  """Raw examples -> the dicts `encode(raw, where=...)` makes, dropped ones left out.
  `where` names the split ('<where> example <n>' in errors), or is a sequence
  naming each example (e.g. 'PATH:LINE')."""
  name = (lambda n: f'{where} example {n}') if isinstance(where, str) else where.__getitem__
  examples = (encode(ex, where=name(n)) for n, ex in enumerate(raw))
  return [ex for ex in examples if ex is not None]


class StreamedExamples(collections.abc.Sequence):
  """Examples of a random-access source (a TFDS data_source), read and
  encoded when a batch asks for them, so a split of millions of sentences
  never has to fit in memory. Element i is `encode(convert(record), where=...)`,
  or None for an example config.data.overflow=drop drops (counted and logged
  as read)."""

  def __init__(self, source, convert: Callable, encode: Callable, where: str,
               indices: Optional[np.ndarray] = None):
    self.source, self.convert, self.encode, self.where = source, convert, encode, where
    self.indices = np.arange(len(source)) if indices is None else indices

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    index = int(self.indices[i])
    return self.encode(self.convert(self.source[index]), where=f'{self.where} example {index}')


def bert_mask(tokens: np.ndarray, rng: np.random.Generator, vocab_size: int,
              rate: float = 0.15, rows: slice = slice(None), num_rows: int = 0,
              mask_id: int = tok_lib.MASK_ID,
              special_ids: tuple = tuple(range(tok_lib.NUM_SPECIALS))) -> dict:
  """BERT's corruption of real tokens [b, l] -> inputs, targets, weights [b, l].

  Each real token (not one of `special_ids`, padding among them) is chosen
  with probability `rate`; a chosen token becomes `mask_id` 80% of the time, a
  random token 10% (an id from NUM_SPECIALS up: for our tokenizers never a
  special one; for a checkpoint's, as BERT's own code, any id), and stays
  itself 10%. The loss is on the chosen positions only (weights 1 there). The random
  draws are made for a batch of num_rows rows (default b) of which `tokens`
  are `rows`, so a host masking its rows of a global batch masks them as one
  process masking the whole batch would.
  """
  shape = (num_rows or len(tokens),) + tokens.shape[1:]
  real = ~np.isin(tokens, special_ids)
  chosen = (rng.random(shape)[rows] < rate) & real
  action = rng.random(shape)[rows]
  random_ids = rng.integers(tok_lib.NUM_SPECIALS, vocab_size, shape, dtype=np.int32)[rows]
  inputs = np.where(chosen & (action < 0.8), mask_id, tokens)
  inputs = np.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
  return {'inputs': inputs.astype(np.int32), 'targets': tokens.astype(np.int32),
          'weights': chosen.astype(np.float32)}


def mlm_transform(seed: int, tokenizer, rate: float, batch_size: int):
  """(i, this host's rows of global batch i) -> those rows with `inputs`
  masked (with the tokenizer's mask id; its special ids are never chosen). The
  mask of global batch i is a function of (seed, i) only, drawn for all
  batch_size rows on every host (process_count() times the draws of its own
  rows), so resume and eval are reproducible and the hosts' masks together are
  the one-process mask. The generator is seeded by (seed, i, 0):
  the 0 keeps the masks one-process runs drew before hosts shared them."""
  rows = batching.host_rows(batch_size)
  vocab_size, mask_id, special_ids = (tokenizer.vocab_size, tokenizer.mask_id,
                                      tokenizer.special_ids)

  def transform(index, batch):
    rng = np.random.default_rng([seed, index, 0])
    return {**batch, **bert_mask(batch['inputs'], rng, vocab_size, rate, rows, batch_size,
                                 mask_id, special_ids)}
  return transform


# ----------------------------------------------------------------------------
# Images.


def image_example(raw, scale: float) -> dict:
  """(image [H, W, C] of values 0..scale, label) -> inputs float32 [H, W, C] in
  [0, 1], targets the label, weights 1 (a batch's keys: batch.py)."""
  image, label = raw
  return {'inputs': np.asarray(image, np.float32) / np.float32(scale),
          'targets': np.int32(label), 'weights': np.float32(1.0)}


def random_crop_flip(images: np.ndarray, rng: np.random.Generator, pad: int,
                     rows: slice = slice(None), num_rows: int = 0) -> np.ndarray:
  """The standard CIFAR augmentation (He et al. 2016, section 4.2), images
  [b, H, W, C] -> the same shape: each image zero-padded by `pad` pixels on
  every side, a random H x W crop of that taken, and flipped left to right with
  probability 1/2. The draws are made for a batch of num_rows rows (default b)
  of which `images` are `rows`, as `bert_mask`'s."""
  b, h, w, _ = images.shape
  n = num_rows or b
  offsets = rng.integers(0, 2 * pad + 1, (n, 2))[rows]  # [b, 2] top, left of the crop.
  flips = (rng.random(n) < 0.5)[rows]
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = np.empty_like(images)
  for i, ((top, left), flip) in enumerate(zip(offsets, flips)):
    crop = padded[i, top:top + h, left:left + w]
    out[i] = crop[:, ::-1] if flip else crop
  return out


def augment_transform(seed: int, batch_size: int, pad: int = 4):
  """(i, this host's rows of global batch i) -> those rows with their images
  augmented (`random_crop_flip`). As `mlm_transform`'s masks, the draws of
  global batch i are a function of (seed, i) only, so a resumed run augments
  exactly as the uninterrupted one and hosts together augment as one process."""
  rows = batching.host_rows(batch_size)

  def transform(index, batch):
    rng = np.random.default_rng([seed, index, 1])
    return {**batch, 'inputs': random_crop_flip(batch['inputs'], rng, pad, rows, batch_size)}
  return transform


# ----------------------------------------------------------------------------
# From raw examples to train and eval batches.


def eval_dataset(config, encode: Callable, eval_raw: list, tokenizer, batch_size: int,
                 where: str, locations: Optional[list] = None) -> tuple:
  """(eval rows, info): `eval_raw` encoded by the recipe's `encode(raw,
  overflow=, where=)` and padded into batches (the last one with weights 0);
  mlm rows masked with seed config.seed + 1. The eval half of
  `example_datasets`, and all that --mode=eval builds. `locations` name each
  raw example in errors instead of its index.

  Raises:
    DataError: no example is left after config.data.overflow.
  """
  d, seq_len = config.data, config.seq_len
  overflow = Overflow(d.overflow, seq_len)
  evals = make_examples(eval_raw, functools.partial(encode, overflow=overflow),
                        locations or f'{where} eval')
  if not evals:
    raise DataError(f'{where}: no eval examples left after config.data.overflow={d.overflow}; '
                    'raise config.seq_len.')
  transform = (mlm_transform(config.seed + 1, tokenizer, d.mask_rate, batch_size)
               if d.task == 'mlm' else None)
  eval_ds = batching.ArrayEval(batching.pad_rows(evals, seq_len), batch_size, transform)
  return eval_ds, {'eval_examples': len(evals), **overflow.report('eval')}


def example_datasets(config, encode: Callable, train, eval_raw, tokenizer,
                     batch_size: int, where: str, augment: Optional[Callable] = None,
                     locations: Optional[tuple] = None):
  """(train dataset, eval rows, info). `train` is a list of raw examples
  (encoded here) or StreamedExamples (encoded as batches are read);
  `eval_raw` a list of raw examples; `encode(raw, overflow=, where=)` the
  recipe's encode; `augment(batch index, rows)` changes train batches only
  (image augmentation: `augment_transform`); `locations` (train, eval) name
  each raw example in errors (e.g. 'PATH:LINE') instead of its split and index."""
  d, task, seq_len = config.data, config.data.task, config.seq_len
  info = {}
  if isinstance(train, list):
    train_overflow = Overflow(d.overflow, seq_len)
    train = make_examples(train, functools.partial(encode, overflow=train_overflow),
                          locations[0] if locations else f'{where} train')
    info.update(train_overflow.report('train'))
  elif task == 'seq2seq' and d.bucketing and not d.packing:
    raise config_lib.ConfigError(
        f'config.data.bucketing needs every example\'s length up front, which the streamed '
        f'{where} train split does not give; set config.data.packing=True or bucketing=False.')
  if not len(train):
    raise DataError(f'{where}: no train examples left after config.data.overflow={d.overflow}; '
                    'raise config.seq_len.')
  eval_ds, eval_info = eval_dataset(config, encode, eval_raw, tokenizer, batch_size, where,
                                    locations[1] if locations else None)
  info.update({'train_examples': len(train), **eval_info})
  transform = (mlm_transform(config.seed, tokenizer, d.mask_rate, batch_size)
               if task == 'mlm' else augment)
  options = batching.grain_read_options(config)
  if d.packing:
    train_ds = batching.packed_train(train, task, seq_len, batch_size, config.seed, options,
                                     transform)
  elif task == 'seq2seq' and d.bucketing:
    train_ds = batching.bucketed_train(train, seq_len, batch_size, config.seed, options)
  else:
    train_ds = batching.array_train(train, seq_len, batch_size, config.seed, options, transform)
  if task == 'lm':  # streamed: estimated on up to 100,000 examples spread over the split.
    sample = train if isinstance(train, list) else [
        train[i] for i in np.linspace(0, len(train) - 1, min(len(train), 100_000)).astype(int)]
    info['unigram_entropy'] = tok_lib.unigram_entropy(
        np.concatenate([ex['targets'] for ex in sample if ex is not None]))
  return train_ds, eval_ds, info
