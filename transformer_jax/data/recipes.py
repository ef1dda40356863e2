"""The recipes: what is particular to each dataset, and the flow they share.

A `Recipe` owns where a dataset's raw examples come from (sources.py), the
references the decoding metrics score against, and `encode`, the one way its
text becomes model inputs, used alike by training examples, eval rows and
decode inputs (`Datasets.encode_input`). What the dataset is (its tasks, eval
splits, classes, image shape) is its entry in catalog.py. A recipe reads a
split when it is first used, not when it is made: eval reads the eval split
alone (`eval_batches`), and decoding reads none.
Image recipes (`ImageRecipe`: digits, tfds:mnist, tfds:cifar10) encode pixels
instead, need no tokenizer, and say whether their train batches are augmented.
datasets.py registers them and builds a run's data from the one it picks.
"""

import functools
import hashlib
import os
import tempfile
from typing import Callable, Iterable, Optional

from absl import logging
import numpy as np

from transformer_jax import catalog
from transformer_jax import config as config_lib
from transformer_jax.data import batching
from transformer_jax.data import examples as examples_lib
from transformer_jax.data import sources
from transformer_jax.data import tokenizers as tok_lib
from transformer_jax.data import DataError

ConfigError = config_lib.ConfigError


# ----------------------------------------------------------------------------
# Tokenizers.


# SentencePiece models of runs without a workdir, cached by dataset.
SPM_CACHE = os.path.join(tempfile.gettempdir(), 'transformer_jax')


def make_tokenizer(config, directory: Optional[str], train_text_fn: Callable[[], Iterable[str]],
                   key: str) -> tok_lib.Tokenizer:
  """The tokenizer config.data.tokenizer names, built from the training split.

  `train_text_fn()` yields the training text (lines or whole texts). A
  SentencePiece model is trained into `directory` (the run's tokenizer
  directory), or without one cached in the temporary directory under `key`,
  which names the dataset so cached models are never mixed up. A Hugging Face
  tokenizer (hf) is read, not built: from config.tokenizer_path(config), a
  directory or a Hub id in the Hugging Face cache.
  """
  d = config.data
  if d.tokenizer == 'hf':
    try:
      return tok_lib.HFTokenizer(config_lib.tokenizer_path(config))
    except (DataError, ConfigError) as e:  # ConfigError: a Hub id it cannot have (hub.py).
      named = 'config.data.tokenizer_path' if d.tokenizer_path else 'config.init_from'
      raise type(e)(f'config.data.tokenizer=hf ({named}): {e}') from None
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
  if directory:
    path = os.path.join(directory, tok_lib.SPM_MODEL_FILE)
    return tok_lib.SentencePieceTokenizer(
        tok_lib.train_sentencepiece(lines(), path, d.vocab_size, d.spm_model_type))
  return tok_lib.load_or_train_sentencepiece(
      lines, SPM_CACHE, key, d.vocab_size, d.spm_model_type)


def _check_classes(config, num_classes):
  if config.model.num_classes != num_classes:
    raise ConfigError(f'config.model.num_classes={config.model.num_classes} but the data has '
                      f'{num_classes} classes; set config.model.num_classes={num_classes}.')


# ----------------------------------------------------------------------------
# Recipes.


