"""The recipes: what is particular to each dataset, and the flow they share.

A `Recipe` owns where a dataset's raw examples come from (sources.py), the
references the decoding metrics score against, and `encode`, the one way its
text becomes model inputs, used alike by training examples, eval rows and
decode inputs (`Datasets.encode_input`). What the dataset is (its tasks, eval
splits, classes, image shape) is its entry in catalog.py.
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
  tokenizer (hf) is read, not built: from config.tokenizer_path(config).
  """
  d = config.data
  if d.tokenizer == 'hf':
    try:
      return tok_lib.HFTokenizer(config_lib.tokenizer_path(config))
    except DataError as e:
      named = 'config.data.tokenizer_path' if d.tokenizer_path else 'config.init_from'
      raise DataError(f'config.data.tokenizer=hf ({named}): {e}') from None
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

  A subclass names the config.data.name it serves, reads its raw splits in
  `__init__`, and says how text is encoded (`encode`), batched (`batches`) and
  scored (`references`). The dataset's facts (its tasks, eval splits, classes)
  are its catalog entry's (catalog.DATASETS).
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

  def references(self) -> Optional[list]:
    return None


class ShakespeareStream(Recipe):
  """LM and MLM rows: windows of the Shakespeare text as one token stream
  (nanoGPT-style); the first 90% of characters train, the last 10% evaluate."""
  name = 'shakespeare'
  tasks = ('lm', 'mlm')

  def __init__(self, config):
    super().__init__(config)
    self.train_text, self.eval_text = sources.shakespeare_split()

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
    shift = task == 'lm'
    train_transform = eval_transform = None
    if task == 'mlm':
      train_transform = examples_lib.mlm_transform(config.seed, tokenizer, d.mask_rate,
                                                   batch_size)
      eval_transform = examples_lib.mlm_transform(config.seed + 1, tokenizer, d.mask_rate,
                                                  batch_size)
    train = batching.stream_train(train_tokens, seq_len, batch_size, config.seed,
                                  batching.grain_read_options(config), shift, train_transform)
    eval_ds = batching.ArrayEval(batching.stream_eval_rows(eval_tokens, seq_len, shift),
                                 batch_size, eval_transform)
    info = {'train_tokens': len(train_tokens), 'eval_tokens': len(eval_tokens),
            'train_chars': len(self.train_text), 'eval_chars': len(self.eval_text),
            'eval_examples': eval_ds.num_examples,
            'unigram_entropy': tok_lib.unigram_entropy(train_tokens)}
    return train, eval_ds, info


class ShakespeareGenres(Recipe):
  """Passages (consecutive seq_len-token chunks of a work; a last chunk shorter
  than half a row is left out) labelled with the work's genre, split by work."""
  name = 'shakespeare'
  tasks = ('classify',)

  def __init__(self, config):
    super().__init__(config)
    self.works, self.genres = sources.shakespeare_works(), sources.shakespeare_genres()
    self.train_works, self.test_works = sources.genre_split()

  def new_tokenizer(self, directory):
    return make_tokenizer(self.config, directory,
                          lambda: [self.works[w] for w in self.train_works], 'shakespeare-genres')

  def encode(self, raw, tokenizer, overflow, where):
    """(text, label) -> all its ids; `batches` cuts a work's into passages."""
    del overflow, where
    return {'inputs': tokenizer.encode_array(raw[0]), 'targets': np.int32(raw[1]),
            'weights': np.float32(1.0)}

  def batches(self, tokenizer, batch_size):
    config, seq_len = self.config, self.config.seq_len
    _check_classes(config, len(sources.GENRES))

    def passages(names):
      examples = []
      for name in names:
        work = self.encode((self.works[name], sources.GENRES.index(self.genres[name])),
                           tokenizer, None, name)
        for start in range(0, len(work['inputs']), seq_len):
          chunk = work['inputs'][start:start + seq_len]
          if 2 * len(chunk) >= seq_len:
            examples.append({**work, 'inputs': chunk})
      return examples

    train, test = passages(self.train_works), passages(self.test_works)
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

  def __init__(self, config):
    super().__init__(config)
    d = config.data
    self.splits = sources.cmudict_g2p(d.keep_stress)
    pairs = lambda split: [(w, p) for w, prons in self.splits[split] for p in prons]
    self.train_raw, self.eval_raw = pairs('train'), pairs(self.eval_split)
    if d.max_examples:
      self.train_raw = self.train_raw[:d.max_examples]
      self.eval_raw = self.eval_raw[:d.max_examples]

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

  def references(self):
    """(word, [pronunciation, ...]) for every word of the eval split."""
    return self.splits[self.eval_split]


