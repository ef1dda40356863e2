"""Autoregressive decoding on the KV cache: `sample` (greedy, top-k, top-p) and `beam_search`.

Both work on token ids for either generating variant, through one *stepper*
interface (`Stepper`): a decoder-only stepper continues a prompt buffer, a
seq2seq stepper encodes the sources once. Every stepper reads and writes one
token buffer `[n, length]`: it starts as the right-padded prompt (decoder-only)
or `[0, pad, ...]` (seq2seq: the decoder's first input is the start token 0, as
`shift_right` makes it in training), and position `p + 1` is filled from the
logits of the tokens `0..p`. Positions still inside a row's prompt are forced to
the prompt token, so rows of different prompt lengths decode together without
padding inside the cache.

A stepper's step function maps `(carry, buffer, p) -> (logits [n, vocab], carry)`:
- cached (the default): `carry` is the model's 'cache' collection; the tokens
  before the shortest prompt's end go through the cache in one prefill call,
  then each step feeds the one token at `p`, so token t costs O(t);
- uncached (`cached=False`, the reference for tests and benchmarks): `carry` is
  empty and each step runs the full decoder pass over the whole buffer (the
  seq2seq encoder still runs once).
The two loops (`jax.lax.while_loop` over a fixed length, stopping early once
every row has emitted `eos_id`) know nothing of the model, and each public entry
point is one `jax.jit`-compiled call.

The pad token is never generated (its logit is masked), so in every output the
tokens after a row's end are pad (0).

Beam search keeps `beam_size` live hypotheses per row and ranks finished ones
by log P(Y|X) / lp(Y) with GNMT's length penalty lp(Y) = ((5 + |Y|) / 6)^alpha
(Wu et al. 2016; the paper uses alpha = 0.6 and beam 4); |Y| counts the
generated tokens, EOS included. As in fairseq, an extension ending in EOS
finishes a hypothesis only when it ranks among the step's `beam_size` best
candidates, and a row stops once it has `beam_size` finished hypotheses; so beam
1 is exactly greedy decoding, for any alpha.

A masked LM does not generate: `mask_fills` scores every position of its inputs
in one pass and keeps the `top_k` likeliest tokens of each (BERT's masked-LM
prediction, Devlin et al. 2019, section 3.1, "Task #1"), what --mode=decode
prints for the masked ones.

Text in and out, and the rules on prompt, source and output lengths against
the trained context, are in generate.py.
"""

import functools
from typing import Any, Callable, NamedTuple, Optional

from flax import struct
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -1.0e7  # log-probability of impossible hypotheses; finite so sums stay finite.


