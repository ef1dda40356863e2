"""Batches for the train and eval steps: deterministic, resumable, per host.

`create_datasets(config, workdir)` is the one entry point. It returns

  tokenizer  encode/decode, vocab_size, pad_id = 0 (tokenizers.py).
  train      an infinite grain iterator of global batches (numpy dicts, the
             batch contract in CONTEXT.md). Shuffling is seeded by
             config.seed; the iterator's position is saved with
             grain.checkpoint.CheckpointSave(train) inside an Orbax Composite
             and restored with CheckpointRestore, after which it yields
             exactly the batch the saved run would have seen next.
  eval()     a fresh, finite, deterministic iterable over the full eval split;
             the last batch is padded with weights 0, nothing is dropped.
  info       split sizes, 'unigram_entropy' (nats/token on train, LM tasks).

Multi-host: every host computes the same global order of example indices and
keeps its own rows (`_host_rows`), so hosts never overlap and the union over
hosts is the global batch.
"""

import dataclasses
import functools
import math
import os
import tempfile
import time
from typing import Callable, Iterable, Optional

from absl import logging
import grain
import jax
import numpy as np

from transformer_jax import config as config_lib
from transformer_jax.data import sources
from transformer_jax.data import tokenizers as tok_lib

ConfigError = config_lib.ConfigError


@dataclasses.dataclass
class Datasets:
  tokenizer: tok_lib.Tokenizer
  train: grain.DatasetIterator
  eval: Callable[[], Iterable[dict]]
  info: dict


# ----------------------------------------------------------------------------
# Batch sizes and hosts.


def global_batch_size(config, num_devices: Optional[int] = None) -> int:
  """config.batch_size, checked against the device count.

  A batch that does not split evenly over devices is an error unless
  config.data.uneven_batch = 'drop', which lowers it to the nearest multiple
  (and logs that it did).
  """
  n = num_devices or jax.device_count()
  b = config.batch_size
  if b % n == 0:
    return b
  if config.data.uneven_batch == 'drop':
    if b < n:
      raise ConfigError(f'config.batch_size={b} is smaller than the {n} devices; '
                        f'set it to a multiple of {n}.')
    logging.warning('config.batch_size=%d does not split over %d devices; using %d '
                    '(config.data.uneven_batch=drop).', b, n, b - b % n)
    return b - b % n
  raise ConfigError(f'config.batch_size={b} does not split over {n} devices; set it to a '
                    f'multiple of {n} or config.data.uneven_batch=drop.')


def _host_rows(batch_size: int) -> slice:
  """This host's rows of a global batch."""
  count, index = jax.process_count(), jax.process_index()
  if batch_size % count:
    raise ConfigError(f'config.batch_size={batch_size} does not split over {count} hosts; '
                      f'set it to a multiple of {count}.')
  per_host = batch_size // count
  return slice(index * per_host, (index + 1) * per_host)


def _read_options(config):
  return grain.ReadOptions(num_threads=config.data.num_threads,
                           prefetch_buffer_size=config.data.prefetch)


# ----------------------------------------------------------------------------
# Causal LM on one long token stream (Shakespeare): nanoGPT-style windows.


def _lm_windows(offsets, tokens, seq_len):
  """Windows tokens[o : o+L+1] -> inputs [b, L], targets (shifted by one) [b, L]."""
  window = tokens[offsets[:, None] + np.arange(seq_len + 1)]  # [b, L+1]
  return {'inputs': window[:, :-1], 'targets': window[:, 1:],
          'weights': np.ones((len(offsets), seq_len), np.float32)}


def stream_lm_train(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int,
                    read_options=None) -> grain.IterDataset:
  """Random windows of the training stream, each start offset once per epoch.

  The offsets 0..n-L-1 are shuffled lazily (grain's index shuffle, reseeded
  every epoch), so the state is one integer and resume is exact.
  """
  num_windows = len(tokens) - seq_len
  if num_windows < batch_size:
    raise ConfigError(f'The training split has {len(tokens)} tokens, too few for '
                      f'{batch_size} windows of config.seq_len={seq_len}; lower them.')
  rows = _host_rows(batch_size)
  ds = (grain.MapDataset.range(num_windows).shuffle(seed=seed).repeat()
        .batch(batch_size, drop_remainder=True)
        .map(lambda offsets: _lm_windows(offsets[rows], tokens, seq_len)))
  return ds.to_iter_dataset(read_options)


def stream_lm_eval(tokens: np.ndarray, seq_len: int, batch_size: int) -> Iterable[dict]:
  """Non-overlapping windows covering every token of the stream as a target.

  Window i predicts tokens[i*L+1 : i*L+L+1]; the last window is shorter and
  padded (weights 0), as are the rows that fill the last batch.
  """
  num_targets = len(tokens) - 1
  num_windows = math.ceil(num_targets / seq_len)
  padded = np.zeros(num_windows * seq_len + 1, np.int32)
  padded[:len(tokens)] = tokens
  weights = np.zeros(num_windows * seq_len, np.float32)
  weights[:num_targets] = 1.0
  examples = {'inputs': padded[:-1].reshape(num_windows, seq_len),
              'targets': padded[1:].reshape(num_windows, seq_len),
              'weights': weights.reshape(num_windows, seq_len)}
  return ArrayEval(examples, batch_size)


# ----------------------------------------------------------------------------
# Eval over in-memory example arrays.


