"""Numerical parity with PyTorch's own Transformer modules, same weights, float32.

The PyTorch side is built only from torch.nn modules (nn.Transformer,
nn.TransformerEncoder) plus the sinusoidal table from the PyTorch tutorial's
formula; our weights are copied in and the logits must agree to 1e-5 with
padding masks in play.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch  # the test extra; CI installs the CPU build (torch==2.13.0).

from transformer_jax import config as config_lib
from transformer_jax.models import layers
from transformer_jax.models.transformer import build_model

D_MODEL, HEADS, LAYERS, VOCAB = 32, 4, 2, 23
EPS = 1e-6


def model_config(variant, **overrides):
  m = config_lib.model_config()
  m.update(variant=variant, num_layers=LAYERS, d_model=D_MODEL, num_heads=HEADS, ffn_ratio=2.0,
           vocab_size=VOCAB, max_len=64, dropout_rate=0.0, layer_norm_epsilon=EPS,
           share_embeddings=True, encoder_head='mlm')
  m.update(overrides)
  return m


def t(x):
  return torch.tensor(np.asarray(x), dtype=torch.float32)


def torch_positional_table(max_len, d_model):
  """The PyTorch tutorial's PositionalEncoding buffer (an independent formula)."""
  position = torch.arange(max_len).unsqueeze(1)
  div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
  pe = torch.zeros(max_len, d_model)
  pe[:, 0::2] = torch.sin(position * div_term)
  pe[:, 1::2] = torch.cos(position * div_term)
  return pe


def load_attention(torch_mha, p):
  """Our per-head Q/K/V/O kernels -> torch's packed in_proj and out_proj."""
  d = D_MODEL
  w = [np.asarray(p[n]['kernel']).reshape(d, d).T for n in ('query', 'key', 'value')]
  b = [np.asarray(p[n]['bias']).reshape(d) for n in ('query', 'key', 'value')]
  torch_mha.in_proj_weight.data = t(np.concatenate(w, 0))
  torch_mha.in_proj_bias.data = t(np.concatenate(b, 0))
  torch_mha.out_proj.weight.data = t(np.asarray(p['out']['kernel']).reshape(d, d).T)
  torch_mha.out_proj.bias.data = t(p['out']['bias'])


def load_norm(torch_norm, p):
  torch_norm.weight.data = t(p['norm']['scale'])
  torch_norm.bias.data = t(p['norm']['bias'])


def load_ffn(torch_layer, p):
  torch_layer.linear1.weight.data = t(np.asarray(p['expand']['kernel']).T)
  torch_layer.linear1.bias.data = t(p['expand']['bias'])
  torch_layer.linear2.weight.data = t(np.asarray(p['compress']['kernel']).T)
  torch_layer.linear2.bias.data = t(p['compress']['bias'])


def load_self_attention_layer(torch_layer, p):
  """An EncoderLayer, or a DecoderLayer without cross-attention, into nn.TransformerEncoderLayer."""
  load_attention(torch_layer.self_attn, p['self_attention'])
  load_norm(torch_layer.norm1, p['self_attention_add_norm'])
  load_ffn(torch_layer, p['feed_forward'])
  load_norm(torch_layer.norm2, p['feed_forward_add_norm'])


def load_decoder_layer(torch_layer, p):
  load_attention(torch_layer.self_attn, p['self_attention'])
  load_norm(torch_layer.norm1, p['self_attention_add_norm'])
  load_attention(torch_layer.multihead_attn, p['cross_attention'])
  load_norm(torch_layer.norm2, p['cross_attention_add_norm'])
  load_ffn(torch_layer, p['feed_forward'])
  load_norm(torch_layer.norm3, p['feed_forward_add_norm'])


def torch_encoder_stack(norm, activation, params_stack, final_norm_params=None):
  layer = torch.nn.TransformerEncoderLayer(
      D_MODEL, HEADS, dim_feedforward=2 * D_MODEL, dropout=0.0, activation=activation,
      layer_norm_eps=EPS, batch_first=True, norm_first=(norm == 'pre'))
  final = None
  if final_norm_params is not None:
    final = torch.nn.LayerNorm(D_MODEL, eps=EPS)
    final.weight.data = t(final_norm_params['scale'])
    final.bias.data = t(final_norm_params['bias'])
  stack = torch.nn.TransformerEncoder(layer, LAYERS, norm=final, enable_nested_tensor=False)
  for i, torch_layer in enumerate(stack.layers):
    load_self_attention_layer(torch_layer, params_stack[f'layer_{i}'])
  return stack.eval()


def embed(embedding, tokens):
  """Scaled token embedding plus the sinusoidal table, on the torch side."""
  e = t(embedding)
  return e[torch.tensor(tokens)] * math.sqrt(D_MODEL) + torch_positional_table(64, D_MODEL)[
      :tokens.shape[1]]


