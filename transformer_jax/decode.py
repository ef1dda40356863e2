"""Autoregressive decoding on the KV cache: greedy, sampling and beam search.

Every decoder reads and writes one token buffer `[b, length]`: it starts as the
right-padded prompt (decoder-only) or `[0, pad, ...]` (seq2seq: the decoder's
first input is the start token 0, as `shift_right` makes it in training), and
position `p + 1` is filled from the logits of the tokens `0..p`. Positions still
inside a row's prompt are forced to the prompt token, so rows of different
prompt lengths decode together without padding inside the cache.

A *step* function maps `(carry, buffer, p) -> (logits [n, vocab], carry)`:
- cached (the default): `carry` is the model's 'cache' collection; the tokens
  before the shortest prompt's end go through the cache in one prefill call,
  then each step feeds the one token at `p`, so token t costs O(t);
- uncached (`cached=False`, the reference for tests and benchmarks): `carry` is
  empty and each step runs the full decoder pass over the whole buffer (the
  seq2seq encoder still runs once).
The loops (`jax.lax.while_loop` over a fixed length, stopping early once every
row has emitted `eos_id`) are written once against that interface, and each
public entry point is one `jax.jit`-compiled call.

The pad token is never generated (its logit is masked), so in every output the
tokens after a row's end are pad (0).

Beam search keeps `beam_size` live hypotheses per row and ranks finished ones
by log P(Y|X) / lp(Y) with GNMT's length penalty lp(Y) = ((5 + |Y|) / 6)^alpha
(Wu et al. 2016; the paper uses alpha = 0.6 and beam 4); |Y| counts the
generated tokens, EOS included. As in fairseq, an extension ending in EOS
finishes a hypothesis only when it ranks among the step's `beam_size` best
candidates, and a row stops once it has `beam_size` finished hypotheses; so beam
1 is exactly greedy decoding, for any alpha.
"""

import functools
from typing import Optional, Protocol, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

NEG_INF = -1.0e7  # log-probability of impossible hypotheses; finite so sums stay finite.


class Tokenizer(Protocol):
  """What decoding needs from a tokenizer; `eos_id` is an optional attribute."""
  pad_id: int

  def encode(self, text: str) -> list[int]:
    ...

  def decode(self, ids: list[int]) -> str:
    ...


