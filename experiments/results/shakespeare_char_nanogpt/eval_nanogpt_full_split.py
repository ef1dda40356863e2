"""nanoGPT's checkpoint evaluated as our eval measures: the mean negative
log-likelihood of every validation token but the first, in non-overlapping windows
of block_size (as transformer_jax.data.batching.stream_eval_rows cuts them).

nanoGPT's own printed "val loss" is the mean over eval_iters random batches
(20 x 12 windows of 64 with the README's CPU command), a noisier estimate of the
same quantity. Run from nanoGPT's directory (its model.py is imported):

  cd /tmp/nanogpt && python eval_nanogpt_full_split.py out-shakespeare-char/ckpt.pt \
      data/shakespeare_char/val.bin
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig  # nanoGPT's, from the working directory.


def main(checkpoint_path: str, val_path: str, batch_size: int = 256):
  checkpoint = torch.load(checkpoint_path, map_location='cpu')
  model = GPT(GPTConfig(**checkpoint['model_args']))
  state = {k.removeprefix('_orig_mod.'): v for k, v in checkpoint['model'].items()}
  model.load_state_dict(state)
  model.eval()
  length = checkpoint['model_args']['block_size']
  tokens = np.fromfile(val_path, dtype=np.uint16).astype(np.int64)
  total, count = 0.0, 0
  with torch.no_grad():
    starts = list(range(0, len(tokens) - 1, length))
    for i in range(0, len(starts), batch_size):
      rows = [tokens[s:s + length + 1] for s in starts[i:i + batch_size]]
      for row in rows:  # the last window is shorter; run it alone.
        if len(row) < length + 1:
          x, y = torch.from_numpy(row[None, :-1].copy()), torch.from_numpy(row[None, 1:].copy())
          logits, _ = model(x, y)
          total += F.cross_entropy(logits[0], y[0], reduction='sum').item()
          count += y.numel()
      full = [row for row in rows if len(row) == length + 1]
      if full:
        batch = np.stack(full)
        x, y = torch.from_numpy(batch[:, :-1].copy()), torch.from_numpy(batch[:, 1:].copy())
        logits, _ = model(x, y)  # with targets, nanoGPT returns every position's logits.
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                 reduction='sum').item()
        count += y.numel()
  print(f'iter {checkpoint["iter_num"]}: full validation split loss {total / count:.4f} over '
        f'{count:,} targets')


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2])
