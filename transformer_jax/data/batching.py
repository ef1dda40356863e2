"""Rows and batches from tokens or example dicts, per host; resumable by index.

Rows are built three ways: windows of one long token stream (nanoGPT-style),
padded examples (optionally length-bucketed for seq2seq), or several examples
packed into one row with segment ids and per-example positions. Train datasets
are grain MapDatasets indexed by batch number over an endless sequence of
seeded epochs, so a saved iterator state resumes exactly; `ArrayEval` gives
the eval split once, in order, padded to whole batches (batch.py: the keys).

Multi-host: every host computes the same global batch plan (window offsets,
example indices, packed rows) and builds only its own rows (`host_rows`), so
the hosts' rows, concatenated by process index, are the batch one process
would see: the same rows in the same order with the same values (the MLM
masks too: examples.mlm_transform). jax.process_count() and process_index()
are read when a dataset is built.
"""

import math
import sys
from typing import Callable

from absl import logging
import grain
import jax
import numpy as np

from transformer_jax import config as config_lib
from transformer_jax.data import batch as batch_lib

ConfigError = config_lib.ConfigError


def host_rows(batch_size: int) -> slice:
  """This host's rows of a global batch: the process_index()-th of
  process_count() equal, contiguous shares (as parallel.put_batch expects)."""
  count, index = jax.process_count(), jax.process_index()
  if batch_size % count:
    raise ConfigError(f'config.batch_size={batch_size} does not split over {count} hosts; '
                      f'set it to a multiple of {count}.')
  per_host = batch_size // count
  return slice(index * per_host, (index + 1) * per_host)


def grain_read_options(config):
  """config.data's reader threads and prefetch for a grain dataset."""
  return grain.ReadOptions(num_threads=config.data.num_threads,
                           prefetch_buffer_size=config.data.prefetch)


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
  rows = host_rows(batch_size)
  ds = ShuffledBatches(num_windows, batch_size, seed).map(
      lambda offsets: _windows(offsets[rows], tokens, seq_len, shift))
  if transform:
    ds = ds.map_with_index(transform)
  return ds.to_iter_dataset(read_options)


def stream_eval_rows(tokens: np.ndarray, seq_len: int, shift: bool = True,
                     stride: int = 0) -> dict:
  """Windows of seq_len covering the stream, `stride` tokens apart: arrays [N, L].

  stride 0 (or seq_len): non-overlapping windows; causal LM window i predicts
  tokens[i*L+1 : i*L+L+1], so every token but the first is a target exactly
  once. A smaller stride (causal LM only) slides the window: window i starts at
  i*stride and weighs only the targets no earlier window scored (its last
  `stride`; the first window all L), so each target is still scored exactly
  once, but with up to L-1 tokens of context instead of as few as none
  (Hugging Face, "Perplexity of fixed-length models"). The last window is
  padded (weights 0).
  """
  stride = stride or seq_len
  if not shift:  # MLM: non-overlapping windows (config.validate allows no stride).
    num_windows = math.ceil(len(tokens) / seq_len)
    padded = np.zeros(num_windows * seq_len, np.int32)
    padded[:len(tokens)] = tokens
    return {'inputs': padded.reshape(num_windows, seq_len)}
  num = len(tokens) - 1  # targets: every token but the first.
  num_windows = 1 + math.ceil(max(num - seq_len, 0) / stride)
  offsets = np.arange(num_windows) * stride
  padded = np.zeros(offsets[-1] + seq_len + 1, np.int32)
  padded[:len(tokens)] = tokens
  window = padded[offsets[:, None] + np.arange(seq_len + 1)]  # [N, L+1]
  target = offsets[:, None] + np.arange(seq_len)  # the index into tokens[1:] of each target.
  new = np.arange(seq_len)[None, :] >= np.where(offsets == 0, 0, seq_len - stride)[:, None]
  weights = (new & (target < num)).astype(np.float32)
  return {'inputs': window[:, :-1], 'targets': window[:, 1:], 'weights': weights}


# ----------------------------------------------------------------------------
# Examples padded to a row, length buckets.


def pad_rows(examples: list, length: int) -> dict:
  """Examples -> arrays: sequences [N, length] zero-padded, scalars [N], arrays
  of two or more dimensions (images [H, W, C]) stacked as they are [N, H, W, C].
  A None (a dropped streamed example) becomes an all-zero row, weight 0."""
  template = next((ex for ex in examples if ex is not None), None)
  if template is None:
    return {}
  rows = {}
  for key, first in template.items():
    if np.ndim(first) == 0:
      rows[key] = np.asarray([0 if ex is None else ex[key] for ex in examples],
                             dtype=np.asarray(first).dtype)
    elif np.ndim(first) > 1:
      rows[key] = np.stack([np.zeros_like(first) if ex is None else ex[key] for ex in examples])
    else:
      out = np.zeros((len(examples), length), first.dtype)
      for i, ex in enumerate(examples):
        if ex is not None:
          out[i, :len(ex[key])] = ex[key]
      rows[key] = out
  return rows