class Recipe:
  """How one dataset becomes a run's data; one instance per create_datasets.

  A subclass names the config.data.name it serves, checks the config in
  `__init__` (reading no data), reads each raw split at its first use, and says
  how text is encoded (`encode`), batched (`batches`: train and eval;
  `eval_batches`: eval alone) and scored (`references`). The dataset's facts
  (its tasks, eval splits, classes) are its catalog entry's (catalog.DATASETS).
  """
  name = ''  # the config.data.name served.
  tasks = ()  # where a dataset's tasks are split between recipes, this one's; () = all.
  tokenizes = True  # text, for which the run builds (and keeps) a tokenizer; False: images.

  def __init__(self, config):
    self.config = config
    split = config.data.eval_split
    if split and not self.selects_eval_split and split != self.eval_split:
      raise ConfigError(f'config.data.eval_split={split!r}: {config.data.name} has one eval '
                        f'split ({self.eval_split}); drop --config.data.eval_split.')
    if split and self.eval_splits and split not in self.eval_splits:
      raise ConfigError(f'config.data.eval_split={split!r} is not a held-out split of '
                        f'{config.data.name}; use {" or ".join(self.eval_splits)}.')

  @classmethod
  def serves(cls, name: str) -> bool:
    return name == cls.name

  @classmethod
  def tasks_for(cls, name: str) -> tuple:
    """The tasks of dataset `name` that this recipe serves."""
    return tuple(t for t in catalog.DATASETS[name].tasks if not cls.tasks or t in cls.tasks)

  @property
  def entry(self) -> catalog.Dataset:
    """The dataset's catalog entry."""
    return catalog.DATASETS[self.config.data.name]

  @property
  def selects_eval_split(self) -> bool:
    """Whether config.data.eval_split picks the eval split."""
    return self.entry.eval_splits != ()

  @property
  def eval_splits(self) -> tuple:
    """The held-out splits config.data.eval_split may pick; () = any of the source's."""
    return self.entry.eval_splits or ()

  @property
  def eval_split(self) -> str:
    """The split evaluated: config.data.eval_split where the dataset has a choice,
    else the dataset's default for the task."""
    split = self.config.data.eval_split if self.selects_eval_split else ''
    return split or self.entry.default_eval_split(self.config.data.task)

  @property
  def tokenizer_name(self) -> str:
    return self.config.data.tokenizer

  def new_tokenizer(self, directory: Optional[str]) -> tok_lib.Tokenizer:
    """A tokenizer built from the training split (`directory`: make_tokenizer)."""
    raise NotImplementedError

  def encode(self, raw, tokenizer, overflow: examples_lib.Overflow,
             where: str) -> Optional[dict]:
    """A raw example -> its example dict (the batch.py keys, variable length),
    or None when the overflow policy drops it."""
    return examples_lib.make_example(raw, self.config.data.task, tokenizer, overflow, where)

  def input_example(self, text: str):
    """The raw example whose input side is `text` (any target, label 0)."""
    task = self.config.data.task
    return (text, '') if task == 'seq2seq' else (text, 0) if task == 'classify' else text

  def batches(self, tokenizer, batch_size: int) -> tuple:
    """(train grain dataset, eval iterable, info)."""
    raise NotImplementedError

  def eval_batches(self, tokenizer, batch_size: int):
    """The eval iterable of `batches`, built without reading the train split
    (where the eval split is not a part of it)."""
    raise NotImplementedError

  def references(self) -> Optional[list]:
    return None


class ShakespeareStream(Recipe):
  """LM and MLM rows: windows of the Shakespeare text as one token stream
  (nanoGPT-style); the first 90% of characters train, the last 10% evaluate."""
  name = 'shakespeare'
  tasks = ('lm', 'mlm')

  @functools.cached_property
  def _texts(self) -> tuple:
    return sources.shakespeare_split()

  @property
  def train_text(self) -> str:
    return self._texts[0]

  @property
  def eval_text(self) -> str:
    return self._texts[1]

  def new_tokenizer(self, directory):
    return make_tokenizer(self.config, directory, lambda: [self.train_text], 'shakespeare')

  def encode(self, raw, tokenizer, overflow, where):
    """Text -> plain ids, no <eos>: windows of the stream start anywhere."""
    del overflow, where  # the stream is cut into windows, not fitted.
    return {'inputs': tokenizer.encode_array(raw)}

  def batches(self, tokenizer, batch_size):
    config = self.config
    d, task, seq_len = config.data, config.data.task, config.seq_len
    train_tokens = self.encode(self.train_text, tokenizer, None, 'train')['inputs']
    eval_tokens = self.encode(self.eval_text, tokenizer, None, 'eval')['inputs']
    train_transform = None
    if task == 'mlm':
      train_transform = examples_lib.mlm_transform(config.seed, tokenizer, d.mask_rate,
                                                   batch_size)
    train = batching.stream_train(train_tokens, seq_len, batch_size, config.seed,
                                  batching.grain_read_options(config), task == 'lm',
                                  train_transform)
    eval_ds = self._eval_rows(eval_tokens, tokenizer, batch_size)
    info = {'train_tokens': len(train_tokens), 'eval_tokens': len(eval_tokens),
            'train_chars': len(self.train_text), 'eval_chars': len(self.eval_text),
            'eval_examples': eval_ds.num_examples,
            'unigram_entropy': tok_lib.unigram_entropy(train_tokens)}
    return train, eval_ds, info

  def eval_batches(self, tokenizer, batch_size):
    eval_tokens = self.encode(self.eval_text, tokenizer, None, 'eval')['inputs']
    return self._eval_rows(eval_tokens, tokenizer, batch_size)

  def _eval_rows(self, eval_tokens, tokenizer, batch_size: int):
    """Consecutive windows of the eval stream, config.eval_stride apart (mlm: masked
    with seed + 1)."""
    config, task = self.config, self.config.data.task
    transform = None
    if task == 'mlm':
      transform = examples_lib.mlm_transform(config.seed + 1, tokenizer, config.data.mask_rate,
                                             batch_size)
    return batching.ArrayEval(batching.stream_eval_rows(eval_tokens, config.seq_len,
                                                        task == 'lm', config.eval_stride),
                              batch_size, transform)


