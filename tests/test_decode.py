"""Decoding on the KV cache: agreement with the full forward pass, the greedy /
sampling / beam search relations, EOS handling, text in, text out (generate.py),
the length rules against the trained context, and token-for-token agreement with
the per-variant decoders `sample` and `beam_search` replaced.

The models are tiny and random (untied output projections, so their greedy
outputs vary by row and position and sometimes end in EOS). Shapes are shared
between tests so that each decoder compiles once.
"""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import config as config_lib
from transformer_jax import decode
from transformer_jax import generate
from transformer_jax.models import transformer

EOS = 1
VOCAB = 13
PROMPTS = np.array([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10], [11, 2, 0, 0, 0]])
PROMPT_LENGTHS = [3, 5, 2]
LENGTH = 16  # decoder-only: prompt + continuation.
# Sources as the data pipeline makes them: EOS ends every source.
SOURCES = np.array([[3, 4, 5, EOS, 0, 0, 0, 0], [6, 7, 8, 9, 10, 11, 12, EOS],
                    [11, 12, EOS, 0, 0, 0, 0, 0], [2, 3, 5, 7, 11, EOS, 0, 0]])
DECODE_LEN = 12  # seq2seq outputs.


def tiny_model(variant, **overrides):
  """A small model with a frozen (hashable) config, so tests can jit it as static."""
  m = config_lib.model_config()
  m.update(variant=variant, num_layers=1, d_model=16, num_heads=2, vocab_size=VOCAB, max_len=32,
           dropout_rate=0.0, share_embeddings=False)
  m.update(overrides)
  return transformer.build_model(m)


@functools.partial(jax.jit, static_argnums=(0, 1))
def init(model, seed, *args):
  return model.init(jax.random.key(seed), *args)['params']


@functools.partial(jax.jit, static_argnums=0)
def full_logits(model, params, tokens, inputs=None):
  """The full forward pass with every position real (segment 1). For seq2seq,
  `tokens` are the targets and the model shifts them right itself."""
  ones = jnp.ones_like(tokens)
  if inputs is None:
    return model.apply({'params': params}, tokens, segment_ids=ones)
  return model.apply({'params': params}, inputs, tokens, targets_segment_ids=ones)


@pytest.fixture(scope='module')
def lm():
  """Two layers, rotary positions and pre-LN: the decoder-only LM users train today."""
  model = tiny_model('decoder', num_layers=2, position='rotary', norm='pre')
  return model, init(model, 4, jnp.ones((2, 8), jnp.int32))


@pytest.fixture(scope='module')
def seq2seq():
  model = tiny_model('seq2seq')
  return model, init(model, 1, jnp.ones((2, 6), jnp.int32), jnp.ones((2, 6), jnp.int32))


def gnmt_scores(model, params, outputs, inputs=None, starts=None, alpha=0.6):
  """log P(Y) / ((5 + |Y|) / 6)^alpha of outputs[row, start:] through the first EOS,
  from the full forward pass. Decoder-only rows start after their prompt."""
  outputs = np.asarray(outputs)
  log_probs = np.asarray(jax.nn.log_softmax(full_logits(model, params, outputs, inputs)))
  if inputs is None:  # logits at t - 1 predict token t.
    log_probs = np.pad(log_probs[:, :-1], ((0, 0), (1, 0), (0, 0)))
  starts = [0] * len(outputs) if starts is None else starts
  scores = []
  for row, lps, start in zip(outputs, log_probs, starts):
    generated = row[start:]
    ends = np.nonzero(generated == EOS)[0]
    n = ends[0] + 1 if len(ends) else len(generated)
    total = lps[np.arange(start, start + n), generated[:n]].sum()
    scores.append(total / ((5 + n) / 6)**alpha)
  return np.array(scores)


# --- The cache equals the full forward pass. ---------------------------------


