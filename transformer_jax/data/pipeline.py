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

Rows are built three ways: windows of one long token stream (Shakespeare LM
and MLM, nanoGPT-style), padded examples (optionally length-bucketed for
seq2seq), or several examples packed into one row with segment ids and
per-example positions (config.data.packing). Eval rows are always padded to
config.seq_len, one example per row.

Examples are held in memory, except a TFDS train split: it is streamed
(StreamedExamples over tfds.data_source, tokenized batch by batch), so
WMT14's 4.5M pairs or lm1b's 30M sentences need no more memory than a batch.

Multi-host: every host computes the same global order and keeps its own rows
(`_host_rows`) or its own shard of the examples (packing), so hosts never
overlap and the union over hosts is the global batch.
"""

import collections.abc
import dataclasses
import functools
import math
import os
import sys
import tempfile
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
  """config.global_batch_size on this run's devices, logged when uneven_batch=drop lowered it."""
  n = num_devices or jax.device_count()
  b = config_lib.global_batch_size(config, n)
  if b != config.batch_size:
    logging.warning('config.batch_size=%d does not split over %d devices; using %d '
                    '(config.data.uneven_batch=drop).', config.batch_size, n, b)
  return b


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
# BERT masking.


def bert_mask(tokens: np.ndarray, rng: np.random.Generator, vocab_size: int,
              rate: float = 0.15) -> dict:
  """BERT's corruption of real tokens [b, l] -> inputs, targets, weights [b, l].

  Each real token is chosen with probability `rate`; a chosen token becomes
  <mask> 80% of the time, a random non-special token 10%, and stays itself
  10%. The loss is on the chosen positions only (weights 1 there).
  """
  real = tokens >= tok_lib.NUM_SPECIALS
  chosen = (rng.random(tokens.shape) < rate) & real
  action = rng.random(tokens.shape)
  random_ids = rng.integers(tok_lib.NUM_SPECIALS, vocab_size, tokens.shape, dtype=np.int32)
  inputs = np.where(chosen & (action < 0.8), tok_lib.MASK_ID, tokens)
  inputs = np.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
  return {'inputs': inputs.astype(np.int32), 'targets': tokens.astype(np.int32),
          'weights': chosen.astype(np.float32)}


def _mlm_transform(seed: int, vocab_size: int, rate: float):
  """(index, batch) -> batch with `inputs` masked; the mask of batch i is a
  function of (seed, i, host) only, so resume and eval are reproducible."""
  def transform(index, batch):
    rng = np.random.default_rng([seed, index, jax.process_index()])
    return {**batch, **bert_mask(batch['inputs'], rng, vocab_size, rate)}
  return transform


# ----------------------------------------------------------------------------
# Seeded epochs of index batches.


class _EpochCache:
  """epoch -> compute(epoch), keeping the last two epochs; safe to share
  between reader threads (the dict is replaced, never changed in place), and
  threads straddling an epoch boundary do not recompute each other's epoch."""

  def __init__(self, compute: Callable):
    self._compute, self._items = compute, {}

  def __call__(self, epoch: int):
    value = self._items.get(epoch)
    if value is None:
      value = self._compute(epoch)
      items = {e: v for e, v in dict(self._items).items() if e >= epoch - 1}
      items[epoch] = value
      self._items = items
    return value


class ShuffledBatches(grain.MapDataset):
  """Element i: the i-th batch of item indices [batch_size] of an endless
  sequence of epochs, each a fresh permutation seeded by (seed, epoch).

  Whole batches are cut from one numpy permutation per epoch, which is ~10x
  faster than shuffling and batching element by element; the items left over
  at the end of an epoch differ from epoch to epoch, so none is always
  skipped. The iterator state is the batch index alone, so resume is exact.
  """

  def __init__(self, num_items: int, batch_size: int, seed: int):
    super().__init__()
    self._num_items, self._batch_size = num_items, batch_size
    self._per_epoch = num_items // batch_size
    self._permutation = _EpochCache(
        lambda epoch: np.random.default_rng([seed, epoch]).permutation(num_items).astype(np.int32))

  def __len__(self):
    return sys.maxsize

  def __str__(self):
    return f'ShuffledBatches(num_items={self._num_items}, batch_size={self._batch_size})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, i = divmod(index, self._per_epoch)
    return self._permutation(epoch)[i * self._batch_size:(i + 1) * self._batch_size]


# ----------------------------------------------------------------------------
# One long token stream (Shakespeare): nanoGPT-style windows.