class ArrayEval:
  """Iterable of padded batches over arrays [N, ...]; every call starts afresh.

  The last batch is filled with all-zero rows (weights 0), so every batch has
  the global shape and every example is seen exactly once.
  """

  def __init__(self, examples: dict, batch_size: int):
    self.examples = examples
    self.batch_size = batch_size
    self.num_examples = len(next(iter(examples.values())))
    self.rows = _host_rows(batch_size)

  def __len__(self):
    return math.ceil(self.num_examples / self.batch_size)

  def __iter__(self):
    for start in range(0, self.num_examples, self.batch_size):
      batch = {}
      for k, v in self.examples.items():
        chunk = v[start:start + self.batch_size]
        if len(chunk) < self.batch_size:
          fill = np.zeros((self.batch_size - len(chunk),) + v.shape[1:], v.dtype)
          chunk = np.concatenate([chunk, fill])
        batch[k] = chunk[self.rows]
      yield batch


# ----------------------------------------------------------------------------
# Tokenizers for a config.


def _cache_dir(workdir: Optional[str]) -> str:
  return workdir or os.path.join(tempfile.gettempdir(), 'transformer_jax')


def make_tokenizer(config, workdir, train_text_fn: Callable[[], Iterable[str]],
                   key: str) -> tok_lib.Tokenizer:
  """The tokenizer config.data.tokenizer names, built from the training split.

  `train_text_fn()` yields the training text (lines or one string); `key`
  names the dataset so cached SentencePiece models are never mixed up.
  """
  d = config.data
  if d.tokenizer == 'char':
    chars = set()
    for piece in train_text_fn():
      chars.update(piece)
    return tok_lib.CharTokenizer(chars)
  if d.tokenizer == 'byte':
    return tok_lib.ByteTokenizer()
  if d.tokenizer == 'sentencepiece':
    def lines():
      for piece in train_text_fn():
        yield from piece.split('\n')
    return tok_lib.load_or_train_sentencepiece(
        lines, _cache_dir(workdir), key, d.vocab_size, d.spm_model_type)
  raise ConfigError(f'config.data.tokenizer={d.tokenizer!r} is unknown; use one of '
                    f'{TOKENIZERS}.')


TOKENIZERS = ('char', 'byte', 'sentencepiece')


def _check_vocab(config, tokenizer):
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ConfigError(
        f'config.model.vocab_size={config.model.vocab_size} is smaller than the '
        f'{tokenizer.name} tokenizer\'s {tokenizer.vocab_size} ids; set '
        f'config.model.vocab_size={tokenizer.vocab_size} or more.')


# ----------------------------------------------------------------------------
# Datasets.


def _shakespeare(config, workdir, batch_size):
  train_text, eval_text = sources.shakespeare_split()
  tokenizer = make_tokenizer(config, workdir, lambda: [train_text], 'shakespeare')
  _check_vocab(config, tokenizer)
  task, seq_len = config.data.task, config.seq_len
  if task == 'lm':
    train_tokens = tokenizer.encode_array(train_text)
    eval_tokens = tokenizer.encode_array(eval_text)
    train = stream_lm_train(train_tokens, seq_len, batch_size, config.seed,
                            _read_options(config))
    eval_ds = stream_lm_eval(eval_tokens, seq_len, batch_size)
    info = {'train_tokens': len(train_tokens), 'eval_tokens': len(eval_tokens),
            'train_chars': len(train_text), 'eval_chars': len(eval_text),
            'eval_examples': eval_ds.num_examples,
            'unigram_entropy': tok_lib.unigram_entropy(train_tokens)}
    return tokenizer, train, eval_ds, info
  raise ConfigError(f'config.data.task={task!r} is not available for shakespeare; '
                    'use lm, mlm or classify.')


def create_datasets(config, workdir: Optional[str] = None) -> Datasets:
  """Tokenizer, train iterator, eval() and info for `config` (see module doc)."""
  d = config.data
  batch_size = global_batch_size(config)
  if d.name == 'shakespeare':
    tokenizer, train_ds, eval_ds, info = _shakespeare(config, workdir, batch_size)
  elif not d.name:
    raise ConfigError('config.data.name is empty; set it to shakespeare, cmudict, '
                      'tfds:<name> or text.')
  else:
    raise ConfigError(f'config.data.name={d.name!r} is unknown; use shakespeare, cmudict, '
                      'tfds:<name> (e.g. tfds:wmt14_translate/de-en) or text.')
  info.update(batch_size=batch_size, vocab_size=tokenizer.vocab_size,
              tokenizer=tokenizer.name)
  return Datasets(tokenizer=tokenizer, train=iter(train_ds), eval=lambda: eval_ds,
                  info=info)


# ----------------------------------------------------------------------------
# Measuring the input pipeline from the train loop.


class TimedIterator:
  """Wraps an iterator and accumulates the seconds spent in next().

  The train loop reads `wait_fraction(step_seconds)` (or `pop_wait()`) to
  report the share of step time spent waiting on data; `iterator` stays the
  grain iterator to checkpoint.
  """

  def __init__(self, iterator):
    self.iterator = iterator
    self.wait_seconds = 0.0

  def __iter__(self):
    return self

  def __next__(self):
    start = time.perf_counter()
    batch = next(self.iterator)
    self.wait_seconds += time.perf_counter() - start
    return batch

  def pop_wait(self) -> float:
    """Seconds waited since the last call."""
    wait, self.wait_seconds = self.wait_seconds, 0.0
    return wait