def test_decoder_step_logits_equal_full_forward(lm):
  model, params = lm
  tokens = decode.sample(model, params, PROMPTS, LENGTH)
  cached = decode.step_logits(model, params, tokens, prefill=4)  # 3 in one call, then steps.
  np.testing.assert_allclose(cached, full_logits(model, params, tokens), atol=1e-5)


def test_seq2seq_step_logits_equal_full_forward(seq2seq):
  model, params = seq2seq
  targets = jnp.asarray(np.random.RandomState(1).randint(1, VOCAB, (4, DECODE_LEN)))
  decoder_inputs = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]  # 0 first, as shift_right does.
  cached = decode.step_logits(model, params, decoder_inputs, SOURCES)
  np.testing.assert_allclose(cached, full_logits(model, params, targets, SOURCES), atol=1e-5)


# The normalisation and logit options (issue 26), each small enough to bite (caps of
# 0.5 and 1 on scores and logits of order 1); local attention's window shorter than
# the row, so the ring cache is exercised.
NEW_OPTIONS = [{'norm_type': 'rmsnorm'}, {'qk_norm': True},
               {'qk_norm': True, 'norm_type': 'rmsnorm', 'position': 'rotary'},
               {'attn_logit_softcap': 0.5},
               {'attn_logit_softcap': 0.5, 'attention': 'local', 'attention_window': 3},
               {'final_logit_softcap': 1.0}, {'init': 'gpt2', 'norm': 'pre'}]


@pytest.mark.parametrize('options', NEW_OPTIONS, ids=lambda o: '-'.join(map(str, o.values())))
def test_decoder_step_logits_equal_full_forward_with_each_new_option(options):
  model = tiny_model('decoder', num_layers=2, **options)
  params = init(model, 2, jnp.ones((2, 8), jnp.int32))
  tokens = jnp.asarray(np.random.RandomState(2).randint(1, VOCAB, (3, LENGTH)))
  cached = decode.step_logits(model, params, tokens, prefill=4)
  np.testing.assert_allclose(cached, full_logits(model, params, tokens), atol=1e-5)


def test_seq2seq_step_logits_equal_full_forward_with_the_new_options():
  model = tiny_model('seq2seq', norm_type='rmsnorm', qk_norm=True, attn_logit_softcap=0.5,
                     final_logit_softcap=1.0)
  params = init(model, 3, jnp.ones((2, 6), jnp.int32), jnp.ones((2, 6), jnp.int32))
  targets = jnp.asarray(np.random.RandomState(3).randint(1, VOCAB, (4, DECODE_LEN)))
  decoder_inputs = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  cached = decode.step_logits(model, params, decoder_inputs, SOURCES)
  np.testing.assert_allclose(cached, full_logits(model, params, targets, SOURCES), atol=1e-5)


def test_decoder_cached_greedy_equals_uncached(lm):
  model, params = lm
  cached = decode.sample(model, params, PROMPTS, LENGTH)
  uncached = decode.sample(model, params, PROMPTS, LENGTH, cached=False)
  np.testing.assert_array_equal(cached, uncached)
  for row, n in enumerate(PROMPT_LENGTHS):
    np.testing.assert_array_equal(cached[row, :n], PROMPTS[row, :n])


def test_seq2seq_cached_greedy_equals_uncached(seq2seq):
  model, params = seq2seq
  cached = decode.sample(model, params, SOURCES, DECODE_LEN)
  uncached = decode.sample(model, params, SOURCES, DECODE_LEN, cached=False)
  np.testing.assert_array_equal(cached, uncached)


def test_greedy_picks_the_argmax_of_the_full_forward(lm, seq2seq):
  model, params = lm
  out = np.asarray(decode.sample(model, params, PROMPTS, LENGTH))
  logits = np.array(full_logits(model, params, out))
  logits[..., 0] = -np.inf  # pad is never generated.
  for row, n in enumerate(PROMPT_LENGTHS):
    np.testing.assert_array_equal(out[row, n:], logits[row, n - 1:-1].argmax(-1))
  model, params = seq2seq
  out = np.asarray(decode.sample(model, params, SOURCES, DECODE_LEN))
  logits = np.array(full_logits(model, params, out, SOURCES))
  logits[..., 0] = -np.inf
  np.testing.assert_array_equal(out, logits.argmax(-1))