def array_train(examples, seq_len: int, batch_size: int, seed: int, read_options=None,
                transform=None) -> grain.IterDataset:
  """Random batches of examples (a list or StreamedExamples) padded to seq_len
  (`pad_rows`), each example once per epoch; `transform(batch index, rows)`
  then changes them (BERT masking, image augmentation)."""
  num = len(examples)
  if num < batch_size:
    raise ConfigError(f'The training split has {num} examples, fewer than '
                      f'config.batch_size={batch_size}; lower the batch size.')
  host = host_rows(batch_size)
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

  Element i is (row length, indices [batch_size]). A bucket of fewer than
  batch_size examples, which would never fill a batch, joins the next longer
  one (the longest joins the one below), padded to the longer length. Each
  epoch shuffles every bucket, cuts it into full batches and shuffles the batch
  order; the examples left over in a bucket differ from epoch to epoch, so none
  is always skipped. The epoch length is fixed (sum over buckets of size //
  batch_size), so the element index alone says where in which epoch a run is.
  """

  def __init__(self, lengths: np.ndarray, boundaries: list, batch_size: int, seed: int):
    super().__init__()
    bucket = np.searchsorted(boundaries, lengths)
    merged = []  # (row length, members): each of batch_size or more examples, but one.
    for i, length in enumerate(boundaries):
      members = np.flatnonzero(bucket == i)
      if not len(members):
        continue
      if merged and len(merged[-1][1]) < batch_size:
        members = np.concatenate([merged.pop()[1], members])
      merged.append((length, members))
    if len(merged) > 1 and len(merged[-1][1]) < batch_size:
      length, members = merged.pop()
      merged.append((length, np.concatenate([merged.pop()[1], members])))
    self._boundaries = [length for length, _ in merged]
    self._buckets = [members for _, members in merged]
    self._batch_size, self._seed = batch_size, seed
    self._per_epoch = sum(len(b) // batch_size for b in self._buckets)
    if not self._per_epoch:
      raise ConfigError(f'The training split has {len(lengths)} examples, fewer than '
                        f'config.batch_size={batch_size}; lower the batch size.')
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
  host = host_rows(batch_size)
  ds = BucketBatches(lengths, bucket_boundaries(seq_len), batch_size, seed).map(
      lambda item: pad_rows([examples[i] for i in item[1][host]], item[0]))
  return ds.to_iter_dataset(read_options)


# ----------------------------------------------------------------------------
# Packing several examples per row.


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
  StreamedExamples that tokenizes only the group at hand. Each host plans the
  whole global batch (so hosts agree on every row) and assembles only its own
  rows [batch_size / hosts, seq_len] (`host_rows`); the plan costs every host
  the reading (streamed: tokenizing) and sizing of all `per_batch` examples,
  process_count() times what its rows alone would need. `per_batch` is the
  largest count that fills ~90% of the rows and fits in sampled batches; an
  example that still does not fit is left out of that batch (it is back, in
  another group, next epoch) and logged.
  """

  def __init__(self, examples, task: str, seq_len: int, batch_size: int, seed: int):
    super().__init__()
    self._examples, self._seq_len, self._batch_size = examples, seq_len, batch_size
    self._sides = batch_lib.PACKED_SIDES[task]
    # In memory every example's size is known; streamed, a sample's.
    self._size = None
    if isinstance(examples, list):
      self._size = np.asarray([self._size_of(ex) for ex in examples])
    self.per_batch = self._examples_per_batch(seed)
    self._groups = ShuffledBatches(len(examples), self.per_batch, seed)
    self._host = host_rows(batch_size)

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
    dtypes = {k: v.dtype for k, v in examples[0].items()}
    return self._assemble(rows[self._host], dtypes)

  def _assemble(self, rows: list, dtypes: dict) -> dict:
    """This host's rows of examples -> its packed rows [b, seq_len] (rows past
    len(rows) are padding, possibly all of them), with one concatenation per
    feature and numpy scatters, not a Python step per token."""
    members = [ex for row in rows for ex in row]  # [m] examples in row order.
    counts = np.asarray([len(r) for r in rows], np.int64)  # int even when empty.
    row_of = np.repeat(np.arange(len(rows)), counts)  # [m]
    first = np.cumsum(counts) - counts  # [rows] each row's first member.
    segment = np.arange(len(members)) - first[row_of] + 1  # [m] 1, 2, ... within a row.
    shape = (self._host.stop - self._host.start, self._seq_len)
    batch = {}
    for side, features in self._sides.items():
      lengths = np.asarray([len(ex[side]) for ex in members], np.int64)  # [m]
      start = np.cumsum(lengths) - lengths  # [m] where each member starts, end to end.
      column_start = start - start[first[row_of]]  # [m] ... and within its row.
      token_member = np.repeat(np.arange(len(members)), lengths)  # [t]
      position = np.arange(lengths.sum()) - start[token_member]  # [t]
      row = row_of[token_member]
      column = column_start[token_member] + position
      for k in features:
        batch[k] = np.zeros(shape, dtypes[k])
        if members:
          batch[k][row, column] = np.concatenate([ex[k] for ex in members])
      prefix = '' if len(self._sides) == 1 else side + '_'
      batch[prefix + 'segment_ids'] = np.zeros(shape, np.int32)
      batch[prefix + 'segment_ids'][row, column] = segment[token_member]
      batch[prefix + 'positions'] = np.zeros(shape, np.int32)
      batch[prefix + 'positions'][row, column] = position
    return batch


def packed_train(examples, task: str, seq_len: int, batch_size: int, seed: int,
                 read_options=None, transform=None) -> grain.IterDataset:
  """Several shuffled examples (a list or StreamedExamples) per row
  (PackedBatches): every host packs the same global batch of batch_size rows
  and yields its own rows of it."""
  ds = PackedBatches(examples, task, seq_len, batch_size, seed)
  if transform:
    ds = ds.map_with_index(transform)
  return ds.to_iter_dataset(read_options)


# ----------------------------------------------------------------------------
# Eval.


class ArrayEval:
  """Iterable of padded batches over rows [N, ...]; every iteration starts afresh.

  The last batch is filled with all-zero rows (weights 0), so every batch has
  the global shape and every example is seen exactly once.
  """

  def __init__(self, rows: dict, batch_size: int, transform=None):
    self.rows = rows
    self.batch_size = batch_size
    self.num_examples = len(next(iter(rows.values()))) if rows else 0
    self.host = host_rows(batch_size)
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