def length_penalty(length, alpha: float):
  """GNMT length penalty ((5 + |Y|) / 6)^alpha."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0)**alpha


_FOR_VARIANT = {
    'decoder': 'use sample_decoder, beam_search_decoder or generate_text',
    'seq2seq': 'use sample_seq2seq, beam_search_seq2seq or translate',
    'encoder': 'encoder-only models do not generate text',
}


def _static(model: nn.Module, variant: str) -> nn.Module:
  """The same model with a frozen (hashable) config, so `jax.jit` can take it as
  static; checks that it is the variant the caller decodes."""
  if model.cfg.variant != variant:
    raise ValueError(f'this function decodes config.model.variant={variant!r} models, got '
                     f'{model.cfg.variant!r}; {_FOR_VARIANT[model.cfg.variant]}.')
  if isinstance(model.cfg, ml_collections.FrozenConfigDict):
    return model
  return type(model)(ml_collections.FrozenConfigDict(model.cfg))


def _variables(params):
  """Accepts a params tree or a full variables dict {'params': ...}."""
  return params if 'params' in params else {'params': params}


def _zeros_cache(init_fn, *args):
  """An empty 'cache' collection (all zeros, index 0) of the shape `init_fn` would make."""
  shapes = jax.eval_shape(init_fn, *args)['cache']
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _token_at(buffer, p):  # [n, length], scalar -> [n]
  return jax.lax.dynamic_index_in_dim(buffer, p, axis=1, keepdims=False)


# ---------------------------------------------------------------------------
# Step functions: (carry, buffer [n, length], p) -> (logits [n, vocab] for p + 1, carry).


def _decoder_stepper(model, params, buffer, prefill: int, cached: bool):
  """Step function and initial carry for a DecoderOnly model on `buffer` [n, length]."""
  variables = _variables(params)
  n, length = buffer.shape
  if not cached:

    def full_step(carry, buffer, p):
      # Every position is real (segment 1); the causal mask hides positions > p.
      logits = model.apply(variables, buffer, segment_ids=jnp.ones_like(buffer))
      return _token_at(logits, p), carry

    return full_step, (), None

  def apply(cache, tokens):
    logits, mutated = model.apply({**variables, 'cache': cache}, tokens, decode=True,
                                  mutable=['cache'])
    return logits, mutated['cache']

  cache = _zeros_cache(
      lambda: model.init(jax.random.key(0), jnp.ones((n, length), jnp.int32), decode=True))
  prefill_logits = None
  if prefill > 1:  # the tokens before position prefill - 1, in one call.
    prefill_logits, cache = apply(cache, buffer[:, :prefill - 1])

  def cached_step(cache, buffer, p):
    logits, cache = apply(cache, jax.lax.dynamic_slice_in_dim(buffer, p, 1, axis=1))
    return logits[:, 0], cache

  return cached_step, cache, prefill_logits


def _seq2seq_stepper(model, params, inputs, buffer, cached: bool):
  """Step function and initial carry for a Transformer; encodes `inputs` [n, ls] once."""
  variables = _variables(params)
  n, length = buffer.shape
  inputs_segment_ids = (inputs != model.cfg.pad_id).astype(jnp.int32)
  encoded = model.apply(variables, inputs, inputs_segment_ids, method='encode')  # [n, ls, d]
  if not cached:

    def full_step(carry, buffer, p):
      logits = model.apply(variables, encoded, inputs_segment_ids, buffer,
                           targets_segment_ids=jnp.ones_like(buffer), method='decode')
      return _token_at(logits, p), carry

    return full_step, ()

  def init(encoded, segment_ids):
    return model.init(jax.random.key(0), encoded, segment_ids, jnp.ones((n, length), jnp.int32),
                      decode=True, method='decode')

  def cached_step(cache, buffer, p):
    tokens = jax.lax.dynamic_slice_in_dim(buffer, p, 1, axis=1)
    logits, mutated = model.apply({**variables, 'cache': cache}, encoded, inputs_segment_ids,
                                  tokens, decode=True, method='decode', mutable=['cache'])
    return logits[:, 0], mutated['cache']

  return cached_step, _zeros_cache(init, encoded, inputs_segment_ids)


# ---------------------------------------------------------------------------
# Sampling (greedy is temperature 0).


def filter_logits(logits, top_k, top_p):
  """Keeps the top_k largest logits (0 = all), then the smallest set of those whose
  probability reaches top_p (nucleus); the rest become -inf. logits [n, vocab]."""
  vocab = logits.shape[-1]
  rank = jnp.arange(vocab)
  k = jnp.where(top_k > 0, jnp.minimum(top_k, vocab), vocab)
  ranked = -jnp.sort(-logits, axis=-1)  # descending
  ranked = jnp.where(rank < k, ranked, -jnp.inf)
  probs = jax.nn.softmax(ranked, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = (rank < k) & ((mass_before < top_p) | (rank == 0) | (top_p >= 1.0))
  threshold = jnp.take_along_axis(ranked, keep.sum(-1, keepdims=True) - 1, axis=-1)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample_logits(rng, logits, temperature, top_k=0, top_p=1.0):
  """Next tokens [n] from logits [n, vocab]: argmax when temperature is 0, else a
  draw from softmax(logits / temperature) restricted by top-k and top-p."""
  greedy = jnp.argmax(logits, axis=-1)
  tempered = logits / jnp.where(temperature > 0, temperature, 1.0)
  sampled = jax.random.categorical(rng, filter_logits(tempered, top_k, top_p), axis=-1)
  return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


def _sample_loop(step, carry, buffer, prompt_lengths, prefill, rng, temperature, top_k, top_p,
                 eos_id, pad_id):
  """Fills `buffer` [n, length] from position `prefill` on; returns it."""
  length = buffer.shape[1]

  def cond(state):
    p, _, _, done = state
    return (p + 1 < length) & ~jnp.all(done)

  def body(state):
    p, buffer, carry, done = state
    logits, carry = step(carry, buffer, p)
    logits = logits.at[:, pad_id].set(-jnp.inf)
    token = sample_logits(jax.random.fold_in(rng, p), logits, temperature, top_k, top_p)
    forced = p + 1 < prompt_lengths
    token = jnp.where(forced, _token_at(buffer, p + 1), jnp.where(done, pad_id, token))
    buffer = jax.lax.dynamic_update_slice_in_dim(buffer, token[:, None], p + 1, axis=1)
    done = done | (~forced & (token == eos_id))
    return p + 1, buffer, carry, done

  done = jnp.zeros(buffer.shape[:1], bool)
  _, buffer, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(prefill - 1), buffer, carry, done))
  return buffer


# ---------------------------------------------------------------------------
# Beam search.


def _gather_beams(tree, beams, batch: int, beam_size: int):
  """Reorders every [batch * beam_size, ...] leaf by beams [batch, beam_size]; scalars stay."""

  def gather(x):
    if x.ndim == 0:
      return x
    x = x.reshape((batch, beam_size) + x.shape[1:])
    x = jnp.take_along_axis(x, beams.reshape(beams.shape + (1,) * (x.ndim - 2)), axis=1)
    return x.reshape((batch * beam_size,) + x.shape[2:])

  return jax.tree.map(gather, tree)


def _beam_loop(step, carry, buffer, prompt_lengths, prefill, beam_size, alpha, eos_id, pad_id):
  """Beam search over `buffer` [b, length]; `carry` is already for b * beam_size rows.

  Returns (sequences [b, beam_size, length], scores [b, beam_size]): hypotheses
  that ended in EOS first, best first, then live ones cut at `length`.
  """
  b, length = buffer.shape
  k = beam_size
  alive = jnp.repeat(buffer[:, None], k, axis=1)  # [b, k, length]
  # Only beam 0 is live at first, so the k beams do not start as k copies.
  alive_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (b, 1))  # [b, k]
  finished = alive
  finished_scores = jnp.full((b, k), NEG_INF)
  finished_flags = jnp.zeros((b, k), bool)

  def cond(state):
    p, _, _, _, _, finished_flags, _ = state
    return (p + 1 < length) & ~jnp.all(finished_flags.all(1))

  def body(state):
    p, alive, alive_lp, finished, finished_scores, finished_flags, carry = state
    logits, carry = step(carry, alive.reshape(b * k, length), p)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits).reshape(b, k, vocab)
    log_probs = log_probs.at[..., pad_id].set(NEG_INF)
    forced = p + 1 < prompt_lengths  # [b]
    forced_log_probs = jnp.where(jnp.arange(vocab) == _token_at(buffer, p + 1)[:, None], 0.0,
                                 NEG_INF)  # [b, vocab]
    log_probs = jnp.where(forced[:, None, None], forced_log_probs[:, None], log_probs)

    # The 2k best extensions: even if k of them end in EOS, k stay live.
    candidates = (alive_lp[..., None] + log_probs).reshape(b, k * vocab)
    top_lp, top_index = jax.lax.top_k(candidates, 2 * k)  # [b, 2k], best first
    top_beam, top_token = top_index // vocab, top_index % vocab
    top_seqs = jnp.take_along_axis(alive, top_beam[..., None], axis=1)  # [b, 2k, length]
    top_seqs = jax.lax.dynamic_update_slice_in_dim(top_seqs, top_token[..., None], p + 1, axis=2)
    eos = (top_token == eos_id) & ~forced[:, None]
    settled = finished_flags.all(1, keepdims=True)  # rows that already have k finished.
    ends = eos & (jnp.arange(2 * k) < k) & (top_lp > NEG_INF / 2) & ~settled

    alive_lp, chosen = jax.lax.top_k(jnp.where(eos, NEG_INF, top_lp), k)
    alive = jnp.take_along_axis(top_seqs, chosen[..., None], axis=1)
    carry = _gather_beams(carry, jnp.take_along_axis(top_beam, chosen, axis=1), b, k)

    generated = p + 2 - prompt_lengths  # tokens generated so far, EOS included. [b]
    scores = jnp.where(ends, top_lp / length_penalty(generated, alpha)[:, None], NEG_INF)
    finished_scores, chosen = jax.lax.top_k(jnp.concatenate([finished_scores, scores], 1), k)
    finished = jnp.take_along_axis(jnp.concatenate([finished, top_seqs], 1), chosen[..., None], 1)
    finished_flags = jnp.take_along_axis(jnp.concatenate([finished_flags, ends], 1), chosen, 1)
    return p + 1, alive, alive_lp, finished, finished_scores, finished_flags, carry

  state = (jnp.int32(prefill - 1), alive, alive_lp, finished, finished_scores, finished_flags,
           carry)
  _, alive, alive_lp, finished, finished_scores, finished_flags, _ = jax.lax.while_loop(
      cond, body, state)
  # Finished hypotheses first, best first; live ones (cut at `length`) fill the rest.
  max_penalty = length_penalty(length - prompt_lengths, alpha)  # [b]
  scores = jnp.concatenate([finished_scores, alive_lp / max_penalty[:, None]], 1)  # [b, 2k]
  flags = jnp.concatenate([finished_flags, jnp.zeros_like(finished_flags)], 1)
  order = jnp.lexsort((-scores, ~flags), axis=1)[:, :k]
  sequences = jnp.take_along_axis(jnp.concatenate([finished, alive], 1), order[..., None], 1)
  return sequences, jnp.take_along_axis(scores, order, 1)


# ---------------------------------------------------------------------------
# Jitted entry points on token ids.


def _prompt_lengths(prompts, prompt_lengths, pad_id):
  """Host-side lengths [b] (right-padded prompts) and the static prefill length."""
  if prompt_lengths is None:
    prompt_lengths = (np.asarray(prompts) != pad_id).sum(1)
  prompt_lengths = np.asarray(prompt_lengths, np.int32)
  if prompt_lengths.min() < 1:
    raise ValueError('a decoder-only prompt is empty; give every row at least one token '
                     '(e.g. a BOS token).')
  return jnp.asarray(prompt_lengths), int(prompt_lengths.min())


def _check_length(model, length: int, what: str):
  cfg = model.cfg
  if cfg.position in ('sinusoidal', 'learned') and length > cfg.max_len:
    raise ValueError(f'{what} is {length}, longer than config.model.max_len={cfg.max_len}; '
                     'decode fewer tokens or raise max_len.')


def _eos(eos_id: Optional[int]):
  """EOS as a traced scalar (one compilation for any id); -1 matches no token."""
  return jnp.int32(-1 if eos_id is None else eos_id)


def _buffer(prompts, length: int):
  prompts = jnp.asarray(prompts, jnp.int32)
  if prompts.shape[1] > length:
    raise ValueError(f'prompts are {prompts.shape[1]} tokens wide, longer than length={length}.')
  return jnp.pad(prompts, ((0, 0), (0, length - prompts.shape[1])))


@functools.partial(jax.jit, static_argnames=('model', 'prefill', 'cached'))
def _decoder_sample(model, params, buffer, prompt_lengths, rng, temperature, top_k, top_p, eos_id,
                    *, prefill, cached):
  step, carry, _ = _decoder_stepper(model, params, buffer, prefill, cached)
  return _sample_loop(step, carry, buffer, prompt_lengths, prefill, rng, temperature, top_k,
                      top_p, eos_id, model.cfg.pad_id)


def sample_decoder(model, params, prompts, length: int, *, prompt_lengths=None,
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, rng=None,
                   eos_id: Optional[int] = None, cached: bool = True):
  """Continues right-padded prompts [b, P] of a DecoderOnly model up to `length` tokens.

  temperature 0 is greedy decoding. Returns tokens [b, length]: the prompt, the
  continuation, and pad after EOS.
  """
  model = _static(model, 'decoder')
  _check_length(model, length - 1, 'the last position fed to the model')
  prompt_lengths, prefill = _prompt_lengths(prompts, prompt_lengths, model.cfg.pad_id)
  rng = jax.random.key(0) if rng is None else rng
  return _decoder_sample(model, params, _buffer(prompts, length), prompt_lengths, rng,
                         jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p),
                         _eos(eos_id), prefill=prefill, cached=cached)


@functools.partial(jax.jit, static_argnames=('model', 'prefill', 'beam_size', 'cached'))
def _decoder_beam_search(model, params, buffer, prompt_lengths, alpha, eos_id, *, prefill,
                         beam_size, cached):
  step, carry, _ = _decoder_stepper(model, params, jnp.repeat(buffer, beam_size, axis=0), prefill,
                                    cached)
  return _beam_loop(step, carry, buffer, prompt_lengths, prefill, beam_size, alpha, eos_id,
                    model.cfg.pad_id)


def beam_search_decoder(model, params, prompts, length: int, *, prompt_lengths=None,
                        beam_size: int = 4, alpha: float = 0.6, eos_id: Optional[int] = None,
                        cached: bool = True):
  """Beam search continuing prompts [b, P] of a DecoderOnly model up to `length` tokens.

  Returns (sequences [b, beam_size, length] including the prompt, scores [b, beam_size]).
  """
  model = _static(model, 'decoder')
  _check_length(model, length - 1, 'the last position fed to the model')
  _check_beam(model, beam_size)
  prompt_lengths, prefill = _prompt_lengths(prompts, prompt_lengths, model.cfg.pad_id)
  return _decoder_beam_search(model, params, _buffer(prompts, length), prompt_lengths,
                              jnp.float32(alpha), _eos(eos_id), prefill=prefill,
                              beam_size=beam_size, cached=cached)


def _check_beam(model, beam_size: int):
  if not 1 <= beam_size <= model.cfg.vocab_size // 2:
    raise ValueError(f'beam_size={beam_size} must be between 1 and vocab_size / 2 = '
                     f'{model.cfg.vocab_size // 2}.')


def _seq2seq_buffer(inputs, max_decode_len: int):
  """[0, pad, ...]: the start token, then room for max_decode_len outputs."""
  return jnp.zeros((inputs.shape[0], max_decode_len + 1), jnp.int32)


@functools.partial(jax.jit, static_argnames=('model', 'max_decode_len', 'cached'))
def _seq2seq_sample(model, params, inputs, rng, temperature, top_k, top_p, eos_id, *,
                    max_decode_len, cached):
  buffer = _seq2seq_buffer(inputs, max_decode_len)
  step, carry = _seq2seq_stepper(model, params, inputs, buffer, cached)
  ones = jnp.ones(inputs.shape[:1], jnp.int32)
  out = _sample_loop(step, carry, buffer, ones, 1, rng, temperature, top_k, top_p, eos_id,
                     model.cfg.pad_id)
  return out[:, 1:]


def sample_seq2seq(model, params, inputs, max_decode_len: int, *, temperature: float = 0.0,
                   top_k: int = 0, top_p: float = 1.0, rng=None, eos_id: Optional[int] = None,
                   cached: bool = True):
  """Decodes a Transformer from padded source ids [b, ls]: encode once, then step.

  temperature 0 is greedy decoding. Returns output tokens [b, max_decode_len], pad after EOS.
  """
  model = _static(model, 'seq2seq')
  _check_length(model, max_decode_len, 'max_decode_len')
  _check_length(model, np.shape(inputs)[1], 'the source length')
  rng = jax.random.key(0) if rng is None else rng
  return _seq2seq_sample(model, params, jnp.asarray(inputs, jnp.int32), rng,
                         jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p),
                         _eos(eos_id), max_decode_len=max_decode_len, cached=cached)


@functools.partial(jax.jit, static_argnames=('model', 'max_decode_len', 'beam_size', 'cached'))
def _seq2seq_beam_search(model, params, inputs, alpha, eos_id, *, max_decode_len, beam_size,
                         cached):
  buffer = _seq2seq_buffer(inputs, max_decode_len)
  step, carry = _seq2seq_stepper(model, params, jnp.repeat(inputs, beam_size, axis=0),
                                 jnp.repeat(buffer, beam_size, axis=0), cached)
  ones = jnp.ones(inputs.shape[:1], jnp.int32)
  sequences, scores = _beam_loop(step, carry, buffer, ones, 1, beam_size, alpha, eos_id,
                                 model.cfg.pad_id)
  return sequences[..., 1:], scores


def beam_search_seq2seq(model, params, inputs, max_decode_len: int, *, beam_size: int = 4,
                        alpha: float = 0.6, eos_id: Optional[int] = None, cached: bool = True):
  """Beam search for a Transformer from padded source ids [b, ls].

  Returns (sequences [b, beam_size, max_decode_len], scores [b, beam_size]), best first.
  """
  model = _static(model, 'seq2seq')
  _check_length(model, max_decode_len, 'max_decode_len')
  _check_length(model, np.shape(inputs)[1], 'the source length')
  _check_beam(model, beam_size)
  return _seq2seq_beam_search(model, params, jnp.asarray(inputs, jnp.int32), jnp.float32(alpha),
                              _eos(eos_id), max_decode_len=max_decode_len, beam_size=beam_size,
                              cached=cached)


@functools.partial(jax.jit, static_argnames=('model', 'prefill', 'cached'))
def _step_logits(model, params, tokens, inputs, *, prefill, cached):
  n, length = tokens.shape
  if inputs is None:
    step, carry, first = _decoder_stepper(model, params, tokens, prefill, cached)
  else:
    step, carry = _seq2seq_stepper(model, params, inputs, tokens, cached)
    first = None

  def scan_step(carry, p):
    logits, carry = step(carry, tokens, p)
    return carry, logits

  _, logits = jax.lax.scan(scan_step, carry, jnp.arange(max(prefill - 1, 0), length))
  logits = jnp.swapaxes(logits, 0, 1)  # [n, steps, vocab]
  return logits if first is None else jnp.concatenate([first, logits], axis=1)


def step_logits(model, params, tokens, inputs=None, *, prefill: int = 1, cached: bool = True):
  """Logits [n, length, vocab] for teacher-forced `tokens` [n, length], computed by
  the very step functions decoding uses (prefill of `prefill - 1` tokens, then one
  token per step). `inputs` [n, ls] makes it seq2seq, where `tokens` are decoder
  inputs (0 first). Equal to the full forward pass; the tests check that."""
  model = _static(model, 'decoder' if inputs is None else 'seq2seq')
  _check_length(model, np.shape(tokens)[1], 'the token length')
  inputs = None if inputs is None else jnp.asarray(inputs, jnp.int32)
  return _step_logits(model, params, jnp.asarray(tokens, jnp.int32), inputs, prefill=prefill,
                      cached=cached)


# ---------------------------------------------------------------------------
# Text in, text out.


def _until_eos(ids, eos_id, pad_id):
  """Token ids up to (not including) EOS, without pad."""
  out = []
  for token in ids:
    if eos_id is not None and token == eos_id:
      break
    if token != pad_id:
      out.append(int(token))
  return out


def _bucket(width: int) -> int:
  """Next power of two (at least 8), so a few shapes cover all batches."""
  return max(8, 1 << (max(width, 1) - 1).bit_length())


def generate_text(model, params, tokenizer: Tokenizer, prompts: Sequence[str], *,
                  max_new_tokens: int = 200, method: str = 'sample', temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, beam_size: int = 4, alpha: float = 0.6,
                  seed: int = 0, eos_id: Optional[int] = None,
                  start_id: Optional[int] = None) -> list[str]:
  """Continuations (without the prompt) of each prompt, from a DecoderOnly model.

  method: 'greedy' | 'sample' (temperature, top_k, top_p) | 'beam' (beam_size,
  alpha). eos_id defaults to `tokenizer.eos_id` when it has one. `start_id`, when
  given, begins every prompt, as training examples begin: the data pipeline
  starts line-by-line LM examples (lm1b, text files) with <eos>, while windows of
  the Shakespeare stream start with no special token.
  """
  _check_method(method)
  pad_id = model.cfg.pad_id
  eos_id = getattr(tokenizer, 'eos_id', None) if eos_id is None else eos_id
  start = [] if start_id is None else [start_id]
  encoded = [start + list(tokenizer.encode(prompt)) for prompt in prompts]
  for prompt, ids in zip(prompts, encoded):
    if not ids:
      raise ValueError(f'prompt {prompt!r} encodes to no tokens; give a non-empty prompt or '
                       'a start_id.')
  lengths = np.array([len(ids) for ids in encoded], np.int32)
  width = int(lengths.max())
  tokens = np.full((len(encoded), width), pad_id, np.int32)
  for row, ids in enumerate(encoded):
    tokens[row, :len(ids)] = ids
  length = width + max_new_tokens
  if method == 'beam':
    sequences, _ = beam_search_decoder(model, params, tokens, length, prompt_lengths=lengths,
                                       beam_size=beam_size, alpha=alpha, eos_id=eos_id)
    out = np.asarray(sequences[:, 0])
  else:
    out = np.asarray(
        sample_decoder(model, params, tokens, length, prompt_lengths=lengths,
                       temperature=0.0 if method == 'greedy' else temperature, top_k=top_k,
                       top_p=top_p, rng=jax.random.key(seed), eos_id=eos_id))
  return [
      tokenizer.decode(_until_eos(row[n:n + max_new_tokens], eos_id, pad_id))
      for row, n in zip(out, lengths)
  ]


def _check_method(method: str):
  if method not in ('greedy', 'sample', 'beam'):
    raise ValueError(f'method={method!r} is unknown; use greedy, sample or beam.')


def translate(model, params, tokenizer: Union[Tokenizer, tuple[Tokenizer, Tokenizer]],
              sources: Sequence[str], *, method: str = 'beam', beam_size: int = 4,
              alpha: float = 0.6, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
              seed: int = 0, max_decode_len: Optional[int] = None, batch_size: int = 64,
              eos_id: Optional[int] = None, append_eos: bool = True) -> list[str]:
  """Outputs of a seq2seq Transformer for each source string.

  `tokenizer` is one shared tokenizer or a (source, target) pair. eos_id defaults
  to the target tokenizer's `eos_id`; `append_eos` ends each source with it, as
  the data pipeline ends every training source. Sources are decoded in
  batches of `batch_size`, padded to a power-of-two width; max_decode_len
  defaults to min(config.model.max_len, 2 * width + 8).
  """
  _check_method(method)
  source_tok, target_tok = tokenizer if isinstance(tokenizer, tuple) else (tokenizer, tokenizer)
  pad_id = model.cfg.pad_id
  eos_id = getattr(target_tok, 'eos_id', None) if eos_id is None else eos_id
  if append_eos and eos_id is None:
    raise ValueError('append_eos=True needs an eos_id; pass eos_id, a tokenizer with eos_id, '
                     'or append_eos=False.')
  encoded = [list(source_tok.encode(s)) + ([eos_id] if append_eos else []) for s in sources]
  outputs = []
  for start in range(0, len(encoded), batch_size):
    chunk = encoded[start:start + batch_size]
    width = _bucket(max(len(ids) for ids in chunk))
    # Fill the batch with copies of its first row: one shape, and rows that finish.
    rows = chunk + [chunk[0]] * (batch_size - len(chunk))
    inputs = np.full((batch_size, width), pad_id, np.int32)
    for row, ids in enumerate(rows):
      inputs[row, :len(ids)] = ids
    decode_len = max_decode_len or min(model.cfg.max_len, 2 * width + 8)
    if method == 'beam':
      sequences, _ = beam_search_seq2seq(model, params, inputs, decode_len, beam_size=beam_size,
                                         alpha=alpha, eos_id=eos_id)
      out = np.asarray(sequences[:, 0])
    else:
      out = np.asarray(
          sample_seq2seq(model, params, inputs, decode_len,
                         temperature=0.0 if method == 'greedy' else temperature, top_k=top_k,
                         top_p=top_p, rng=jax.random.fold_in(jax.random.key(seed), start),
                         eos_id=eos_id))
    outputs.extend(target_tok.decode(_until_eos(row, eos_id, pad_id)) for row in out[:len(chunk)])
  return outputs