def _windows(offsets, tokens, seq_len, shift):
  """Windows of `tokens` at `offsets` [b] -> rows [b, L].

  shift (causal LM): inputs tokens[o:o+L], targets tokens[o+1:o+L+1].
  no shift (MLM): inputs tokens[o:o+L]; the masking fills in the rest.
  """
  window = tokens[offsets[:, None] + np.arange(seq_len + shift)]  # [b, L+shift]
  if not shift:
    return {'inputs': window}
  return {'inputs': window[:, :-1], 'targets': window[:, 1:],
          'weights': np.ones((len(offsets), seq_len), np.float32)}


def stream_train(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int,
                 read_options=None, shift: bool = True, transform=None) -> grain.IterDataset:
  """Random windows of the training stream, each start offset once per epoch."""
  num_windows = len(tokens) - seq_len - shift + 1
  if num_windows < batch_size:
    raise ConfigError(f'The training split has {len(tokens)} tokens, too few for '
                      f'{batch_size} windows of config.seq_len={seq_len}; lower them.')
  rows = _host_rows(batch_size)
  ds = ShuffledBatches(num_windows, batch_size, seed).map(
      lambda offsets: _windows(offsets[rows], tokens, seq_len, shift))
  if transform:
    ds = ds.map_with_index(transform)
  return ds.to_iter_dataset(read_options)


def stream_eval_rows(tokens: np.ndarray, seq_len: int, shift: bool = True) -> dict:
  """Non-overlapping windows covering the stream: arrays [N, L].

  Causal LM: window i predicts tokens[i*L+1 : i*L+L+1], so every token but
  the first is a target exactly once. The last window is padded (weights 0).
  """
  num = len(tokens) - shift
  num_windows = math.ceil(num / seq_len)
  padded = np.zeros(num_windows * seq_len + shift, np.int32)
  padded[:len(tokens)] = tokens
  if not shift:
    return {'inputs': padded.reshape(num_windows, seq_len)}
  weights = np.zeros(num_windows * seq_len, np.float32)
  weights[:num] = 1.0
  return {'inputs': padded[:-1].reshape(num_windows, seq_len),
          'targets': padded[1:].reshape(num_windows, seq_len),
          'weights': weights.reshape(num_windows, seq_len)}


# ----------------------------------------------------------------------------
# Examples: tokenized, fitted to the length, padded, bucketed or packed.