def length_penalty(length, alpha: float):
  """GNMT length penalty ((5 + |Y|) / 6)^alpha."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0)**alpha


def _check_variant(model: nn.Module):
  if not model.cfg.generates:
    raise ValueError(f'config.model.variant={model.cfg.variant!r} models do not generate text; '
                     'decode a decoder or seq2seq model.')


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
# Steppers: one decoding problem, whatever the variant.


class Stepper(NamedTuple):
  """What the loops need: a step function, its carry and the buffer it fills."""
  step: Callable  # (carry, buffer [n, length], p) -> (logits [n, vocab] for p + 1, carry).
  carry: Any  # the 'cache' collection for n rows (cached), or () (uncached).
  buffer: jax.Array  # [n, length] prompt tokens (forced), then room to fill.
  prompt_lengths: jax.Array  # [n] forced tokens at the start of each row.
  prefill: int  # static: the loops start at position prefill - 1 (the shortest prompt's end).
  prefill_logits: Optional[jax.Array]  # [n, prefill - 1, vocab] of the prefill call, or None.


def _decoder_stepper(model, params, prompts, prompt_lengths, length: int, prefill: int,
                     cached: bool) -> Stepper:
  """A DecoderOnly model continuing right-padded prompts [n, P] up to `length` tokens."""
  variables = _variables(params)
  buffer = jnp.pad(prompts, ((0, 0), (0, length - prompts.shape[1])),
                   constant_values=model.cfg.pad_id)  # what rows hold after they end.
  if not cached:

    def full_step(carry, buffer, p):
      # Every position is real (segment 1); the causal mask hides positions > p.
      logits = model.apply(variables, buffer, segment_ids=jnp.ones_like(buffer))
      return _token_at(logits, p), carry

    return Stepper(full_step, (), buffer, prompt_lengths, prefill, None)

  def apply(cache, tokens):
    logits, mutated = model.apply({**variables, 'cache': cache}, tokens, decode=True,
                                  mutable=['cache'])
    return logits, mutated['cache']

  cache = _zeros_cache(
      lambda: model.init(jax.random.key(0), jnp.ones(buffer.shape, jnp.int32), decode=True))
  prefill_logits = None
  if prefill > 1:  # the tokens before position prefill - 1, in one call.
    prefill_logits, cache = apply(cache, buffer[:, :prefill - 1])

  def cached_step(cache, buffer, p):
    logits, cache = apply(cache, jax.lax.dynamic_slice_in_dim(buffer, p, 1, axis=1))
    return logits[:, 0], cache

  return Stepper(cached_step, cache, buffer, prompt_lengths, prefill, prefill_logits)


def _seq2seq_stepper(model, params, sources, length: int, cached: bool) -> Stepper:
  """A Transformer producing `length` tokens for padded sources [n, ls], encoded once."""
  variables = _variables(params)
  n = sources.shape[0]
  # The start token 0, then the outputs; padding where rows have ended.
  buffer = jnp.full((n, length + 1), model.cfg.pad_id, jnp.int32).at[:, 0].set(0)
  ones = jnp.ones((n,), jnp.int32)
  sources_segment_ids = (sources != model.cfg.pad_id).astype(jnp.int32)
  encoded = model.apply(variables, sources, sources_segment_ids, method='encode')  # [n, ls, d]
  if not cached:

    def full_step(carry, buffer, p):
      logits = model.apply(variables, encoded, sources_segment_ids, buffer,
                           targets_segment_ids=jnp.ones_like(buffer), method='decode')
      return _token_at(logits, p), carry

    return Stepper(full_step, (), buffer, ones, 1, None)

  def init(encoded, segment_ids):
    return model.init(jax.random.key(0), encoded, segment_ids, jnp.ones(buffer.shape, jnp.int32),
                      decode=True, method='decode')

  def cached_step(cache, buffer, p):
    tokens = jax.lax.dynamic_slice_in_dim(buffer, p, 1, axis=1)
    logits, mutated = model.apply({**variables, 'cache': cache}, encoded, sources_segment_ids,
                                  tokens, decode=True, method='decode', mutable=['cache'])
    return logits[:, 0], mutated['cache']

  return Stepper(cached_step, _zeros_cache(init, encoded, sources_segment_ids), buffer, ones, 1,
                 None)


def _stepper(model, params, inputs, prompt_lengths, length: int, prefill: int,
             cached: bool) -> Stepper:
  """The stepper of the model's variant: inputs are prompts (decoder) or sources (seq2seq)."""
  if model.cfg.variant == 'decoder':
    return _decoder_stepper(model, params, inputs, prompt_lengths, length, prefill, cached)
  return _seq2seq_stepper(model, params, inputs, length, cached)