def test_a_prompt_decodes_as_if_alone(lm):
  # Row 0 (3 tokens) went through the step loop after a 2-token prefill; alone
  # (3 copies, so the shapes match) its whole prompt is prefilled.
  model, params = lm
  together = decode.sample(model, params, PROMPTS, LENGTH)
  alone = decode.sample(model, params, np.tile(PROMPTS[0, :3], (3, 1)), LENGTH)
  np.testing.assert_array_equal(together[0], alone[0])


# --- Sampling. -----------------------------------------------------------------


def test_filter_logits():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.2]]))
  kept = lambda k, p: np.isfinite(decode.filter_logits(logits, k, p))[0].tolist()
  assert kept(0, 1.0) == [True, True, True]
  assert kept(2, 1.0) == [True, True, False]
  assert kept(0, 0.7) == [True, True, False]  # 0.5 < 0.7; 0.5 + 0.3 reaches it.
  assert kept(0, 0.5) == [True, False, False]
  assert kept(0, 1e-9) == [True, False, False]  # the top token always stays.
  assert kept(1, 1.0) == [True, False, False]


def test_sample_logits_draws_only_from_the_nucleus():
  logits = jnp.tile(jnp.log(jnp.array([0.4, 0.3, 0.2, 0.1])), (4000, 1))
  draws = np.asarray(jax.jit(decode.sample_logits)(jax.random.key(0), logits, 1.0, 0, 0.65))
  assert set(draws.tolist()) == {0, 1}
  np.testing.assert_allclose((draws == 0).mean(), 0.4 / 0.7, atol=0.03)


def test_top_k_1_top_p_0_and_temperature_0_equal_greedy(lm, seq2seq):
  model, params = lm
  greedy = decode.sample(model, params, PROMPTS, LENGTH)
  for kwargs in ({'top_k': 1}, {'top_p': 1e-6}, {'temperature': 1e-5}):
    sampled = decode.sample(model, params, PROMPTS, LENGTH, **{
        'temperature': 1.0, **kwargs
    }, rng=jax.random.key(7))
    np.testing.assert_array_equal(sampled, greedy, err_msg=str(kwargs))
  model, params = seq2seq
  greedy = decode.sample(model, params, SOURCES, DECODE_LEN)
  sampled = decode.sample(model, params, SOURCES, DECODE_LEN, temperature=1e-5,
                          rng=jax.random.key(7))
  np.testing.assert_array_equal(sampled, greedy)


def test_sampling_is_seeded(lm, seq2seq):
  model, params = lm
  draw = lambda seed: np.asarray(
      decode.sample(model, params, PROMPTS, LENGTH, temperature=1.0, rng=jax.random.key(seed)))
  np.testing.assert_array_equal(draw(0), draw(0))
  assert not np.array_equal(draw(0), draw(1))
  model, params = seq2seq
  draw = lambda seed: np.asarray(
      decode.sample(model, params, SOURCES, DECODE_LEN, temperature=1.0,
                    rng=jax.random.key(seed)))
  np.testing.assert_array_equal(draw(3), draw(3))
  assert not np.array_equal(draw(3), draw(4))


# --- EOS. ----------------------------------------------------------------------


def assert_stops_at_eos(free, out, starts, eos):
  """`out` equals `free` (decoded without EOS) up to each row's first generated
  EOS, and is pad after it."""
  stopped = 0
  for row, start in enumerate(starts):
    hits = np.nonzero(free[row, start:] == eos)[0]
    end = start + hits[0] if len(hits) else free.shape[1]
    np.testing.assert_array_equal(out[row, :end + 1], free[row, :end + 1])
    assert (out[row, end + 1:] == 0).all()
    stopped += end + 1 < free.shape[1]
  return stopped