class ShakespeareGenres(Recipe):
  """Passages (consecutive seq_len-token chunks of a work; a last chunk shorter
  than half a row is left out) labelled with the work's genre, split by work."""
  name = 'shakespeare'
  tasks = ('classify',)

  @functools.cached_property
  def works(self) -> dict:
    return sources.shakespeare_works()

  @functools.cached_property
  def genres(self) -> dict:
    return sources.shakespeare_genres()

  @functools.cached_property
  def _split(self) -> tuple:
    return sources.genre_split()

  @property
  def train_works(self) -> list:
    return self._split[0]

  @property
  def test_works(self) -> list:
    return self._split[1]

  def new_tokenizer(self, directory):
    return make_tokenizer(self.config, directory,
                          lambda: [self.works[w] for w in self.train_works], 'shakespeare-genres')

  def encode(self, raw, tokenizer, overflow, where):
    """(text, label) -> all its ids; `batches` cuts a work's into passages."""
    del overflow, where
    return {'inputs': tokenizer.encode_array(raw[0]), 'targets': np.int32(raw[1]),
            'weights': np.float32(1.0)}

  def _passages(self, names, tokenizer) -> list:
    """The passages of the works `names`, each labelled with its work's genre."""
    seq_len = self.config.seq_len
    examples = []
    for name in names:
      work = self.encode((self.works[name], sources.GENRES.index(self.genres[name])),
                         tokenizer, None, name)
      for start in range(0, len(work['inputs']), seq_len):
        chunk = work['inputs'][start:start + seq_len]
        if 2 * len(chunk) >= seq_len:
          examples.append({**work, 'inputs': chunk})
    return examples

  def eval_batches(self, tokenizer, batch_size):
    _check_classes(self.config, len(sources.GENRES))
    test = self._passages(self.test_works, tokenizer)
    return batching.ArrayEval(batching.pad_rows(test, self.config.seq_len), batch_size)

  def batches(self, tokenizer, batch_size):
    config, seq_len = self.config, self.config.seq_len
    _check_classes(config, len(sources.GENRES))
    train, test = (self._passages(self.train_works, tokenizer),
                   self._passages(self.test_works, tokenizer))
    train_ds = batching.array_train(train, seq_len, batch_size, config.seed,
                                    batching.grain_read_options(config))
    eval_ds = batching.ArrayEval(batching.pad_rows(test, seq_len), batch_size)
    count = lambda exs: np.bincount([int(e['targets']) for e in exs],
                                    minlength=len(sources.GENRES)).tolist()
    info = {'train_examples': len(train), 'eval_examples': len(test),
            'train_works': len(self.train_works), 'eval_works': len(self.test_works),
            'classes': sources.GENRES, 'train_class_counts': count(train),
            'eval_class_counts': count(test)}
    return train_ds, eval_ds, info