def _outputs(model, buffer):
  """What a loop returns from its buffer [..., length]: seq2seq drops the start token."""
  return buffer if model.cfg.variant == 'decoder' else buffer[..., 1:]


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
  draw from softmax(logits / temperature) restricted by top-k and top-p.

  The settings may be traced, so each branch is a lax.cond: greedy decoding
  draws nothing, and without top-k or top-p nothing sorts the vocabulary
  (filter_logits would keep every logit; its sort was 70% of decoding GPT-2
  small at batch 32 on a CPU)."""
  def draw(tempered):
    filtered = jax.lax.cond((top_k > 0) | (top_p < 1.0),
                            lambda x: filter_logits(x, top_k, top_p), lambda x: x, tempered)
    return jax.random.categorical(rng, filtered, axis=-1).astype(jnp.int32)

  return jax.lax.cond(temperature > 0, lambda x: draw(x / temperature),
                      lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32), logits)


def _forbid_padding(logits, pad_id: int, eos_id, low):
  """`logits` [..., vocab] with the padding id set to `low`, unless it is also
  the EOS id (GPT-2's <|endoftext|> is both): then it stays, so rows can end."""
  is_pad = (jnp.arange(logits.shape[-1]) == pad_id) & (pad_id != eos_id)
  return jnp.where(is_pad, jnp.asarray(low, logits.dtype), logits)


def _sample_loop(stepper: Stepper, rng, temperature, top_k, top_p, eos_id, pad_id):
  """Fills the stepper's buffer [n, length] from position `prefill` on; returns it."""
  prompt_lengths, length = stepper.prompt_lengths, stepper.buffer.shape[1]

  def cond(state):
    p, _, _, done = state
    return (p + 1 < length) & ~jnp.all(done)

  def body(state):
    p, buffer, carry, done = state
    logits, carry = stepper.step(carry, buffer, p)
    logits = _forbid_padding(logits, pad_id, eos_id, -jnp.inf)
    token = sample_logits(jax.random.fold_in(rng, p), logits, temperature, top_k, top_p)
    forced = p + 1 < prompt_lengths
    token = jnp.where(forced, _token_at(buffer, p + 1), jnp.where(done, pad_id, token))
    buffer = jax.lax.dynamic_update_slice_in_dim(buffer, token[:, None], p + 1, axis=1)
    done = done | (~forced & (token == eos_id))
    return p + 1, buffer, carry, done

  done = jnp.zeros(prompt_lengths.shape, bool)
  state = (jnp.int32(stepper.prefill - 1), stepper.buffer, stepper.carry, done)
  return jax.lax.while_loop(cond, body, state)[1]


# ---------------------------------------------------------------------------
# Beam search.


@struct.dataclass
class BeamState:
  """The beam search loop's state for b rows of k = beam_size hypotheses."""
  p: jax.Array  # [] position of the last filled token.
  alive: jax.Array  # [b, k, length] live hypotheses.
  alive_lp: jax.Array  # [b, k] their log-probabilities.
  finished: jax.Array  # [b, k, length] hypotheses that ended in EOS, best first.
  finished_scores: jax.Array  # [b, k] their GNMT scores; NEG_INF in empty slots.
  finished_flags: jax.Array  # [b, k] whether a slot holds a finished hypothesis.
  carry: Any  # the stepper's carry for b * k rows, beams of a row together.


def _gather_beams(tree, beams, batch: int, beam_size: int):
  """Reorders every [batch * beam_size, ...] leaf by beams [batch, beam_size]; scalars stay."""

  def gather(x):
    if x.ndim == 0:
      return x
    x = x.reshape((batch, beam_size) + x.shape[1:])
    x = jnp.take_along_axis(x, beams.reshape(beams.shape + (1,) * (x.ndim - 2)), axis=1)
    return x.reshape((batch * beam_size,) + x.shape[2:])

  return jax.tree.map(gather, tree)


def _beam_loop(stepper: Stepper, beam_size: int, alpha, eos_id, pad_id):
  """Beam search on a stepper whose rows are each input repeated beam_size times.

  Returns (sequences [b, beam_size, length], scores [b, beam_size]): hypotheses
  that ended in EOS first, best first, then live ones cut at `length`.
  """
  k = beam_size
  buffer, prompt_lengths = stepper.buffer[::k], stepper.prompt_lengths[::k]  # [b, length], [b]
  b, length = buffer.shape
  alive = jnp.repeat(buffer[:, None], k, axis=1)
  # Only beam 0 is live at first, so the k beams do not start as k copies.
  state = BeamState(p=jnp.int32(stepper.prefill - 1), alive=alive,
                    alive_lp=jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (b, 1)),
                    finished=alive, finished_scores=jnp.full((b, k), NEG_INF),
                    finished_flags=jnp.zeros((b, k), bool), carry=stepper.carry)

  def cond(s: BeamState):
    return (s.p + 1 < length) & ~jnp.all(s.finished_flags.all(1))

  def body(s: BeamState):
    p = s.p
    logits, carry = stepper.step(s.carry, s.alive.reshape(b * k, length), p)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits).reshape(b, k, vocab)
    log_probs = _forbid_padding(log_probs, pad_id, eos_id, NEG_INF)
    forced = p + 1 < prompt_lengths  # [b]
    forced_log_probs = jnp.where(jnp.arange(vocab) == _token_at(buffer, p + 1)[:, None], 0.0,
                                 NEG_INF)  # [b, vocab]
    log_probs = jnp.where(forced[:, None, None], forced_log_probs[:, None], log_probs)

    # The 2k best extensions: even if k of them end in EOS, k stay live.
    candidates = (s.alive_lp[..., None] + log_probs).reshape(b, k * vocab)
    top_lp, top_index = jax.lax.top_k(candidates, 2 * k)  # [b, 2k], best first
    top_beam, top_token = top_index // vocab, top_index % vocab
    top_seqs = jnp.take_along_axis(s.alive, top_beam[..., None], axis=1)  # [b, 2k, length]
    top_seqs = jax.lax.dynamic_update_slice_in_dim(top_seqs, top_token[..., None], p + 1, axis=2)
    eos = (top_token == eos_id) & ~forced[:, None]
    settled = s.finished_flags.all(1, keepdims=True)  # rows that already have k finished.
    ends = eos & (jnp.arange(2 * k) < k) & (top_lp > NEG_INF / 2) & ~settled

    alive_lp, chosen = jax.lax.top_k(jnp.where(eos, NEG_INF, top_lp), k)
    alive = jnp.take_along_axis(top_seqs, chosen[..., None], axis=1)
    carry = _gather_beams(carry, jnp.take_along_axis(top_beam, chosen, axis=1), b, k)

    generated = p + 2 - prompt_lengths  # tokens generated so far, EOS included. [b]
    scores = jnp.where(ends, top_lp / length_penalty(generated, alpha)[:, None], NEG_INF)
    finished_scores, chosen = jax.lax.top_k(jnp.concatenate([s.finished_scores, scores], 1), k)
    finished = jnp.take_along_axis(jnp.concatenate([s.finished, top_seqs], 1), chosen[..., None],
                                   1)
    finished_flags = jnp.take_along_axis(jnp.concatenate([s.finished_flags, ends], 1), chosen, 1)
    return BeamState(p=p + 1, alive=alive, alive_lp=alive_lp, finished=finished,
                     finished_scores=finished_scores, finished_flags=finished_flags, carry=carry)

  s = jax.lax.while_loop(cond, body, state)
  # Finished hypotheses first, best first; live ones (cut at `length`) fill the rest.
  max_penalty = length_penalty(length - prompt_lengths, alpha)  # [b]
  scores = jnp.concatenate([s.finished_scores, s.alive_lp / max_penalty[:, None]], 1)  # [b, 2k]
  flags = jnp.concatenate([s.finished_flags, jnp.zeros_like(s.finished_flags)], 1)
  order = jnp.lexsort((-scores, ~flags), axis=1)[:, :k]
  sequences = jnp.take_along_axis(jnp.concatenate([s.finished, s.alive], 1), order[..., None], 1)
  return sequences, jnp.take_along_axis(scores, order, 1)