class Overflow:
  """Applies config.data.overflow to examples longer than the row, and counts."""

  def __init__(self, policy: str, seq_len: int, streamed: bool = False):
    self.policy, self.seq_len, self.streamed = policy, seq_len, streamed
    self.dropped = self.truncated = 0

  def fit(self, ids: list, where: str, reserve: int = 0) -> Optional[list]:
    """ids cut to seq_len - reserve, None (drop), or a ValueError."""
    limit = self.seq_len - reserve
    if len(ids) <= limit:
      return ids
    if self.policy == 'error':
      raise ValueError(f'{where}: example has {len(ids) + reserve} tokens, more than '
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
    return ids[:limit] if self.policy == 'truncate' else None

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
  classify: (text, label) -> inputs [t1..tn], targets label, weights 1.
  seq2seq:  (source, target) -> inputs [s1..sm, <eos>], targets [t1..tn, <eos>]
            (the model shifts the targets right itself).
  """
  eos = tok_lib.EOS_ID
  as_ids = lambda ids: np.asarray(ids, np.int32)
  if task in ('lm', 'mlm'):
    ids = overflow.fit(tokenizer.encode(raw), where, reserve=int(task == 'lm'))
    if ids is None:
      return None
    if task == 'mlm':
      return {'inputs': as_ids(ids)}
    return {'inputs': as_ids([eos] + ids), 'targets': as_ids(ids + [eos]),
            'weights': np.ones(len(ids) + 1, np.float32)}
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


def make_examples(raw: list, task: str, tokenizer, overflow: Overflow, where: str) -> list:
  """Raw examples -> the dicts make_example makes, dropped ones left out."""
  examples = (make_example(ex, task, tokenizer, overflow, f'{where} example {n}')
              for n, ex in enumerate(raw))
  return [ex for ex in examples if ex is not None]


class StreamedExamples(collections.abc.Sequence):
  """Examples of a random-access source (a TFDS data_source), read and
  tokenized when a batch asks for them, so a split of millions of sentences
  never has to fit in memory. Element i is make_example's dict, or None for
  an example config.data.overflow=drop drops (counted and logged as read)."""

  def __init__(self, source, convert: Callable, task: str, tokenizer, overflow: Overflow,
               where: str, indices: Optional[np.ndarray] = None):
    self.source, self.convert, self.task = source, convert, task
    self.tokenizer, self.overflow, self.where = tokenizer, overflow, where
    self.indices = np.arange(len(source)) if indices is None else indices

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    if isinstance(i, slice):  # a view, e.g. this host's shard.
      return StreamedExamples(self.source, self.convert, self.task, self.tokenizer,
                              self.overflow, self.where, self.indices[i])
    index = int(self.indices[i])
    return make_example(self.convert(self.source[index]), self.task, self.tokenizer,
                        self.overflow, f'{self.where} example {index}')


def pad_rows(examples: list, length: int) -> dict:
  """Examples -> arrays: sequences [N, length] zero-padded, scalars [N]. A None
  (a dropped streamed example) becomes an all-zero row, weight 0."""
  template = next((ex for ex in examples if ex is not None), None)
  if template is None:
    return {}
  rows = {}
  for key, first in template.items():
    if np.ndim(first) == 0:
      rows[key] = np.asarray([0 if ex is None else ex[key] for ex in examples],
                             dtype=np.asarray(first).dtype)
    else:
      out = np.zeros((len(examples), length), first.dtype)
      for i, ex in enumerate(examples):
        if ex is not None:
          out[i, :len(ex[key])] = ex[key]
      rows[key] = out
  return rows


def array_train(examples, seq_len: int, batch_size: int, seed: int, read_options=None,
                transform=None) -> grain.IterDataset:
  """Random batches of examples (a list or StreamedExamples) padded to seq_len,
  each example once per epoch."""
  num = len(examples)
  if num < batch_size:
    raise ConfigError(f'The training split has {num} examples, fewer than '
                      f'config.batch_size={batch_size}; lower the batch size.')
  host = _host_rows(batch_size)
  ds = ShuffledBatches(num, batch_size, seed).map(
      lambda idx: pad_rows([examples[i] for i in idx[host]], seq_len))
  if transform:
    ds = ds.map_with_index(transform)
  return ds.to_iter_dataset(read_options)


def bucket_boundaries(seq_len: int, smallest: int = 8) -> list:
  """Row lengths for length bucketing: powers of two below seq_len, then seq_len."""
  bounds = []
  b = smallest
  while b < seq_len:
    bounds.append(b)
    b *= 2
  return bounds + [seq_len]


class BucketBatches(grain.MapDataset):
  """Batches of example indices of similar length, reshuffled every epoch.

  Element i is (row length, indices [batch_size]). Each epoch shuffles every
  bucket, cuts it into full batches and shuffles the batch order; the examples
  left over in a bucket differ from epoch to epoch, so none is always skipped.
  The epoch length is fixed (sum over buckets of size // batch_size), so the
  element index alone says where in which epoch a run is.
  """

  def __init__(self, lengths: np.ndarray, boundaries: list, batch_size: int, seed: int):
    super().__init__()
    bucket = np.searchsorted(boundaries, lengths)
    self._buckets = [np.flatnonzero(bucket == i) for i in range(len(boundaries))]
    self._boundaries, self._batch_size, self._seed = boundaries, batch_size, seed
    self._per_epoch = sum(len(b) // batch_size for b in self._buckets)
    if not self._per_epoch:
      raise ConfigError(f'No length bucket holds config.batch_size={batch_size} examples; '
                        'lower the batch size or set config.data.bucketing=False.')
    self._epoch = _EpochCache(self._batches)

  def __len__(self):
    return sys.maxsize

  def __str__(self):
    return f'BucketBatches(boundaries={self._boundaries})'

  def _batches(self, epoch: int) -> list:
    rng = np.random.default_rng([self._seed, epoch])
    batches = []
    for length, members in zip(self._boundaries, self._buckets):
      members = rng.permutation(members)
      for j in range(len(members) // self._batch_size):
        batches.append((length, members[j * self._batch_size:(j + 1) * self._batch_size]))
    return [batches[k] for k in rng.permutation(len(batches))]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, i = divmod(index, self._per_epoch)
    return self._epoch(epoch)[i]


def bucketed_train(examples: list, seq_len: int, batch_size: int, seed: int,
                   read_options=None) -> grain.IterDataset:
  """Seq2seq batches whose rows are padded only to their bucket's length."""
  lengths = np.asarray([max(len(ex['inputs']), len(ex['targets'])) for ex in examples])
  host = _host_rows(batch_size)
  ds = BucketBatches(lengths, bucket_boundaries(seq_len), batch_size, seed).map(
      lambda item: pad_rows([examples[i] for i in item[1][host]], item[0]))
  return ds.to_iter_dataset(read_options)


# task -> {side: features laid out along it}; each side gets its own segment
# ids and positions (named as in the batch contract).
PACKED_SIDES = {
    'lm': {'inputs': ('inputs', 'targets', 'weights')},
    'mlm': {'inputs': ('inputs',)},
    'seq2seq': {'inputs': ('inputs',), 'targets': ('targets', 'weights')},
}


def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> list:
  """Bins of item indices: items placed longest first into the bin with the
  least room that still holds them; within a few % of the fewest bins for
  the short examples packing is for. Bins are kept by their room, so each
  placement costs a few Python steps, not a scan of the bins."""
  lengths = lengths.tolist()
  by_room = [[] for _ in range(capacity + 1)]
  bins = []
  for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
    need = lengths[i]
    for room in range(need, capacity + 1):
      if by_room[room]:
        b = by_room[room].pop()
        break
    else:
      b, room = len(bins), capacity
      bins.append([])
    bins[b].append(i)
    by_room[room - need].append(b)
  return bins


class PackedBatches(grain.MapDataset):
  """Element i: the i-th batch of packed rows [batch_size, seq_len] of an
  endless sequence of epochs.

  Batch i takes the i-th group of `per_batch` examples of a seeded per-epoch
  permutation (ShuffledBatches) and packs them into the rows with
  best-fit-decreasing (a seq2seq example takes the longer of its two sides on
  both). Rows carry segment ids (1, 2, ... per example, 0 = padding) and
  positions restarting at 0 per example. Every batch is packed on its own, so
  the cost is even across steps, resume is O(1) and `examples` may be a
  StreamedExamples that tokenizes only the group at hand. `per_batch` is the
  largest count that fills ~90% of the rows and fits in sampled batches; an
  example that still does not fit is left out of that batch (it is back, in
  another group, next epoch) and logged.
  """

  def __init__(self, examples, task: str, seq_len: int, batch_size: int, seed: int):
    super().__init__()
    self._examples, self._seq_len, self._batch_size = examples, seq_len, batch_size
    self._sides = PACKED_SIDES[task]
    # In memory every example's size is known; streamed, a sample's.
    self._size = None
    if isinstance(examples, list):
      self._size = np.asarray([self._size_of(ex) for ex in examples])
    self.per_batch = self._examples_per_batch(seed)
    self._groups = ShuffledBatches(len(examples), self.per_batch, seed)

  def _size_of(self, example) -> int:
    """Row tokens an example takes (0 for a dropped streamed example)."""
    return 0 if example is None else max(len(example[side]) for side in self._sides)

  def _examples_per_batch(self, seed: int) -> int:
    num, rows = len(self._examples), self._batch_size
    if num < rows:
      raise ConfigError(f'The training split has {num} examples, fewer than '
                        f'config.batch_size={rows}; lower the batch size.')
    rng = np.random.default_rng(seed)
    sizes = self._size  # streamed: the sizes of 10,000 examples, read once.
    if sizes is None:
      picked = rng.choice(num, min(num, 10_000), replace=False)
      sizes = np.asarray([self._size_of(self._examples[i]) for i in picked])
    per_batch = min(num, max(rows, int(0.9 * rows * self._seq_len / max(1.0, sizes.mean()))))
    while per_batch > rows:
      samples = [sizes[rng.choice(len(sizes), per_batch, replace=per_batch > len(sizes))]
                 for _ in range(8)]
      if all(len(best_fit_decreasing(s, self._seq_len)) <= rows for s in samples):
        break
      per_batch = max(rows, int(per_batch * 0.95))
    return per_batch

  def __len__(self):
    return sys.maxsize

  def __str__(self):
    return f'PackedBatches(examples={len(self._examples)}, per_batch={self.per_batch})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    examples = [self._examples[i] for i in self._groups[index]]
    examples = [ex for ex in examples if ex is not None]
    sizes = np.asarray([self._size_of(ex) for ex in examples])
    rows = [[examples[i] for i in row] for row in best_fit_decreasing(sizes, self._seq_len)]
    if len(rows) > self._batch_size:
      left_out = sum(len(r) for r in rows[self._batch_size:])
      logging.log_every_n_seconds(
          logging.WARNING, 'Packing: %d of %d examples did not fit batch %d; they are in '
          'another batch next epoch.', 60, left_out, len(examples), index)
      rows = rows[:self._batch_size]
    return self._assemble(rows)

  def _assemble(self, rows: list) -> dict:
    """Rows of examples -> the packed batch [batch_size, seq_len] (rows past
    len(rows) are padding), with one concatenation per feature and numpy
    scatters, not a Python step per token."""
    members = [ex for row in rows for ex in row]  # [m] examples in row order.
    counts = np.asarray([len(r) for r in rows])
    row_of = np.repeat(np.arange(len(rows)), counts)  # [m]
    first = np.cumsum(counts) - counts  # [rows] each row's first member.
    segment = np.arange(len(members)) - first[row_of] + 1  # [m] 1, 2, ... within a row.
    shape = (self._batch_size, self._seq_len)
    batch = {}
    for side, features in self._sides.items():
      lengths = np.asarray([len(ex[side]) for ex in members])  # [m]
      start = np.cumsum(lengths) - lengths  # [m] where each member starts, end to end.
      column_start = start - start[first[row_of]]  # [m] ... and within its row.
      token_member = np.repeat(np.arange(len(members)), lengths)  # [t]
      position = np.arange(lengths.sum()) - start[token_member]  # [t]
      row = row_of[token_member]
      column = column_start[token_member] + position
      for k in features:
        batch[k] = np.zeros(shape, members[0][k].dtype)
        batch[k][row, column] = np.concatenate([ex[k] for ex in members])
      prefix = '' if len(self._sides) == 1 else side + '_'
      batch[prefix + 'segment_ids'] = np.zeros(shape, np.int32)
      batch[prefix + 'segment_ids'][row, column] = segment[token_member]
      batch[prefix + 'positions'] = np.zeros(shape, np.int32)
      batch[prefix + 'positions'][row, column] = position
    return batch


def packed_train(examples, task: str, seq_len: int, batch_size: int, seed: int,
                 read_options=None, transform=None) -> grain.IterDataset:
  """Several shuffled examples per row (PackedBatches); each host packs its
  own shard of the examples (a list or StreamedExamples) into its own rows."""
  host = _host_rows(batch_size)
  shard = examples[jax.process_index()::jax.process_count()]
  ds = PackedBatches(shard, task, seq_len, host.stop - host.start, seed)
  if transform:
    ds = ds.map_with_index(transform)
  return ds.to_iter_dataset(read_options)


class ArrayEval:
  """Iterable of padded batches over rows [N, ...]; every iteration starts afresh.

  The last batch is filled with all-zero rows (weights 0), so every batch has
  the global shape and every example is seen exactly once.
  """

  def __init__(self, rows: dict, batch_size: int, transform=None):
    self.rows = rows
    self.batch_size = batch_size
    self.num_examples = len(next(iter(rows.values()))) if rows else 0
    self.host = _host_rows(batch_size)
    self.transform = transform

  def __len__(self):
    return math.ceil(self.num_examples / self.batch_size)

  def __iter__(self):
    for index, start in enumerate(range(0, self.num_examples, self.batch_size)):
      batch = {}
      for k, v in self.rows.items():
        chunk = v[start:start + self.batch_size]
        if len(chunk) < self.batch_size:
          fill = np.zeros((self.batch_size - len(chunk),) + v.shape[1:], v.dtype)
          chunk = np.concatenate([chunk, fill])
        batch[k] = chunk[self.host]
      yield self.transform(index, batch) if self.transform else batch


# ----------------------------------------------------------------------------
# Tokenizers for a config.


def _cache_dir(workdir: Optional[str]) -> str:
  return workdir or os.path.join(tempfile.gettempdir(), 'transformer_jax')


def make_tokenizer(config, workdir, train_text_fn: Callable[[], Iterable[str]],
                   key: str) -> tok_lib.Tokenizer:
  """The tokenizer config.data.tokenizer names, built from the training split.

  `train_text_fn()` yields the training text (lines or whole texts); `key`
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

  def lines():
    for piece in train_text_fn():
      yield from piece.split('\n')
  return tok_lib.load_or_train_sentencepiece(
      lines, _cache_dir(workdir), key, d.vocab_size, d.spm_model_type)


def _check_vocab(config, tokenizer):
  if tokenizer.vocab_size > config.model.vocab_size:
    raise ConfigError(
        f'config.model.vocab_size={config.model.vocab_size} is smaller than the '
        f'{tokenizer.name} tokenizer\'s {tokenizer.vocab_size} ids; set '
        f'config.model.vocab_size={tokenizer.vocab_size} or more.')


def _check_classes(config, num_classes):
  if config.model.num_classes != num_classes:
    raise ConfigError(f'config.model.num_classes={config.model.num_classes} but the data has '
                      f'{num_classes} classes; set config.model.num_classes={num_classes}.')


# ----------------------------------------------------------------------------
# From raw examples to train/eval.


def _from_examples(config, tokenizer, train, eval_raw, batch_size, where):
  """Train dataset, eval rows and info. `train` is a list of raw examples
  (tokenized here) or StreamedExamples (tokenized as batches are read);
  `eval_raw` a list of raw examples."""
  d, task, seq_len = config.data, config.data.task, config.seq_len
  info = {}
  if isinstance(train, list):
    train_overflow = Overflow(d.overflow, seq_len)
    train = make_examples(train, task, tokenizer, train_overflow, f'{where} train')
    info.update(train_overflow.report('train'))
  elif task == 'seq2seq' and d.bucketing and not d.packing:
    raise ConfigError(f'config.data.bucketing needs every example\'s length up front, which '
                      f'the streamed {where} train split does not give; set '
                      'config.data.packing=True or bucketing=False.')
  eval_overflow = Overflow(d.overflow, seq_len)
  evals = make_examples(eval_raw, task, tokenizer, eval_overflow, f'{where} eval')
  if not len(train) or not evals:
    raise ValueError(f'{where}: no {"train" if not len(train) else "eval"} examples left after '
                     f'config.data.overflow={d.overflow}; raise config.seq_len.')
  info.update({'train_examples': len(train), 'eval_examples': len(evals),
               **eval_overflow.report('eval')})
  transform = (_mlm_transform(config.seed, tokenizer.vocab_size, d.mask_rate)
               if task == 'mlm' else None)
  if d.packing:
    train_ds = packed_train(train, task, seq_len, batch_size, config.seed,
                            _read_options(config), transform)
  elif task == 'seq2seq' and d.bucketing:
    train_ds = bucketed_train(train, seq_len, batch_size, config.seed, _read_options(config))
  else:
    train_ds = array_train(train, seq_len, batch_size, config.seed, _read_options(config),
                           transform)
  eval_transform = (_mlm_transform(config.seed + 1, tokenizer.vocab_size, d.mask_rate)
                    if task == 'mlm' else None)
  eval_ds = ArrayEval(pad_rows(evals, seq_len), batch_size, eval_transform)
  if task == 'lm':  # streamed: estimated on up to 100,000 examples spread over the split.
    sample = train if isinstance(train, list) else [
        train[i] for i in np.linspace(0, len(train) - 1, min(len(train), 100_000)).astype(int)]
    info['unigram_entropy'] = tok_lib.unigram_entropy(
        np.concatenate([ex['targets'] for ex in sample if ex is not None]))
  return train_ds, eval_ds, info


def _shakespeare(config, workdir, batch_size):
  d, task, seq_len = config.data, config.data.task, config.seq_len
  if task == 'classify':
    return _shakespeare_genres(config, workdir, batch_size)
  if task not in ('lm', 'mlm'):
    raise ConfigError(f'config.data.task={task} is not available for shakespeare; use lm, '
                      'mlm or classify.')
  train_text, eval_text = sources.shakespeare_split()
  tokenizer = make_tokenizer(config, workdir, lambda: [train_text], 'shakespeare')
  _check_vocab(config, tokenizer)
  train_tokens = tokenizer.encode_array(train_text)
  eval_tokens = tokenizer.encode_array(eval_text)
  shift = task == 'lm'
  train_transform = eval_transform = None
  if task == 'mlm':
    train_transform = _mlm_transform(config.seed, tokenizer.vocab_size, d.mask_rate)
    eval_transform = _mlm_transform(config.seed + 1, tokenizer.vocab_size, d.mask_rate)
  train = stream_train(train_tokens, seq_len, batch_size, config.seed, _read_options(config),
                       shift, train_transform)
  eval_ds = ArrayEval(stream_eval_rows(eval_tokens, seq_len, shift), batch_size, eval_transform)
  info = {'train_tokens': len(train_tokens), 'eval_tokens': len(eval_tokens),
          'train_chars': len(train_text), 'eval_chars': len(eval_text),
          'eval_examples': eval_ds.num_examples,
          'unigram_entropy': tok_lib.unigram_entropy(train_tokens)}
  return tokenizer, train, eval_ds, info


def _shakespeare_genres(config, workdir, batch_size):
  """Passages (consecutive seq_len-token chunks of a work; a last chunk shorter
  than half a row is left out) labelled with the work's genre, split by work."""
  works, genres = sources.shakespeare_works(), sources.shakespeare_genres()
  train_works, test_works = sources.genre_split()
  tokenizer = make_tokenizer(config, workdir, lambda: [works[w] for w in train_works],
                             'shakespeare-genres')
  _check_vocab(config, tokenizer)
  _check_classes(config, len(sources.GENRES))
  seq_len = config.seq_len

  def passages(names):
    examples = []
    for name in names:
      ids = tokenizer.encode_array(works[name])
      label = sources.GENRES.index(genres[name])
      for start in range(0, len(ids), seq_len):
        chunk = ids[start:start + seq_len]
        if 2 * len(chunk) >= seq_len:
          examples.append({'inputs': chunk, 'targets': np.int32(label),
                           'weights': np.float32(1.0)})
    return examples

  train, test = passages(train_works), passages(test_works)
  train_ds = array_train(train, seq_len, batch_size, config.seed, _read_options(config))
  eval_ds = ArrayEval(pad_rows(test, seq_len), batch_size)
  count = lambda exs: np.bincount([int(e['targets']) for e in exs],
                                  minlength=len(sources.GENRES)).tolist()
  info = {'train_examples': len(train), 'eval_examples': len(test),
          'train_works': len(train_works), 'eval_works': len(test_works),
          'classes': sources.GENRES, 'train_class_counts': count(train),
          'eval_class_counts': count(test)}
  return tokenizer, train_ds, eval_ds, info


def _cmudict(config, batch_size):
  if config.data.task != 'seq2seq':
    raise ConfigError(f'config.data.task={config.data.task} is not available for cmudict; '
                      'use seq2seq.')
  splits = sources.cmudict_g2p(config.data.keep_stress)
  pairs = lambda split: [(w, p) for w, prons in splits[split] for p in prons]
  train_raw, eval_raw = pairs('train'), pairs(config.data.eval_split or 'dev')
  if config.data.max_examples:
    train_raw = train_raw[:config.data.max_examples]
    eval_raw = eval_raw[:config.data.max_examples]
  tokenizer = tok_lib.G2PTokenizer({c for w, _ in splits['train'] for c in w},
                                   {s for _, p in train_raw for s in p.split()})
  _check_vocab(config, tokenizer)
  train_ds, eval_ds, info = _from_examples(config, tokenizer, train_raw, eval_raw,
                                           batch_size, 'cmudict')
  info.update({f'{s}_words': len(splits[s]) for s in sources.G2P_SPLITS})
  return tokenizer, train_ds, eval_ds, info


def _tfds(config, workdir, batch_size):
  """A TFDS dataset: the train split streamed (StreamedExamples over
  tfds.data_source), the eval split read whole, the tokenizer built from
  config.data.tokenizer_examples train examples spread over the split."""
  d = config.data
  name = d.name[len('tfds:'):]
  if name not in sources.TFDS:
    raise ConfigError(f'config.data.name={d.name!r} is not supported; use one of '
                      f'{", ".join("tfds:" + n for n in sources.TFDS)}.')
  kind = sources.TFDS[name]
  wanted = {'translation': 'seq2seq', 'lm': ('lm', 'mlm'), 'classify': 'classify'}[kind]
  if d.task not in wanted:
    raise ConfigError(f'config.data.task={d.task} is not available for {d.name}; use '
                      f'{wanted if isinstance(wanted, str) else " or ".join(wanted)}.')
  convert = functools.partial(sources.tfds_example, name, source_language=d.source_language,
                              target_language=d.target_language)
  source = sources.tfds_source(name, 'train', d.data_dir)
  num_train = min(len(source), d.max_examples) if d.max_examples else len(source)
  eval_raw = sources.tfds_examples(name, d.eval_split or sources.TFDS_EVAL_SPLIT[name],
                                   d.data_dir, d.source_language, d.target_language,
                                   d.max_examples)
  num_text = min(num_train, d.tokenizer_examples) if d.tokenizer_examples else num_train

  def text():
    for i in np.linspace(0, num_train - 1, num_text).astype(int):
      ex = convert(source[int(i)])
      if kind == 'translation':
        yield ex[0]
        yield ex[1]
      else:
        yield ex if kind == 'lm' else ex[0]

  key = (f'{d.name}:{d.source_language}-{d.target_language}:{d.max_examples}:'
         f'{d.tokenizer_examples}')
  tokenizer = make_tokenizer(config, workdir, text, key)
  _check_vocab(config, tokenizer)
  if kind == 'classify':
    _check_classes(config, 2)
  train = StreamedExamples(source, convert, d.task, tokenizer,
                           Overflow(d.overflow, config.seq_len, streamed=True),
                           f'{d.name} train', np.arange(num_train))
  train_ds, eval_ds, info = _from_examples(config, tokenizer, train, eval_raw,
                                           batch_size, d.name)
  info['tokenizer_examples'] = num_text
  return tokenizer, train_ds, eval_ds, info


def _text(config, workdir, batch_size):
  """The user's files: lines for lm/mlm, source<TAB>target for seq2seq, and
  text<TAB>label for classify (labels numbered in sorted order)."""
  d = config.data
  if not d.train_files:
    raise ConfigError('config.data.name=text needs config.data.train_files (comma-separated '
                      'paths or globs); set it.')
  tsv = d.format == 'tsv'
  if tsv != (d.task in ('seq2seq', 'classify')):
    raise ConfigError(f'config.data.task={d.task} reads '
                      f'{"source<TAB>target lines" if not tsv else "one text per line"}; set '
                      f'config.data.format={"tsv" if not tsv else "lines"}.')
  train_raw = sources.read_text_files(sources.expand_files(d.train_files, 'train_files'), tsv)
  if d.eval_files:
    eval_raw = sources.read_text_files(sources.expand_files(d.eval_files, 'eval_files'), tsv)
  else:
    cut = len(train_raw) - max(1, len(train_raw) // 10)
    logging.info('No config.data.eval_files: the last %d of %d examples are the eval split.',
                 len(train_raw) - cut, len(train_raw))
    train_raw, eval_raw = train_raw[:cut], train_raw[cut:]
  info = {}
  if d.task == 'classify':
    labels = sorted({label for _, label in train_raw})
    unknown = {label for _, label in eval_raw} - set(labels)
    if unknown:
      raise ValueError(f'{d.eval_files}: labels {sorted(unknown)} never occur in '
                       f'{d.train_files}; add training examples for them.')
    _check_classes(config, len(labels))
    train_raw = [(t, labels.index(l)) for t, l in train_raw]
    eval_raw = [(t, labels.index(l)) for t, l in eval_raw]
    info['classes'] = tuple(labels)

  def text():
    for ex in train_raw:
      if isinstance(ex, str):
        yield ex
      else:
        yield from ex[:1] if d.task == 'classify' else ex

  tokenizer = make_tokenizer(config, workdir, text, f'text:{d.train_files}')
  _check_vocab(config, tokenizer)
  train_ds, eval_ds, more = _from_examples(config, tokenizer, train_raw, eval_raw,
                                           batch_size, d.train_files)
  return tokenizer, train_ds, eval_ds, {**info, **more}


def create_datasets(config, workdir: Optional[str] = None) -> Datasets:
  """Tokenizer, train iterator, eval() and info for `config` (see module doc)."""
  d = config.data
  config_lib.validate(config)
  batch_size = global_batch_size(config)
  if d.name == 'shakespeare':
    tokenizer, train_ds, eval_ds, info = _shakespeare(config, workdir, batch_size)
  elif d.name == 'cmudict':
    tokenizer, train_ds, eval_ds, info = _cmudict(config, batch_size)
  elif d.name.startswith('tfds:'):
    tokenizer, train_ds, eval_ds, info = _tfds(config, workdir, batch_size)
  elif d.name == 'text':
    tokenizer, train_ds, eval_ds, info = _text(config, workdir, batch_size)
  else:
    raise ConfigError(f'config.data.name={d.name!r} is unknown; use shakespeare, cmudict, '
                      'tfds:<name> (e.g. tfds:wmt14_translate/de-en) or text.')
  info.update(batch_size=batch_size, vocab_size=tokenizer.vocab_size,
              tokenizer=tokenizer.name)
  return Datasets(tokenizer=tokenizer, train=iter(train_ds), eval=lambda: eval_ds, info=info)
