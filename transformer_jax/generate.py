"""Text in, text out: continuations of prompts (decoder), outputs for sources (seq2seq),
and the likeliest fills of masked positions (masked LM: `fill_masks`).

Every function takes the text -> ids function `encode` explicitly: the ids of a
text as a model input, exactly as a training example's inputs (the data
recipe's `encode_input`: for line-based LMs it already starts with <eos>, for
seq2seq it already ends with <eos>). Generation never adds special tokens
itself. The tokenizer turns output ids back into text and names `eos_id`.

Lengths follow the trained context (`context`, config.seq_len), checked here
where text enters (see "Length rules" below): a decoder never sees a position at
or past the context, however long the prompt and continuation (longer texts are
made in windows); a seq2seq source, or a masked LM's input, longer than the
context is an error. Every input gets exactly one output, in order.

A masked LM's input marks each position to fill with the tokenizer's
`mask_token` ('[MASK]'; a BERT checkpoint's tokenizer names its own): the text
between markers is encoded as a model input and each marker becomes one mask
id, so `th[MASK] cat` asks a character model for the one character after 'th'.
"""

from typing import Callable, Optional, Sequence

from absl import logging
import jax
import numpy as np

from transformer_jax import config as config_lib
from transformer_jax import decode
from transformer_jax import progress
from transformer_jax.data import DataError
from transformer_jax.data.tokenizers import Tokenizer  # what is read: pad_id, eos_id, decode.

Encode = Callable[[str], list[int]]


# ---------------------------------------------------------------------------
# Length rules.


def _limit(model, context: int) -> int:
  """Longest token sequence the model may see: the trained context, within its
  positional table (ModelConfig.max_positions)."""
  limit = min(context, model.cfg.max_positions or context)
  if limit < 2:
    raise ValueError(f'context={context} leaves room for {limit} tokens; generation needs '
                     'at least 2 (pass config.seq_len).')
  return limit


def _prompt_ids(encode: Encode, prompt: str) -> list[int]:
  """A decoder prompt's ids; an empty one (no ids) starts from a newline's ids."""
  ids = list(encode(prompt)) or list(encode('\n'))
  if not ids:
    raise ValueError(f'prompt {prompt!r} and a newline both encode to no tokens; give a '
                     'prompt with tokens.')
  return ids