class Cmudict(Recipe):
  """Grapheme-to-phoneme pairs, one per pronunciation, with graphemes and
  phonemes in one vocabulary (G2PTokenizer) built from the train split."""
  name = 'cmudict'

  @functools.cached_property
  def splits(self) -> dict:
    return sources.cmudict_g2p(self.config.data.keep_stress)

  def _pairs(self, split: str) -> list:
    """(word, pronunciation) pairs of `split`, one per pronunciation (the
    first config.data.max_examples, if set)."""
    pairs = [(w, p) for w, prons in self.splits[split] for p in prons]
    return pairs[:self.config.data.max_examples] if self.config.data.max_examples else pairs

  @functools.cached_property
  def train_raw(self) -> list:
    return self._pairs('train')

  @functools.cached_property
  def eval_raw(self) -> list:
    return self._pairs(self.eval_split)

  def input_example(self, text: str):
    """A word to pronounce, in lower case: CMUdict's words are, and its upper-case
    symbols are phonemes ('WORLD' would read W, R, L, D as phonemes)."""
    return (text.lower(), '')

  @property
  def tokenizer_name(self) -> str:
    return tok_lib.G2PTokenizer.name

  def new_tokenizer(self, directory):
    del directory
    return tok_lib.G2PTokenizer({c for w, _ in self.splits['train'] for c in w},
                                {s for _, p in self.train_raw for s in p.split()})

  def batches(self, tokenizer, batch_size):
    encode = functools.partial(self.encode, tokenizer=tokenizer)
    train_ds, eval_ds, info = examples_lib.example_datasets(
        self.config, encode, self.train_raw, self.eval_raw, tokenizer, batch_size,
        'cmudict')
    info.update({f'{s}_words': len(self.splits[s]) for s in sources.G2P_SPLITS})
    return train_ds, eval_ds, info

  def eval_batches(self, tokenizer, batch_size):
    encode = functools.partial(self.encode, tokenizer=tokenizer)
    return examples_lib.eval_dataset(self.config, encode, self.eval_raw, tokenizer, batch_size,
                                     'cmudict')[0]

  def references(self):
    """(word, [pronunciation, ...]) for every word of the eval split."""
    return self.splits[self.eval_split]


class Tfds(Recipe):
  """A TFDS dataset: the train split streamed (StreamedExamples over
  tfds.data_source), the eval split read whole, the vocabulary built from
  config.data.tokenizer_examples train examples spread over the split (both
  sides of a translation or a sentence pair)."""
  name = catalog.TFDS_PREFIX

  @classmethod
  def serves(cls, name):
    return name.startswith(cls.name) and name in catalog.DATASETS and (
        catalog.DATASETS[name].kind != 'image')

  def __init__(self, config):
    super().__init__(config)
    d = config.data
    self.dataset = d.name[len(self.name):]
    self.kind = self.entry.kind
    self.convert = functools.partial(sources.tfds_example, self.dataset,
                                     source_language=d.source_language,
                                     target_language=d.target_language)

  @functools.cached_property
  def source(self):
    """The train split, opened (not read) at first use."""
    return sources.tfds_source(self.dataset, 'train', self.config.data.data_dir)

  @property
  def num_train(self) -> int:
    d = self.config.data
    return min(len(self.source), d.max_examples) if d.max_examples else len(self.source)

  @property
  def num_text(self) -> int:
    d = self.config.data
    return min(self.num_train, d.tokenizer_examples) if d.tokenizer_examples else self.num_train

  @functools.cached_property
  def eval_raw(self) -> list:
    d = self.config.data
    return sources.tfds_examples(self.dataset, self.eval_split, d.data_dir, d.source_language,
                                 d.target_language, d.max_examples)

  def _text(self):
    for i in np.linspace(0, self.num_train - 1, self.num_text).astype(int):
      ex = self.convert(self.source[int(i)])
      if self.kind in ('translation', 'pairs'):
        yield ex[0]
        yield ex[1]
      else:
        yield ex if self.kind == 'lm' else ex[0]

  def new_tokenizer(self, directory):
    d = self.config.data
    key = (f'{d.name}:{d.source_language}-{d.target_language}:{d.max_examples}:'
           f'{d.tokenizer_examples}')
    return make_tokenizer(self.config, directory, self._text, key)

  def batches(self, tokenizer, batch_size):
    d = self.config.data
    if self.config.data.task == 'classify':
      _check_classes(self.config, self.entry.num_classes)
    encode = functools.partial(self.encode, tokenizer=tokenizer)
    overflow = examples_lib.Overflow(d.overflow, self.config.seq_len, streamed=True)
    train = examples_lib.StreamedExamples(self.source, self.convert,
                                          functools.partial(encode, overflow=overflow),
                                          f'{d.name} train', np.arange(self.num_train))
    train_ds, eval_ds, info = examples_lib.example_datasets(
        self.config, encode, train, self.eval_raw, tokenizer, batch_size, d.name)
    info['tokenizer_examples'] = self.num_text
    return train_ds, eval_ds, info

  def eval_batches(self, tokenizer, batch_size):
    if self.config.data.task == 'classify':
      _check_classes(self.config, self.entry.num_classes)
    encode = functools.partial(self.encode, tokenizer=tokenizer)
    return examples_lib.eval_dataset(self.config, encode, self.eval_raw, tokenizer, batch_size,
                                     self.config.data.name)[0]

  def references(self):
    """(source, reference) sentence pairs of the eval split, for translation."""
    return self.eval_raw if self.kind == 'translation' else None