def padded_tokens(rng, lengths, length):
  tokens = np.zeros((len(lengths), length), np.int32)
  for i, n in enumerate(lengths):
    tokens[i, :n] = rng.integers(1, VOCAB, n)
  return tokens


def assert_close_at_real_positions(ours, theirs, tokens):
  real = tokens != 0
  np.testing.assert_allclose(np.asarray(ours)[real], theirs[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('norm,activation', [('post', 'relu'), ('pre', 'gelu')])
def test_encoder_only_matches_torch_transformer_encoder(norm, activation):
  cfg = model_config('encoder', norm=norm, activation=activation)
  tokens = padded_tokens(np.random.default_rng(0), [9, 6, 3], 9)
  model = build_model(cfg)
  params = model.init(jax.random.key(1), tokens)['params']
  ours = model.apply({'params': params}, tokens)

  stack = torch_encoder_stack(norm, activation, params['encoder'],
                              params['encoder'].get('final_norm'))
  e = params['embedding']['embedding']
  with torch.no_grad():
    hidden = stack(embed(e, tokens), src_key_padding_mask=torch.tensor(tokens == 0))
    theirs = (hidden @ t(e).T).numpy()
  assert_close_at_real_positions(ours, theirs, tokens)


@pytest.mark.parametrize('norm,activation', [('post', 'relu'), ('pre', 'gelu')])
def test_decoder_only_matches_torch_encoder_with_causal_mask(norm, activation):
  cfg = model_config('decoder', norm=norm, activation=activation)
  tokens = padded_tokens(np.random.default_rng(2), [8, 5], 8)
  model = build_model(cfg)
  params = model.init(jax.random.key(3), tokens)['params']
  ours = model.apply({'params': params}, tokens)

  stack = torch_encoder_stack(norm, activation, params['decoder'],
                              params['decoder'].get('final_norm'))
  e = params['embedding']['embedding']
  causal = torch.triu(torch.ones(8, 8, dtype=torch.bool), diagonal=1)  # True = may not attend.
  with torch.no_grad():
    hidden = stack(embed(e, tokens), mask=causal, is_causal=True,
                   src_key_padding_mask=torch.tensor(tokens == 0))
    theirs = (hidden @ t(e).T).numpy()
  assert_close_at_real_positions(ours, theirs, tokens)


def test_seq2seq_matches_torch_transformer():
  cfg = model_config('seq2seq')
  rng = np.random.default_rng(4)
  source = padded_tokens(rng, [7, 4, 2], 7)
  target = padded_tokens(rng, [6, 6, 3], 6)
  model = build_model(cfg)
  params = model.init(jax.random.key(5), source, target)['params']
  ours = model.apply({'params': params}, source, target)

  transformer = torch.nn.Transformer(
      D_MODEL, HEADS, LAYERS, LAYERS, dim_feedforward=2 * D_MODEL, dropout=0.0,
      activation='relu', layer_norm_eps=EPS, batch_first=True)
  # The paper's post-LN stacks end in their last sublayer's LayerNorm: no extra norm.
  transformer.encoder.norm = None
  transformer.decoder.norm = None
  for i, layer in enumerate(transformer.encoder.layers):
    load_self_attention_layer(layer, params['encoder'][f'layer_{i}'])
  for i, layer in enumerate(transformer.decoder.layers):
    load_decoder_layer(layer, params['decoder'][f'layer_{i}'])
  transformer.eval()

  e = params['shared_embedding']['embedding']
  decoder_inputs = np.pad(target, ((0, 0), (1, 0)))[:, :-1]  # shifted right, 0 first.
  source_pad = torch.tensor(source == 0)
  with torch.no_grad():
    hidden = transformer(
        embed(e, source), embed(e, decoder_inputs),
        tgt_mask=torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1), tgt_is_causal=True,
        src_key_padding_mask=source_pad, memory_key_padding_mask=source_pad,
        tgt_key_padding_mask=torch.tensor(target == 0))
    theirs = (hidden @ t(e).T).numpy()
  assert_close_at_real_positions(ours, theirs, target)
  assert jnp.isfinite(ours).all()


def test_rmsnorm_equals_torchs():
  """layers.RMSNorm against torch.nn.RMSNorm with the same scale and epsilon."""
  rng = np.random.default_rng(5)
  x = rng.normal(1.0, 2.0, (3, 7, D_MODEL)).astype(np.float32)
  scale = rng.normal(1.0, 0.3, D_MODEL).astype(np.float32)
  theirs = torch.nn.RMSNorm(D_MODEL, eps=EPS)
  with torch.no_grad():
    theirs.weight.copy_(torch.from_numpy(scale))
    expected = theirs(torch.from_numpy(x)).numpy()
  ours = layers.RMSNorm(EPS).apply({'params': {'scale': jnp.asarray(scale)}}, jnp.asarray(x))
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