# ---------------------------------------------------------------------------
# Jitted entry points on token ids.


def _check_length(model, length: int, what: str):
  """`length` positions fit the model's positional table (ModelConfig.max_positions)."""
  limit = model.cfg.max_positions
  if limit is not None and length > limit:
    raise ValueError(f'{what} is {length}, longer than config.model.max_len={limit}; '
                     'decode fewer tokens or raise max_len.')


def _prepare(model, inputs, length: int, prompt_lengths):
  """Checks the inputs on the host: (static model, inputs, prompt lengths, prefill)."""
  _check_variant(model)
  inputs = np.asarray(inputs, np.int32)
  if model.cfg.variant == 'seq2seq':
    if prompt_lengths is not None:
      raise ValueError('prompt_lengths is for decoder prompts; seq2seq sources take none.')
    _check_length(model, length, 'the output length')
    _check_length(model, inputs.shape[1], 'the source length')
    return model, jnp.asarray(inputs), None, 1
  _check_length(model, length - 1, 'the last position fed to the model')
  if inputs.shape[1] > length:
    raise ValueError(f'prompts are {inputs.shape[1]} tokens wide, longer than length={length}; '
                     'raise length.')
  if prompt_lengths is None:
    prompt_lengths = (inputs != model.cfg.pad_id).sum(1)
  prompt_lengths = np.asarray(prompt_lengths, np.int32)
  if prompt_lengths.min() < 1:
    raise ValueError('a decoder-only prompt is empty; give every row at least one token '
                     '(e.g. a BOS token).')
  return model, jnp.asarray(inputs), jnp.asarray(prompt_lengths), int(prompt_lengths.min())


