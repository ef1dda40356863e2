"""Raw examples (strings, labels) from each dataset, before tokenization.

- Shakespeare: the bundled public-domain corpus (`shakespeare/`, provenance in
  its README). Split as the data README says: files concatenated in sorted
  name order, first 90% of characters for training, last 10% for validation.
"""

import csv
import functools
import glob
import os

DATA_DIR = os.path.dirname(os.path.abspath(__file__))
SHAKESPEARE_DIR = os.path.join(DATA_DIR, 'shakespeare')
SHAKESPEARE_TRAIN_FRACTION = 0.9
GENRES = ('comedy', 'history', 'tragedy', 'poem')


@functools.lru_cache(maxsize=1)
def shakespeare_works() -> dict:
  """{file name: text} for the 42 works, in sorted file-name order."""
  paths = sorted(glob.glob(os.path.join(SHAKESPEARE_DIR, '*.txt')))
  if not paths:
    raise FileNotFoundError(
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