def _windows(rows: list[list[int]], max_new_tokens: int, limit: int):
  """(contexts, new tokens) of the next window of a decoder's buffer of at most
  `limit` tokens. All of each row when prompt and continuation fit; otherwise
  each window continues the last limit // 2 tokens of the row so far, so no
  position >= limit is ever fed."""
  widest = max(len(ids) for ids in rows)
  if widest + max_new_tokens <= limit:
    return rows, max_new_tokens
  contexts = [ids[-(limit // 2):] for ids in rows]
  return contexts, min(max_new_tokens, limit - max(len(ids) for ids in contexts))


def _which(indices: list[int], total: int, what: str) -> str:
  """'3 of 8 outputs (output 0, 3, 5)', the first 10 named."""
  names = ', '.join(map(str, indices[:10])) + (' ...' if len(indices) > 10 else '')
  return f'{len(indices)} of {total} {what}s ({what} {names})'


def _check_unknown(tokenizer: Tokenizer, encoded: list[list[int]], eos_id: Optional[int]):
  """Says in one line which inputs hold text the vocabulary lacks (read as <unk>)."""
  unk_id = getattr(tokenizer, 'unk_id', None)
  if unk_id is None or unk_id in (eos_id, tokenizer.pad_id):  # GPT-2's is <|endoftext|>.
    return
  unknown = [i for i, ids in enumerate(encoded) if unk_id in ids]
  if unknown:
    logging.warning('%s hold symbols the run\'s vocabulary lacks; the model reads them as '
                    '<unk>. Remove or replace them.', _which(unknown, len(encoded), 'input'))


def _check_sources(encoded: list[list[int]], limit: int):
  for i, ids in enumerate(encoded):
    if len(ids) > limit:
      raise DataError(f'source {i} has {len(ids)} tokens (with <eos>), more than the {limit} '
                      'the model was trained on (config.seq_len); shorten it.')


def _source_width(encoded: list[list[int]], limit: int) -> int:
  """Next power of two (at least 8), so a few shapes cover all batches; at most `limit`."""
  longest = max(max(len(ids) for ids in encoded), 1)
  return min(max(8, 1 << (longest - 1).bit_length()), limit)


def _output_length(model, width: int, limit: int, max_decode_len: Optional[int]) -> int:
  """Tokens a seq2seq model may produce: max_decode_len (default 2 * width + 8),
  within max_len and the context."""
  return min(max_decode_len or 2 * width + 8, model.cfg.max_len, limit)


# ---------------------------------------------------------------------------
# Generation.


def _check_method(method: str):
  if method not in config_lib.DECODE_METHODS:
    *others, last = config_lib.DECODE_METHODS
    raise ValueError(f'method={method!r} is unknown; use {", ".join(others)} or {last}.')


def _eos_id(tokenizer: Tokenizer, eos_id: Optional[int]) -> Optional[int]:
  return getattr(tokenizer, 'eos_id', None) if eos_id is None else eos_id


def _until_eos(ids, eos_id, pad_id) -> tuple[list[int], bool]:
  """Token ids up to (not including) EOS, without pad; and whether EOS came."""
  out = []
  for token in ids:
    if eos_id is not None and token == eos_id:
      return out, True
    if token != pad_id:
      out.append(int(token))
  return out, False


def _padded(rows: list[list[int]], width: int, pad_id: int) -> np.ndarray:
  tokens = np.full((len(rows), width), pad_id, np.int32)
  for row, ids in enumerate(rows):
    tokens[row, :len(ids)] = ids
  return tokens


def _run(model, params, inputs, length: int, method: str, *, prompt_lengths=None,
         temperature: float, top_k: int, top_p: float, beam_size: int, alpha: float, rng,
         eos_id: Optional[int]) -> np.ndarray:
  """Tokens [b, length] of one decode call: the best beam, or the sample."""
  if method == 'beam':
    sequences, _ = decode.beam_search(model, params, inputs, length,
                                      prompt_lengths=prompt_lengths, beam_size=beam_size,
                                      alpha=alpha, eos_id=eos_id)
    return np.asarray(sequences[:, 0])
  return np.asarray(
      decode.sample(model, params, inputs, length, prompt_lengths=prompt_lengths,
                    temperature=0.0 if method == 'greedy' else temperature, top_k=top_k,
                    top_p=top_p, rng=rng, eos_id=eos_id))


def generate_text(model, params, tokenizer: Tokenizer, prompts: Sequence[str], *, encode: Encode,
                  context: int, max_new_tokens: int = 200, method: str = 'sample',
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  beam_size: int = 4, alpha: float = 0.6, seed: int = 0,
                  eos_id: Optional[int] = None) -> list[str]:
  """Continuations (without the prompt) of each prompt, from a DecoderOnly model.

  method: 'greedy' | 'sample' (temperature, top_k, top_p) | 'beam' (beam_size,
  alpha). eos_id defaults to `tokenizer.eos_id` when it has one. `context` is
  the trained context (config.seq_len); longer texts are made in windows, window
  w drawing with seed + w.
  """
  _check_method(method)
  limit = _limit(model, context)
  eos_id = _eos_id(tokenizer, eos_id)
  pad_id = model.cfg.pad_id
  rows = [_prompt_ids(encode, prompt) for prompt in prompts]
  _check_unknown(tokenizer, rows, eos_id)
  generated = [[] for _ in rows]
  done = [False] * len(rows)
  remaining, window = max_new_tokens, 0
  while remaining > 0 and not all(done):
    contexts, new_tokens = _windows(rows, remaining, limit)
    cut = [i for i, (c, r) in enumerate(zip(contexts, rows)) if len(c) < len(r)]
    if window == 0 and cut:
      logging.warning('%s with %d new tokens pass the context of %d tokens, so the model sees '
                      'only the last %d tokens of each; shorten them or ask for fewer tokens.',
                      _which(cut, len(rows), 'prompt'), max_new_tokens, limit, limit // 2)
    lengths = np.array([len(ids) for ids in contexts], np.int32)
    width = int(lengths.max())
    out = _run(model, params, _padded(contexts, width, pad_id), width + new_tokens, method,
               prompt_lengths=lengths, temperature=temperature, top_k=top_k, top_p=top_p,
               beam_size=beam_size, alpha=alpha, rng=jax.random.key(seed + window),
               eos_id=eos_id)
    for i, (row, n) in enumerate(zip(out, lengths)):
      if not done[i]:
        ids, done[i] = _until_eos(row[n:n + new_tokens], eos_id, pad_id)
        rows[i] = rows[i] + ids
        generated[i] += ids
    remaining -= new_tokens
    window += 1
  return [tokenizer.decode(ids) for ids in generated]


def translate(model, params, tokenizer: Tokenizer, sources: Sequence[str], *, encode: Encode,
              context: int, method: str = 'beam', beam_size: int = 4, alpha: float = 0.6,
              temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
              max_decode_len: Optional[int] = None, batch_size: int = 64,
              eos_id: Optional[int] = None) -> list[str]:
  """Outputs of a seq2seq Transformer for each source string (the target
  tokenizer decodes them).

  eos_id defaults to `tokenizer.eos_id`. Sources are decoded in batches of
  `batch_size`, padded to a power-of-two width within the context; outputs are
  at most max_decode_len (default 2 * width + 8) tokens, within max_len and
  the context.
  """
  _check_method(method)
  limit = _limit(model, context)
  eos_id = _eos_id(tokenizer, eos_id)
  pad_id = model.cfg.pad_id
  encoded = [list(encode(s)) for s in sources]
  _check_sources(encoded, limit)
  _check_unknown(tokenizer, encoded, eos_id)
  outputs, cut = [], []
  for start in progress.bar(range(0, len(encoded), batch_size), desc='decoding', unit='batch',
                            leave=False):
    chunk = encoded[start:start + batch_size]
    width = _source_width(chunk, limit)
    # Fill the batch with copies of its first row: one shape, and rows that finish.
    inputs = _padded(chunk + [chunk[0]] * (batch_size - len(chunk)), width, pad_id)
    out = _run(model, params, inputs, _output_length(model, width, limit, max_decode_len), method,
               temperature=temperature, top_k=top_k, top_p=top_p, beam_size=beam_size,
               alpha=alpha, rng=jax.random.fold_in(jax.random.key(seed), start), eos_id=eos_id)
    for i, row in enumerate(out[:len(chunk)]):
      ids, ended = _until_eos(row, eos_id, pad_id)
      outputs.append(tokenizer.decode(ids))
      if not ended and eos_id is not None:
        cut.append(start + i)
  if cut:
    logging.warning('%s reached the length limit (max_decode_len, default 2 x the padded source '
                    'width + 8 tokens, within max_len and the context) without <eos> and are cut '
                    'there; a model that repeats itself needs more training.',
                    _which(cut, len(outputs), 'output'))
  return outputs


# ---------------------------------------------------------------------------
# Masked-LM fills.

FILL_TOP_K = 5  # fills per mask when config.decode.top_k is 0 (off), as transformers' pipeline.


def masked_ids(encode: Encode, tokenizer: Tokenizer, line: str) -> list[int]:
  """The ids of a masked LM's input `line`: the text between its `tokenizer.mask_token`
  markers encoded as a model input (`encode`), each marker one `tokenizer.mask_id`."""
  first, *rest = line.split(tokenizer.mask_token)
  ids = list(encode(first))
  for piece in rest:
    ids += [tokenizer.mask_id, *encode(piece)]
  return ids


def fill_masks(model, params, tokenizer: Tokenizer, lines: Sequence[str], *, encode: Encode,
               context: int, top_k: int = FILL_TOP_K,
               batch_size: int = 64) -> list[list[list[tuple[str, float]]]]:
  """For each line, for each of its masks in order, the top_k likeliest fills
  (text, probability), likeliest first, from an EncoderOnly masked LM
  (`decode.mask_fills`: the probabilities are over the tokenizer's text ids, its
  special ids left out). A line without a mask gets no fills, and one warning
  names such lines. Lines are run in batches of `batch_size`, padded to a
  power-of-two width within the context.

  Raises:
    DataError: a line has more tokens than the trained context (config.seq_len).
  """
  limit = _limit(model, context)
  encoded = [masked_ids(encode, tokenizer, line) for line in lines]
  for i, ids in enumerate(encoded):
    if len(ids) > limit:
      raise DataError(f'input {i} has {len(ids)} tokens, more than the {limit} the model was '
                      'trained on (config.seq_len); shorten it.')
  _check_unknown(tokenizer, encoded, None)
  masked = [i for i, ids in enumerate(encoded) if tokenizer.mask_id in ids]
  if len(masked) < len(lines):
    unmasked = sorted(set(range(len(lines))) - set(masked))
    logging.warning('%s hold no %s, so there is nothing to fill; they are printed as they are.',
                    _which(unmasked, len(lines), 'input'), tokenizer.mask_token)
  special = set(tokenizer.special_ids)
  exclude = sorted(special | set(range(tokenizer.vocab_size, model.cfg.vocab_size)))
  top_k = min(top_k, tokenizer.vocab_size - len(special))
  fills = [[] for _ in lines]
  for start in progress.bar(range(0, len(masked), batch_size), desc='filling', unit='batch',
                            leave=False):
    rows = masked[start:start + batch_size]
    chunk = [encoded[i] for i in rows]
    # Fill the batch with copies of its first row: one shape for every batch.
    tokens = _padded(chunk + [chunk[0]] * (batch_size - len(chunk)), _source_width(chunk, limit),
                     model.cfg.pad_id)
    ids, probs = decode.mask_fills(model, params, tokens, top_k, exclude)
    for row, line in enumerate(rows):
      fills[line] = [[(tokenizer.decode([int(t)]), float(p)) for t, p in zip(ids[row, at],
                                                                            probs[row, at])]
                     for at in np.flatnonzero(tokens[row] == tokenizer.mask_id)]
  return fills


def fill_mask_text(line: str, fills: list[list[tuple[str, float]]], mask_token: str) -> str:
  """`line` with each `mask_token` replaced by its fills (`fill_masks`), likeliest
  first, each its text, a space and its probability, between brackets:
  'th[e 0.912|a 0.031|i 0.020] cat'."""
  first, *rest = line.split(mask_token)
  return first + ''.join(
      '[' + '|'.join(f'{text} {p:.3f}' for text, p in candidates) + ']' + piece
      for candidates, piece in zip(fills, rest))


# ---------------------------------------------------------------------------
# Samples during training.


def sample_texts(config, model, params, tokenizer: Tokenizer, *, encode: Encode) -> list[str]:
  """config.num_samples continuations of config.sample_prompt (an empty prompt
  starts from a newline), each config.sample_length tokens unless EOS comes."""
  prompt = config.sample_prompt
  continuations = generate_text(model, params, tokenizer, [prompt] * config.num_samples,
                                encode=encode, context=config.seq_len,
                                max_new_tokens=config.sample_length, method='sample',
                                temperature=config.sample_temperature, seed=config.seed)
  return [prompt + text for text in continuations]


def print_samples(config, model, params, tokenizer: Tokenizer, *, encode: Encode) -> list[str]:
  """Prints sample_texts and returns them (the run also records them: run_log)."""
  texts = sample_texts(config, model, params, tokenizer, encode=encode)
  for i, text in enumerate(texts):
    print(f'--- sample {i + 1} ---\n{text.strip()}', flush=True)
  return texts