class TextFiles(Recipe):
  """The user's files: lines for lm/mlm, source<TAB>target for seq2seq, and
  text<TAB>label or, for sentence pairs, text<TAB>text<TAB>label for classify
  (labels numbered in sorted order; every line of the files one kind or the other)."""
  name = 'text'

  def __init__(self, config):
    super().__init__(config)
    d = config.data
    if not d.train_files:
      raise ConfigError('config.data.name=text needs config.data.train_files (comma-separated '
                        'paths or globs); set it.')
    tsv = d.format == 'tsv'
    if tsv != (d.task in ('seq2seq', 'classify')):
      raise ConfigError(f'config.data.task={d.task} reads '
                        f'{"source<TAB>target lines" if not tsv else "one text per line"}; set '
                        f'config.data.format={"tsv" if not tsv else "lines"}.')
    self.tsv = tsv

  @functools.cached_property
  def _read_train(self) -> tuple:
    """(examples, 'PATH:LINE' of each) of every file of config.data.train_files."""
    files = sources.expand_files(self.config.data.train_files, 'train_files')
    return self._checked(sources.read_text_files(files, self.tsv, self._labelled))

  @property
  def _labelled(self) -> bool:
    return self.config.data.task == 'classify'

  def _checked(self, read: tuple, pairs: Optional[bool] = None) -> tuple:
    """classify: `read` (examples, locations) all sentences or all sentence pairs
    (all pairs when `pairs`, all sentences when False; None: as the first), and
    pairs only for a model with segment embeddings."""
    examples, where = read
    if not self._labelled or not examples:
      return read
    pairs = len(examples[0]) == 3 if pairs is None else pairs
    other = next((i for i, ex in enumerate(examples) if (len(ex) == 3) != pairs), None)
    if other is not None:
      raise DataError(f'{where[other]}: a {"sentence" if pairs else "sentence pair"} among '
                      f'{"sentence pairs" if pairs else "sentences"}; write every line of the '
                      'files as text<TAB>label, or every line as text<TAB>text<TAB>label.')
    if pairs and self.config.model.token_types < 2:
      raise ConfigError(f'{where[0]}: the files hold sentence pairs (text<TAB>text<TAB>label), '
                        'read with segment embeddings; set config.model.token_types=2.')
    return read

  @functools.cached_property
  def _cut(self) -> int:
    """Without config.data.eval_files: where the last 10% of the training
    examples, the eval split, start."""
    examples = len(self._read_train[0])
    if examples < 2:
      raise DataError(f'{self.config.data.train_files}: one example, too few to hold out the '
                      'last 10% for eval; add examples or set config.data.eval_files.')
    cut = examples - max(1, examples // 10)
    logging.info('No config.data.eval_files: the last %d of %d examples are the eval split.',
                 examples - cut, examples)
    return cut

  @functools.cached_property
  def _train_split(self) -> tuple:
    """(raw examples, 'PATH:LINE' of each) of the train split."""
    raw, where = self._read_train
    if self.config.data.eval_files:
      return raw, where
    return raw[:self._cut], where[:self._cut]

  @functools.cached_property
  def _eval_split(self) -> tuple:
    """(raw examples, 'PATH:LINE' of each) of the eval split: config.data.eval_files,
    read without the training files when those are set (and, if the training
    files are still there, none of them may be an eval file)."""
    d = self.config.data
    if not d.eval_files:
      raw, where = self._read_train
      return raw[self._cut:], where[self._cut:]
    eval_files = sources.expand_files(d.eval_files, 'eval_files')
    try:
      train_files = sources.expand_files(d.train_files, 'train_files')
    except DataError:  # moved away since the run trained: none can be an eval file.
      train_files = []
    both = set(map(os.path.realpath, train_files)) & set(map(os.path.realpath, eval_files))
    if both:
      raise DataError(f'{sorted(both)[0]} is in both config.data.train_files and eval_files, '
                      'so eval would score training examples; keep it in one of them.')
    pairs = len(self._read_train[0][0]) == 3 if self._labelled and train_files else None
    return self._checked(sources.read_text_files(eval_files, self.tsv, self._labelled), pairs)

  @functools.cached_property
  def _labels(self) -> list:
    """classify: the training examples' labels in sorted order (a label's id is
    its index), the eval split's checked against them."""
    d = self.config.data
    labels = sorted({ex[-1] for ex in self._train_split[0]})
    unknown = {ex[-1] for ex in self._eval_split[0]} - set(labels)
    if unknown:
      shuffle = '' if d.eval_files else ' (or shuffle the lines: eval takes the last 10%)'
      raise DataError(f'{self.eval_split}: labels {sorted(unknown)} never occur in the '
                      f'training examples of {d.train_files}; add training examples for '
                      f'them{shuffle}.')
    _check_classes(self.config, len(labels))
    return labels

  def _numbered(self, raw: list) -> list:
    """classify: (text, label id) for each (text, label), (a, b, label id) for each
    sentence pair (a, b, label); other tasks: `raw`."""
    if not self._labelled:
      return raw
    return [(*ex[:-1], self._labels.index(ex[-1])) for ex in raw]

  @functools.cached_property
  def train_raw(self) -> list:
    return self._numbered(self._train_split[0])

  @functools.cached_property
  def eval_raw(self) -> list:
    return self._numbered(self._eval_split[0])

  @property
  def info(self) -> dict:
    return {'classes': tuple(self._labels)} if self.config.data.task == 'classify' else {}

  @property
  def locations(self) -> tuple:
    """'PATH:LINE' of each example: (train, eval)."""
    return self._train_split[1], self._eval_split[1]

  @property
  def eval_split(self) -> str:
    return self.config.data.eval_files or 'the last 10% of config.data.train_files'

  def _text(self):
    for ex in self.train_raw:
      if isinstance(ex, str):
        yield ex
      else:
        yield from ex[:-1] if self._labelled else ex

  def new_tokenizer(self, directory):
    """Cached by the training text itself: an edited file gets a new model."""
    digest = hashlib.sha1()
    for piece in self._text():
      digest.update(piece.encode('utf-8') + b'\0')
    return make_tokenizer(self.config, directory, self._text, f'text:{digest.hexdigest()}')

  def batches(self, tokenizer, batch_size):
    encode = functools.partial(self.encode, tokenizer=tokenizer)
    train_ds, eval_ds, more = examples_lib.example_datasets(
        self.config, encode, self.train_raw, self.eval_raw, tokenizer, batch_size,
        self.config.data.train_files, locations=self.locations)
    return train_ds, eval_ds, {**self.info, **more}

  def eval_batches(self, tokenizer, batch_size):
    """The eval split; with config.data.eval_files it alone is read (classify
    reads the training files too, for its labels' names)."""
    encode = functools.partial(self.encode, tokenizer=tokenizer)
    return examples_lib.eval_dataset(self.config, encode, self.eval_raw, tokenizer, batch_size,
                                     self.config.data.train_files, self._eval_split[1])[0]


# ----------------------------------------------------------------------------
# Images (the Vision Transformer: config.model.patch_size > 0).


class ImageRecipe(Recipe):
  """Image classification: (image, label) examples, pixels scaled to [0, 1]
  (`examples.image_example`), no tokenizer. The image shapes and class counts
  are the catalog's (catalog.Dataset.image_shape and num_classes: checked against
  the model before anything loads, and against the data here); train batches get
  the CIFAR augmentation
  (`examples.augment_transform`) where `augment` says so."""
  tokenizes = False
  scale = 255  # the largest pixel value.
  augment = False

  @property
  def tokenizer_name(self) -> str:
    return ''

  def encode(self, raw, tokenizer=None, overflow=None, where: str = '') -> dict:
    """(image [H, W, C], label) -> inputs float32 [H, W, C] in [0, 1], targets, weights."""
    del tokenizer, overflow, where  # pixels, not text; nothing to cut.
    return examples_lib.image_example(raw, self.scale)

  def _check_shape(self, eval_raw: list):
    """Raises DataError when the images are not the catalog's shape."""
    name = self.config.data.name
    shape = self.encode(eval_raw[0])['inputs'].shape
    if shape != self.entry.image_shape:
      raise DataError(f'{name}: images are {shape}, not the {self.entry.image_shape} of '
                      'catalog.DATASETS; fix the table.')

  def eval_batches(self, tokenizer, batch_size):
    del tokenizer
    self._check_shape(self.eval_raw)
    return examples_lib.eval_dataset(self.config, self.encode, self.eval_raw, None, batch_size,
                                     self.config.data.name)[0]

  def image_datasets(self, train, eval_raw, batch_size: int) -> tuple:
    """(train dataset, eval rows, info) of `train` (raw examples or
    StreamedExamples) and `eval_raw`, through the flow every recipe shares."""
    config, name = self.config, self.config.data.name
    self._check_shape(eval_raw)
    augment = examples_lib.augment_transform(config.seed, batch_size) if self.augment else None
    train_ds, eval_ds, info = examples_lib.example_datasets(
        config, self.encode, train, eval_raw, None, batch_size, name, augment)
    info['augmentation'] = ('random crop of the 4-pixel zero-padded image, horizontal flip'
                            if self.augment else 'none')
    return train_ds, eval_ds, info


class Digits(ImageRecipe):
  """scikit-learn's handwritten digits (`sources.digits`): 1,797 grey 8x8 images
  of the digits 0-9, pixels 0..16 scaled to [0, 1], no augmentation (a shifted
  8x8 digit loses an eighth of itself; a flipped one can be another digit).

  Split by class with a fixed seed (`sources.digits_split`, seed 0): 1,259
  train, 179 validation, 359 test images. Training evaluates on validation
  (the default eval split, which also picks the best checkpoint); the held-out
  number to report is `--mode=eval --config.data.eval_split=test`.
  """
  name = 'digits'
  scale = 16

  def _raw(self, split: str) -> list:
    images, labels = sources.digits()
    return [(images[i], labels[i]) for i in sources.digits_split()[split]]

  @functools.cached_property
  def train_raw(self) -> list:
    return self._raw('train')

  @functools.cached_property
  def eval_raw(self) -> list:
    return self._raw(self.eval_split)

  def batches(self, tokenizer, batch_size):
    del tokenizer
    train_ds, eval_ds, info = self.image_datasets(self.train_raw, self.eval_raw, batch_size)
    info.update(split_seed=sources.DIGITS_SEED, eval_class_counts=np.bincount(
        [label for _, label in self.eval_raw], minlength=10).tolist())
    return train_ds, eval_ds, info


class TfdsImages(ImageRecipe):
  """TFDS mnist (28x28 grey) and cifar10 (32x32 RGB), 10 classes each, pixels
  0..255 scaled to [0, 1]: the train split streamed record by record from
  tfds.data_source (as `Tfds`), the eval split (default test) read whole.
  cifar10's train batches are augmented (random crop of the image zero-padded
  by 4 pixels, horizontal flip: He et al. 2016's CIFAR recipe); mnist's are not
  (a flipped digit can be another digit)."""
  name = 'tfds:'

  @classmethod
  def serves(cls, name):
    return name.startswith(cls.name) and name in catalog.DATASETS and (
        catalog.DATASETS[name].kind == 'image')

  def __init__(self, config):
    super().__init__(config)
    self.dataset = config.data.name[len(self.name):]
    self.augment = self.dataset == 'cifar10'

  @functools.cached_property
  def train(self) -> examples_lib.StreamedExamples:
    """The train split, streamed from the source opened at first use."""
    d = self.config.data
    source = sources.tfds_source(self.dataset, 'train', d.data_dir)
    count = min(len(source), d.max_examples) if d.max_examples else len(source)
    return examples_lib.StreamedExamples(
        source, functools.partial(sources.tfds_example, self.dataset), self.encode,
        f'{d.name} train', np.arange(count))

  @functools.cached_property
  def eval_raw(self) -> list:
    d = self.config.data
    return sources.tfds_examples(self.dataset, self.eval_split, d.data_dir,
                                 max_examples=d.max_examples)

  def batches(self, tokenizer, batch_size):
    del tokenizer
    return self.image_datasets(self.train, self.eval_raw, batch_size)