def test_eos_stops_a_row_and_pads_after_it(lm, seq2seq):
  model, params = lm
  free = np.asarray(decode.sample(model, params, PROMPTS, LENGTH))
  for eos in {EOS, int(free[0, 3])}:
    out = np.asarray(decode.sample(model, params, PROMPTS, LENGTH, eos_id=eos))
    assert assert_stops_at_eos(free, out, PROMPT_LENGTHS, eos) >= 1
  model, params = seq2seq
  free = np.asarray(decode.sample(model, params, SOURCES, DECODE_LEN))
  out = np.asarray(decode.sample(model, params, SOURCES, DECODE_LEN, eos_id=EOS))
  assert assert_stops_at_eos(free, out, [0] * 4, EOS) >= 2


def test_a_prompt_token_equal_to_eos_does_not_stop_the_row(lm):
  model, params = lm
  free = decode.sample(model, params, PROMPTS, LENGTH)
  out = decode.sample(model, params, PROMPTS, LENGTH, eos_id=int(PROMPTS[1, 1]))
  np.testing.assert_array_equal(out[1, :6], free[1, :6])


def test_a_padding_id_that_is_also_eos_is_sampled_and_ends_the_row(lm):
  """GPT-2 pads with <|endoftext|>: generation may emit it, and it ends the row;
  a padding id that is not EOS is never emitted."""
  model, params = lm
  free = np.asarray(decode.sample(model, params, PROMPTS, LENGTH))
  token = int(free[0, PROMPT_LENGTHS[0]])  # row 0's first greedy token.
  padded_by = tiny_model('decoder', num_layers=2, position='rotary', norm='pre', pad_id=token)
  out = np.asarray(decode.sample(padded_by, params, PROMPTS, LENGTH, eos_id=token,
                                prompt_lengths=PROMPT_LENGTHS))
  assert out[0, PROMPT_LENGTHS[0]] == token  # emitted: row 0's first greedy token.
  for row, start in enumerate(PROMPT_LENGTHS):  # nothing but padding after the first one.
    hits = np.nonzero(out[row, start:] == token)[0]
    if len(hits):
      assert (out[row, start + hits[0]:] == token).all(), out[row]
  beam, _ = decode.beam_search(padded_by, params, PROMPTS, LENGTH, beam_size=1, eos_id=token,
                               prompt_lengths=PROMPT_LENGTHS)
  for row, start in enumerate(PROMPT_LENGTHS):  # greedy through the first EOS.
    hits = np.nonzero(out[row, start:] == token)[0]
    end = start + hits[0] + 1 if len(hits) else LENGTH
    np.testing.assert_array_equal(beam[row, 0, :end], out[row, :end])
  never = np.asarray(decode.sample(padded_by, params, PROMPTS, LENGTH, eos_id=EOS,
                                  prompt_lengths=PROMPT_LENGTHS))
  for row, start in enumerate(PROMPT_LENGTHS):  # up to EOS, never the padding id.
    generated = never[row, start:]
    hits = np.nonzero(generated == EOS)[0]
    assert token not in generated[:hits[0] if len(hits) else None], never[row]


# --- Beam search. --------------------------------------------------------------


def test_beam_1_equals_greedy(lm, seq2seq):
  model, params = lm
  for eos in (None, EOS):
    greedy = decode.sample(model, params, PROMPTS, LENGTH, eos_id=eos)
    beam, _ = decode.beam_search(model, params, PROMPTS, LENGTH, beam_size=1, eos_id=eos)
    np.testing.assert_array_equal(beam[:, 0], greedy)
  model, params = seq2seq
  for eos in (None, EOS):
    greedy = decode.sample(model, params, SOURCES, DECODE_LEN, eos_id=eos)
    beam, _ = decode.beam_search(model, params, SOURCES, DECODE_LEN, beam_size=1, eos_id=eos)
    np.testing.assert_array_equal(beam[:, 0], greedy)