class Tfds(Recipe):
  """A TFDS dataset: the train split streamed (StreamedExamples over
  tfds.data_source), the eval split read whole, the vocabulary built from
  config.data.tokenizer_examples train examples spread over the split."""
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
    self.source = sources.tfds_source(self.dataset, 'train', d.data_dir)
    self.num_train = len(self.source)
    if d.max_examples:
      self.num_train = min(self.num_train, d.max_examples)
    self.eval_raw = sources.tfds_examples(self.dataset, self.eval_split, d.data_dir,
                                          d.source_language, d.target_language, d.max_examples)
    self.num_text = (min(self.num_train, d.tokenizer_examples) if d.tokenizer_examples
                     else self.num_train)

  def _text(self):
    for i in np.linspace(0, self.num_train - 1, self.num_text).astype(int):
      ex = self.convert(self.source[int(i)])
      if self.kind == 'translation':
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
    if self.kind == 'classify':
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

  def references(self):
    """(source, reference) sentence pairs of the eval split, for translation."""
    return self.eval_raw if self.kind == 'translation' else None


class TextFiles(Recipe):
  """The user's files: lines for lm/mlm, source<TAB>target for seq2seq, and
  text<TAB>label for classify (labels numbered in sorted order)."""
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
    train_files = sources.expand_files(d.train_files, 'train_files')
    train_raw, train_where = sources.read_text_files(train_files, tsv)
    if d.eval_files:
      eval_files = sources.expand_files(d.eval_files, 'eval_files')
      both = set(map(os.path.realpath, train_files)) & set(map(os.path.realpath, eval_files))
      if both:
        raise DataError(f'{sorted(both)[0]} is in both config.data.train_files and eval_files, '
                        'so eval would score training examples; keep it in one of them.')
      eval_raw, eval_where = sources.read_text_files(eval_files, tsv)
    else:
      if len(train_raw) < 2:
        raise DataError(f'{d.train_files}: one example, too few to hold out the last 10% for '
                        'eval; add examples or set config.data.eval_files.')
      cut = len(train_raw) - max(1, len(train_raw) // 10)
      logging.info('No config.data.eval_files: the last %d of %d examples are the eval split.',
                   len(train_raw) - cut, len(train_raw))
      train_raw, eval_raw = train_raw[:cut], train_raw[cut:]
      train_where, eval_where = train_where[:cut], train_where[cut:]
    self.info = {}
    if d.task == 'classify':
      labels = sorted({label for _, label in train_raw})
      unknown = {label for _, label in eval_raw} - set(labels)
      if unknown:
        shuffle = '' if d.eval_files else ' (or shuffle the lines: eval takes the last 10%)'
        raise DataError(f'{self.eval_split}: labels {sorted(unknown)} never occur in the '
                        f'training examples of {d.train_files}; add training examples for '
                        f'them{shuffle}.')
      _check_classes(config, len(labels))
      train_raw = [(t, labels.index(l)) for t, l in train_raw]
      eval_raw = [(t, labels.index(l)) for t, l in eval_raw]
      self.info['classes'] = tuple(labels)
    self.train_raw, self.eval_raw = train_raw, eval_raw
    self.locations = (train_where, eval_where)  # 'PATH:LINE' of each example.

  @property
  def eval_split(self) -> str:
    return self.config.data.eval_files or 'the last 10% of config.data.train_files'

  def _text(self):
    for ex in self.train_raw:
      if isinstance(ex, str):
        yield ex
      else:
        yield from ex[:1] if self.config.data.task == 'classify' else ex

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

  def image_datasets(self, train, eval_raw, batch_size: int) -> tuple:
    """(train dataset, eval rows, info) of `train` (raw examples or
    StreamedExamples) and `eval_raw`, through the flow every recipe shares."""
    config, name = self.config, self.config.data.name
    shape = self.encode(eval_raw[0])['inputs'].shape
    if shape != self.entry.image_shape:
      raise DataError(f'{name}: images are {shape}, not the {self.entry.image_shape} of '
                      'catalog.DATASETS; fix the table.')
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

  def __init__(self, config):
    super().__init__(config)
    images, labels = sources.digits()
    split = sources.digits_split()
    raw = lambda name: [(images[i], labels[i]) for i in split[name]]
    self.train_raw, self.eval_raw = raw('train'), raw(self.eval_split)

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
    d = config.data
    self.dataset = d.name[len(self.name):]
    self.augment = self.dataset == 'cifar10'
    source = sources.tfds_source(self.dataset, 'train', d.data_dir)
    count = min(len(source), d.max_examples) if d.max_examples else len(source)
    self.train = examples_lib.StreamedExamples(
        source, functools.partial(sources.tfds_example, self.dataset), self.encode,
        f'{d.name} train', np.arange(count))
    self.eval_raw = sources.tfds_examples(self.dataset, self.eval_split, d.data_dir,
                                          max_examples=d.max_examples)

  def batches(self, tokenizer, batch_size):
    del tokenizer
    return self.image_datasets(self.train, self.eval_raw, batch_size)