def _eos(eos_id: Optional[int]):
  """EOS as a traced scalar (one compilation for any id); -1 matches no token."""
  return jnp.int32(-1 if eos_id is None else eos_id)


def _check_beam(model, beam_size: int):
  if not 1 <= beam_size <= model.cfg.max_beam:
    raise ValueError(f'beam_size={beam_size} must be between 1 and vocab_size / 2 = '
                     f'{model.cfg.max_beam} (ModelConfig.max_beam).')


@functools.partial(jax.jit, static_argnames=('model', 'length', 'prefill', 'cached'))
def _sample(model, params, inputs, prompt_lengths, rng, temperature, top_k, top_p, eos_id, *,
            length, prefill, cached):
  stepper = _stepper(model, params, inputs, prompt_lengths, length, prefill, cached)
  return _outputs(model, _sample_loop(stepper, rng, temperature, top_k, top_p, eos_id,
                                      model.cfg.pad_id))


def sample(model, params, inputs, length: int, *, prompt_lengths=None, temperature: float = 0.0,
           top_k: int = 0, top_p: float = 1.0, rng=None, eos_id: Optional[int] = None,
           cached: bool = True):
  """Greedy decoding (temperature 0) or sampling (temperature, top_k, top_p).

  inputs: right-padded prompts [b, P] of a decoder (`prompt_lengths` [b]
  defaults to the non-pad count), or padded sources [b, ls] of a seq2seq model.
  Returns tokens [b, length], pad after EOS: a decoder's prompt and continuation,
  or a seq2seq model's outputs.
  """
  model, inputs, prompt_lengths, prefill = _prepare(model, inputs, length, prompt_lengths)
  rng = jax.random.key(0) if rng is None else rng
  return _sample(model, params, inputs, prompt_lengths, rng, jnp.float32(temperature),
                 jnp.int32(top_k), jnp.float32(top_p), _eos(eos_id), length=length,
                 prefill=prefill, cached=cached)


@functools.partial(jax.jit,
                   static_argnames=('model', 'length', 'prefill', 'beam_size', 'cached'))
def _beam_search(model, params, inputs, prompt_lengths, alpha, eos_id, *, length, prefill,
                 beam_size, cached):
  repeat = lambda x: None if x is None else jnp.repeat(x, beam_size, axis=0)
  stepper = _stepper(model, params, repeat(inputs), repeat(prompt_lengths), length, prefill,
                     cached)
  sequences, scores = _beam_loop(stepper, beam_size, alpha, eos_id, model.cfg.pad_id)
  return _outputs(model, sequences), scores


def beam_search(model, params, inputs, length: int, *, prompt_lengths=None, beam_size: int = 4,
                alpha: float = 0.6, eos_id: Optional[int] = None, cached: bool = True):
  """Beam search with GNMT's length penalty; inputs as for `sample`.

  Returns (sequences [b, beam_size, length], scores [b, beam_size]), best first.
  """
  model, inputs, prompt_lengths, prefill = _prepare(model, inputs, length, prompt_lengths)
  _check_beam(model, beam_size)
  return _beam_search(model, params, inputs, prompt_lengths, jnp.float32(alpha), _eos(eos_id),
                      length=length, prefill=prefill, beam_size=beam_size, cached=cached)