def test_seq2seq_beam_scores_are_the_models_and_beat_greedy(seq2seq):
  model, params = seq2seq
  beams, scores = decode.beam_search(model, params, SOURCES, DECODE_LEN, beam_size=4, alpha=0.6,
                                     eos_id=EOS)
  beams, scores = np.asarray(beams), np.asarray(scores)
  for k in range(4):  # each reported score is the model's GNMT score of that hypothesis.
    np.testing.assert_allclose(gnmt_scores(model, params, beams[:, k], SOURCES), scores[:, k],
                               rtol=1e-4)
    for row in beams[:, k]:  # pad after EOS.
      ends = np.nonzero(row == EOS)[0]
      assert not len(ends) or (row[ends[0] + 1:] == 0).all()
  greedy = decode.sample(model, params, SOURCES, DECODE_LEN, eos_id=EOS)
  greedy_scores = gnmt_scores(model, params, greedy, SOURCES)
  assert (scores[:, 0] >= greedy_scores - 1e-5).all()
  assert (scores[:, 0] > greedy_scores + 1e-3).any()  # and it does search.


def test_decoder_beam_search_with_prompts(lm):
  model, params = lm
  beams, scores = decode.beam_search(model, params, PROMPTS, LENGTH, beam_size=4, eos_id=EOS)
  beams, scores = np.asarray(beams), np.asarray(scores)
  for row, n in enumerate(PROMPT_LENGTHS):
    np.testing.assert_array_equal(beams[row, :, :n], np.tile(PROMPTS[row, :n], (4, 1)))
  best = gnmt_scores(model, params, beams[:, 0], starts=PROMPT_LENGTHS)
  np.testing.assert_allclose(best, scores[:, 0], rtol=1e-4)
  greedy = decode.sample(model, params, PROMPTS, LENGTH, eos_id=EOS)
  assert (best >= gnmt_scores(model, params, greedy, starts=PROMPT_LENGTHS) - 1e-5).all()


def test_length_variant_and_beam_checks(lm, seq2seq):
  model, params = seq2seq  # sinusoidal positions: a table of max_len rows.
  with pytest.raises(ValueError, match='the output length is 40, longer than .*max_len=32'):
    decode.sample(model, params, SOURCES, 40)
  with pytest.raises(ValueError, match='prompt_lengths is for decoder prompts'):
    decode.sample(model, params, SOURCES, DECODE_LEN, prompt_lengths=[1, 1, 1, 1])
  with pytest.raises(ValueError, match='step_logits got a seq2seq model; pass inputs'):
    decode.step_logits(model, params, SOURCES)
  model, params = lm
  with pytest.raises(ValueError, match='beam_size=7'):
    decode.beam_search(model, params, PROMPTS, LENGTH, beam_size=7)
  with pytest.raises(ValueError, match='prompt is empty'):
    decode.sample(model, params, np.zeros((1, 3), np.int32), LENGTH)
  with pytest.raises(ValueError, match="variant='encoder' models do not generate text"):
    decode.beam_search(tiny_model('encoder'), params, PROMPTS, LENGTH)


# --- Text in, text out. -----------------------------------------------------------

NEWLINE = 12  # shares 'k''s id: the tests only need it to be a token.


class CharTokenizer:
  """pad 0, EOS 1, then 'a', 'b', ... as 2, 3, ...; a newline is 12."""
  pad_id = 0
  eos_id = EOS

  def encode(self, text):
    return [NEWLINE if c == '\n' else ord(c) - ord('a') + 2 for c in text]

  def decode(self, ids):
    return ''.join(chr(i - 2 + ord('a')) for i in ids)


def encode_source(text):
  """A seq2seq source as the pipeline makes it: EOS ends it."""
  return CharTokenizer().encode(text) + [EOS]


def text_until_eos(tokenizer, ids):
  ids = [int(t) for t in ids]
  ids = ids[:ids.index(EOS)] if EOS in ids else ids
  return tokenizer.decode([t for t in ids if t != 0])


