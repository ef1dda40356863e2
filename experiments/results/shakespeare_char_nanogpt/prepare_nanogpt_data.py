"""Writes this project's Shakespeare corpus and split in nanoGPT's data format.

nanoGPT's data/shakespeare_char/prepare.py downloads the 1 MB tinyshakespeare and
writes train.bin / val.bin (uint16 character ids, the first 90% / last 10% of the
text) and meta.pkl (vocab_size, stoi, itos, the sorted distinct characters of the
whole text). This script writes the same three files for the text our
`shakespeare_char` config trains on (transformer_jax.data.sources.shakespeare_split:
the bundled 42 works, 5,057,198 characters, split 90/10 at the same character), so
both sides train and evaluate on the same text and split.

  PYTHONPATH=<this repository> python prepare_nanogpt_data.py /tmp/nanogpt/data/shakespeare_char
"""

import os
import pickle
import sys

import numpy as np

from transformer_jax.data import sources


def main(directory: str):
  train_text, val_text = sources.shakespeare_split()
  chars = sorted(set(train_text + val_text))
  stoi = {ch: i for i, ch in enumerate(chars)}
  os.makedirs(directory, exist_ok=True)
  for name, text in (('train', train_text), ('val', val_text)):
    ids = np.array([stoi[ch] for ch in text], dtype=np.uint16)
    ids.tofile(os.path.join(directory, f'{name}.bin'))
    print(f'{name}: {len(ids):,} tokens')
  with open(os.path.join(directory, 'meta.pkl'), 'wb') as f:
    pickle.dump({'vocab_size': len(chars), 'stoi': stoi, 'itos': dict(enumerate(chars))}, f)
  print(f'vocab size: {len(chars)}')


if __name__ == '__main__':
  main(sys.argv[1])