@functools.partial(jax.jit, static_argnames=('model', 'prefill', 'cached'))
def _step_logits(model, params, tokens, inputs, *, prefill, cached):
  n, length = tokens.shape
  if inputs is None:
    lengths = jnp.full((n,), length, jnp.int32)
    stepper = _decoder_stepper(model, params, tokens, lengths, length, prefill, cached)
  else:
    stepper = _seq2seq_stepper(model, params, inputs, length - 1, cached)

  def scan_step(carry, p):
    logits, carry = stepper.step(carry, tokens, p)
    return carry, logits

  _, logits = jax.lax.scan(scan_step, stepper.carry, jnp.arange(max(prefill - 1, 0), length))
  logits = jnp.swapaxes(logits, 0, 1)  # [n, steps, vocab]
  first = stepper.prefill_logits
  return logits if first is None else jnp.concatenate([first, logits], axis=1)


def step_logits(model, params, tokens, inputs=None, *, prefill: int = 1, cached: bool = True):
  """Logits [n, length, vocab] for teacher-forced `tokens` [n, length], computed by
  the very steppers decoding uses (prefill of `prefill - 1` tokens, then one
  token per step). `inputs` [n, ls] makes it seq2seq, where `tokens` are decoder
  inputs (0 first). Equal to the full forward pass; the tests check that."""
  _check_variant(model)
  if (inputs is None) != (model.cfg.variant == 'decoder'):
    raise ValueError(f'step_logits got a {model.cfg.variant} model; pass inputs (sources [n, ls]) '
                     'for seq2seq and none for a decoder.')
  _check_length(model, np.shape(tokens)[1], 'the token length')
  inputs = None if inputs is None else jnp.asarray(inputs, jnp.int32)
  return _step_logits(model, params, jnp.asarray(tokens, jnp.int32), inputs, prefill=prefill,
                      cached=cached)


# ---------------------------------------------------------------------------
# Masked-LM fills.


@functools.partial(jax.jit, static_argnames=('model', 'top_k'))
def _mask_fills(model, params, tokens, allowed, *, top_k):
  logits = model.apply(_variables(params), tokens)  # [n, l, vocab]; padding: pad_id.
  log_probs = jax.nn.log_softmax(jnp.where(allowed, logits, -jnp.inf), axis=-1)
  log_probs, ids = jax.lax.top_k(log_probs, top_k)
  return ids, jnp.exp(log_probs)


def mask_fills(model, params, tokens, top_k: int, exclude=()) -> tuple:
  """(ids [n, l, top_k] int32, probabilities [n, l, top_k] float32): for every
  position of `tokens` [n, l] (right-padded with the model's pad_id), the top_k
  likeliest tokens there, likeliest first, under the masked LM's softmax
  renormalised over the ids not in `exclude` (a tokenizer's special ids, which
  are never text). One jitted forward pass; read them at the masked positions.

  Raises:
    ValueError: the model is not a masked LM, or top_k is not in 1..the ids left.
  """
  if not model.cfg.fills_masks:
    raise ValueError(f'config.model.variant={model.cfg.variant!r}, encoder_head='
                     f'{model.cfg.encoder_head!r} is not a masked LM; fill masks with an encoder '
                     'of encoder_head=mlm.')
  allowed = np.ones(model.cfg.vocab_size, bool)
  allowed[[i for i in exclude if 0 <= i < len(allowed)]] = False
  if not 1 <= top_k <= allowed.sum():
    raise ValueError(f'top_k={top_k} must be in 1..{int(allowed.sum())} (the ids a fill may be).')
  ids, probs = _mask_fills(model, params, jnp.asarray(tokens, jnp.int32), jnp.asarray(allowed),
                           top_k=top_k)
  return np.asarray(ids), np.asarray(probs)