def test_generate_text(lm):
  model, params = lm
  tokenizer = CharTokenizer()
  prompts = ['bcd', 'efghi', 'ja']  # PROMPTS
  generate_text = functools.partial(generate.generate_text, model, params, tokenizer,
                                    encode=tokenizer.encode, context=32)
  for method in ('greedy', 'beam'):
    texts = generate_text(prompts, method=method, max_new_tokens=LENGTH - 5)
    if method == 'greedy':
      ids = decode.sample(model, params, PROMPTS, LENGTH, eos_id=EOS)
    else:
      ids = decode.beam_search(model, params, PROMPTS, LENGTH, eos_id=EOS)[0][:, 0]
    ids = np.asarray(ids)
    assert texts == [
        text_until_eos(tokenizer, row[n:n + LENGTH - 5]) for row, n in zip(ids, PROMPT_LENGTHS)
    ]
  with pytest.raises(ValueError, match='method'):
    generate_text(prompts, method='nucleus')
  # One output per prompt, in order; an empty prompt starts from a newline.
  texts = generate_text(['', 'bcd', '\n'], method='greedy', max_new_tokens=LENGTH - 5)
  assert len(texts) == 3 and texts[0] == texts[2]
  assert generate_text([], method='greedy') == []
  with pytest.raises(ValueError, match=r"prompt '' and a newline both encode to no tokens"):
    generate.generate_text(model, params, tokenizer, [''], encode=lambda s: [], context=32)


def test_translate(seq2seq):
  model, params = seq2seq
  tokenizer = CharTokenizer()
  sources = [tokenizer.decode([t for t in row if t > EOS]) for row in SOURCES]
  translate = functools.partial(generate.translate, model, params, tokenizer,
                                encode=encode_source, context=32, max_decode_len=DECODE_LEN)
  texts = {}
  for method in ('greedy', 'beam'):
    texts[method] = translate(sources, method=method, batch_size=4)
    if method == 'greedy':
      ids = decode.sample(model, params, SOURCES, DECODE_LEN, eos_id=EOS)
    else:
      ids = decode.beam_search(model, params, SOURCES, DECODE_LEN, eos_id=EOS)[0][:, 0]
    assert texts[method] == [text_until_eos(tokenizer, row) for row in np.asarray(ids)]
  # Batches of 2, the last one filled up with a copy of its first row: same outputs.
  assert translate(sources[:3], method='greedy', batch_size=2) == texts['greedy'][:3]
  # One output per source, in order, an empty one ([<eos>]) included.
  outputs = translate(['', sources[0], ''], method='greedy', batch_size=4)
  assert len(outputs) == 3 and outputs[0] == outputs[2] and outputs[1] == texts['greedy'][0]


# --- Length rules: never past the trained context. --------------------------------


@pytest.mark.parametrize('position', ['sinusoidal', 'learned', 'rotary', 'none'])
def test_prompts_longer_than_the_context_slide_a_window(position, monkeypatch):
  # max_len == context: a learned or sinusoidal table has no row for position 16.
  context = 16
  model = tiny_model('decoder', position=position, max_len=context)
  params = init(model, 2, jnp.ones((2, 8), jnp.int32))
  tokenizer = CharTokenizer()
  lengths = []
  for name in ('sample', 'beam_search'):
    original = getattr(decode, name)

    def spy(model, params, inputs, length, *args, original=original, **kwargs):
      lengths.append(length)
      return original(model, params, inputs, length, *args, **kwargs)

    monkeypatch.setattr(decode, name, spy)
  prompts = ['bcdefghijk' * 3, '', 'b']  # 30 tokens, a newline, 1 token.
  for method in ('greedy', 'sample', 'beam'):
    texts = generate.generate_text(model, params, tokenizer, prompts, encode=tokenizer.encode,
                                   context=context, max_new_tokens=40, method=method, eos_id=-1)
    assert [len(text) for text in texts] == [40, 40, 40]  # no EOS: every token generated.
  assert len(lengths) == 3 * 5  # windows of 8 new tokens after the last 8.
  assert max(lengths) <= context  # a buffer of L tokens feeds positions 0..L-2.


def test_a_cut_prompt_and_a_cut_output_are_said(lm, seq2seq, caplog):
  # Neither is silent: a prompt whose start the first window drops, and an
  # output that reaches the length limit without <eos> (eos_id=-1: none does).
  tokenizer = CharTokenizer()
  model, params = lm
  prompts = ['bcd', 'bcdefghijk' * 2 + 'bcde']  # 3 and 24 tokens.
  with caplog.at_level(logging.WARNING):
    generate.generate_text(model, params, tokenizer, prompts, method='greedy',
                           encode=tokenizer.encode, context=32, max_new_tokens=8)
    assert not caplog.records  # 24 + 8 tokens fit the context.
    generate.generate_text(model, params, tokenizer, prompts, method='greedy',
                           encode=tokenizer.encode, context=32, max_new_tokens=9)
  assert [r.getMessage() for r in caplog.records] == [
      '1 of 2 prompts (prompt 1) with 9 new tokens pass the context of 32 tokens, so the model sees '
      'only the last 16 tokens of each; shorten them or ask for fewer tokens.']
  caplog.clear()
  model, params = seq2seq
  sources = ['bcd', 'efghi', 'jk']
  with caplog.at_level(logging.WARNING):
    generate.translate(model, params, tokenizer, sources, encode=encode_source, context=32,
                       method='greedy', max_decode_len=DECODE_LEN, batch_size=4, eos_id=-1)
  assert [r.getMessage().split(' (max_decode_len')[0] for r in caplog.records] == [
      '3 of 3 outputs (output 0, 1, 2) reached the length limit']


def test_inputs_with_symbols_the_vocabulary_lacks_are_said(lm, seq2seq, caplog):
  # They were read as <unk> without a word ('a' is <unk> here).
  tokenizer = CharTokenizer()
  tokenizer.unk_id = 2
  texts = ['ab', 'bc', 'a']
  with caplog.at_level(logging.WARNING):
    generate.generate_text(*lm, tokenizer, texts, encode=tokenizer.encode, context=32,
                           method='greedy', max_new_tokens=2)
    generate.translate(*seq2seq, tokenizer, texts, encode=encode_source, context=32,
                       method='greedy', max_decode_len=DECODE_LEN, batch_size=4)
  message = ("2 of 3 inputs (input 0, 2) hold symbols the run's vocabulary lacks; the model "
             'reads them as <unk>. Remove or replace them.')
  assert [r.getMessage() for r in caplog.records if 'vocabulary' in r.getMessage()] == [message] * 2
  caplog.clear()
  tokenizer.unk_id = EOS  # GPT-2's <|endoftext|> is <unk> too: no text encodes to it.
  with caplog.at_level(logging.WARNING):
    generate.generate_text(*lm, tokenizer, texts, encode=tokenizer.encode, context=32,
                           method='greedy', max_new_tokens=2)
  assert not caplog.records


def test_sources_up_to_the_context_decode_and_longer_ones_fail():
  # max_len == context == 12: padding to a power of two (16) would overflow the table.
  context = 12
  model = tiny_model('seq2seq', max_len=context)
  params = init(model, 3, jnp.ones((2, 6), jnp.int32), jnp.ones((2, 6), jnp.int32))
  tokenizer = CharTokenizer()
  translate = functools.partial(generate.translate, model, params, tokenizer,
                                encode=encode_source, context=context, method='greedy')
  sources = ['bcdefghijkb'[:n] for n in range(context)]  # 1..12 tokens with <eos>.
  assert len(translate(sources, batch_size=len(sources))) == context
  with pytest.raises(ValueError, match=r'^source 1 has 13 tokens \(with <eos>\), more than the '
                     r'12 the model was trained on \(config.seq_len\); shorten it.$'):
    translate(['b', 'bcdefghijkbc'])
