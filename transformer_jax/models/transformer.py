"""Encoder and decoder stacks, and the three variants composed from them.

- `EncoderOnly` (BERT-style): Encoder + masked-LM or classification head; with
  `cfg.patch_size` the same Encoder on image patches (ViT, Dosovitskiy et al. 2020).
- `DecoderOnly` (GPT-style): Decoder without cross-attention + LM head.
- `Transformer` (seq2seq, the paper's model): Encoder + Decoder + LM head.

Batches carry `segment_ids` (0 = padding, 1.. = example number in a packed row)
and `positions` (index of each token within its own example); a sentence pair's
rows also carry `token_types` (0 = sentence A, 1 = sentence B: BERT's segments,
read by the encoder's `Embedder`). When they are absent, positions are 0..l-1,
every token is of type 0 and segments come from `tokens != pad_id`, except in
`DecoderOnly`: its rows are right-padded and causal, so padding never reaches a
real position and every token is read as real (GPT-2's padding id is its
<|endoftext|>, a real token where the text has one).
"""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer_jax import config as config_lib
from transformer_jax.models.layers import (GPT2_STDDEV, AddNorm, Dropout, FeedForward,
                                           MultiHeadAttention, PatchEmbedding, PositionalEncoding,
                                           TokenEmbedding, activation_fn, attention_mask,
                                           compute_dtype, matrix_init, norm_layer, soft_cap)


def default_segments(tokens, pad_id, segment_ids=None, positions=None):
  """Fills in segment ids [b, l] and positions [b, l] for unpacked rows."""
  if segment_ids is None:
    segment_ids = (tokens != pad_id).astype(jnp.int32)
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return segment_ids, positions


def shift_right(targets, segment_ids):
  """Decoder input: targets moved one step right, 0 at the start of every example."""
  shifted = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
  starts = segment_ids != jnp.pad(segment_ids, ((0, 0), (1, 0)))[:, :-1]
  return jnp.where(starts, 0, shifted)


def rematerialised(layer_class, cfg, static_argnums):
  """The layer class itself, or wrapped in nn.remat per `cfg.remat`: 'full'
  recomputes every activation in the backward pass, 'dots' keeps the outputs of
  the weight matmuls and recomputes the rest (attention scores, norms, FFN
  activations), trading compute for memory on long sequences."""
  if cfg.remat == 'none':
    return layer_class
  policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable if cfg.remat == 'dots' else None
  return nn.remat(layer_class, policy=policy, static_argnums=static_argnums)


class EncoderLayer(nn.Module):
  """Self-attention (of kind `cfg.attention`) then FFN, each wrapped in AddNorm."""
  cfg: config_lib.ModelConfig

  @nn.compact
  def __call__(self, x, mask, segment_ids, positions, deterministic: bool = True):
    residuals = 2 * self.cfg.encoder_layers  # the stack's residual sublayers (cfg.init).
    attention = MultiHeadAttention(self.cfg, kind=self.cfg.attention, residuals=residuals,
                                   name='self_attention')
    x = AddNorm(self.cfg, name='self_attention_add_norm')(
        x, lambda h: attention(h, h, mask, segment_ids=segment_ids, positions_q=positions,
                               positions_kv=positions, deterministic=deterministic),
        deterministic)
    ffn = FeedForward(self.cfg, residuals, name='feed_forward')
    return AddNorm(self.cfg, name='feed_forward_add_norm')(
        x, lambda h: ffn(h, deterministic), deterministic)


class DecoderLayer(nn.Module):
  """Masked self-attention (of kind `cfg.attention`), encoder-decoder attention
  (seq2seq only; always full, as in Longformer's encoder-decoder), then FFN.

  Without `encoded` (decoder-only models) the cross-attention sublayer is absent.
  """
  cfg: config_lib.ModelConfig
  cross_attention: bool = True

  @nn.compact
  def __call__(self, x, self_mask, segment_ids, positions, encoded=None, cross_mask=None,
               deterministic: bool = True, decode: bool = False):
    cfg = self.cfg
    # the stack's residual sublayers, 2 or 3 per layer (cfg.init).
    residuals = (3 if self.cross_attention else 2) * cfg.decoder_layers
    attention = MultiHeadAttention(cfg, causal=True, kind=cfg.attention, residuals=residuals,
                                   name='self_attention')
    x = AddNorm(cfg, name='self_attention_add_norm')(
        x, lambda h: attention(h, h, self_mask, segment_ids=segment_ids, positions_q=positions,
                               positions_kv=positions, deterministic=deterministic,
                               decode=decode), deterministic)
    if self.cross_attention:
      # Q from the decoder, K/V from the encoder; no positions are rotated here.
      cross = MultiHeadAttention(cfg, residuals=residuals, name='cross_attention')
      x = AddNorm(cfg, name='cross_attention_add_norm')(
          x, lambda h: cross(h, encoded, cross_mask, positions_q=positions,
                             positions_kv=None, deterministic=deterministic), deterministic)
    ffn = FeedForward(cfg, residuals, name='feed_forward')
    return AddNorm(cfg, name='feed_forward_add_norm')(
        x, lambda h: ffn(h, deterministic), deterministic)


def token_embedding(cfg, **kwargs) -> TokenEmbedding:
  """The model's token embedding (scaled by sqrt(d_model) unless
  `cfg.scale_embeddings` is off; N(0, 0.02^2) at the start with `cfg.init='gpt2'`)."""
  return TokenEmbedding(cfg.vocab_size, cfg.d_model, compute_dtype(cfg),
                        scale=cfg.scale_embeddings,
                        stddev=GPT2_STDDEV if cfg.init == 'gpt2' else None, **kwargs)


class Embedder(nn.Module):
  """Token embedding + positional encoding (+ segment, LayerNorm) + dropout.

  The paper: scaled token embedding + sinusoids + dropout. BERT (Devlin et al.
  2019, section 3, "Input/Output Representations", figure 2): "the sum of the
  corresponding token, segment, and position embeddings", the segment embedding
  E_A or E_B a learned vector per sentence of a pair (`cfg.token_types` of them,
  the `token_type_embedding` table), then a LayerNorm (`cfg.embedding_norm`).
  GPT-2 (Radford et al. 2019): token + learned position.
  tokens, positions [b, l], token_types [b, l] (the segment of each token; None:
  every token is of type 0, a single sentence) -> [b, l, d].
  """
  cfg: config_lib.ModelConfig
  embedding: Optional[TokenEmbedding] = None

  @nn.compact
  def __call__(self, tokens, positions, token_types=None, deterministic: bool = True):
    cfg = self.cfg
    embed = self.embedding or token_embedding(cfg, name='token_embedding')
    x = PositionalEncoding(cfg, name='positional_encoding')(embed(tokens), positions)
    if token_types is not None and cfg.token_types < 2:
      raise ValueError(f'token_types are given, but config.model.token_types={cfg.token_types} '
                       'embeds fewer than two segments; set it to 2 for sentence pairs.')
    if cfg.token_types:
      table = self.param('token_type_embedding', nn.initializers.normal(0.02),
                         (cfg.token_types, cfg.d_model))  # E_A, E_B, ...
      x = x + (table[0] if token_types is None else
               jnp.take(table, token_types, axis=0)).astype(x.dtype)
    if cfg.embedding_norm:
      x = norm_layer(cfg, 'embedding_norm')(x)
    return Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class ImageEmbedder(nn.Module):
  """The Vision Transformer's input (Dosovitskiy et al. 2020, section 3.1, eq. 1):

    z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos, then dropout,

  patches embedded by `PatchEmbedding`; the learned [CLS] vector x_class only with
  `cfg.pooling='cls'`; E_pos by `PositionalEncoding` (learned as ViT, the paper's 1-D
  sinusoids over the raster order, 2-D sinusoids, or none; rotary is applied in
  attention). images [b, H, W, C] -> (z_0 [b, l, d], segment_ids [b, l] all 1,
  positions [b, l] = 0..l-1), l = N (+1 with [CLS], which comes first).
  """
  cfg: config_lib.ModelConfig

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    cfg = self.cfg
    x = PatchEmbedding(cfg.patch_size, cfg.d_model, compute_dtype(cfg), cfg.use_bias,
                       GPT2_STDDEV if cfg.init == 'gpt2' else None,
                       name='patch_embedding')(images)  # [b, N, d]
    b = x.shape[0]
    if cfg.pooling == 'cls':
      x_class = self.param('cls_token', nn.initializers.zeros, (1, 1, cfg.d_model))
      x = jnp.concatenate([jnp.broadcast_to(x_class.astype(x.dtype), (b, 1, cfg.d_model)), x], 1)
    positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
    x = PositionalEncoding(cfg, name='positional_encoding')(x, positions)
    if cfg.embedding_norm:
      x = norm_layer(cfg, 'embedding_norm')(x)
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    return x, jnp.ones(x.shape[:2], jnp.int32), positions


class Encoder(nn.Module):
  """An embedder, then N EncoderLayers (and a final LayerNorm for pre-LN).

  The embedder is text's `Embedder` (tokens [b, l], with their segment ids,
  positions and, for sentence pairs, token types) or, with `cfg.patch_size`, the
  ViT's `ImageEmbedder` (images [b, H, W, C]; segments and positions made there);
  the stack after it is the same for both. -> [b, l, d].
  """
  cfg: config_lib.ModelConfig
  embedding: Optional[TokenEmbedding] = None

  @nn.compact
  def __call__(self, inputs, segment_ids=None, positions=None, token_types=None,
               deterministic: bool = True):
    cfg = self.cfg
    if cfg.patch_size:
      x, segment_ids, positions = ImageEmbedder(cfg, name='embedder')(inputs, deterministic)
    else:
      segment_ids, positions = default_segments(inputs, cfg.pad_id, segment_ids, positions)
      x = Embedder(cfg, self.embedding, name='embedder')(inputs, positions, token_types,
                                                         deterministic)
    # Full attention reads a [b, 1, l, l] mask; local and linear, the segment ids alone.
    mask = attention_mask(segment_ids, segment_ids, causal=False) if (
        cfg.attention == 'full') else None
    layer = rematerialised(EncoderLayer, cfg, static_argnums=(5,))  # deterministic
    for i in range(cfg.encoder_layers):
      x = layer(cfg, name=f'layer_{i}')(x, mask, segment_ids, positions, deterministic)
    if cfg.norm == 'pre':
      x = norm_layer(cfg, 'final_norm')(x)
    return x  # [b, l, d]


class Decoder(nn.Module):
  """Embedding, then N DecoderLayers with masked self-attention (+ final LN for pre-LN).

  `decode=True` runs on the KV cache: `tokens` are the next token(s), whose
  positions continue from the cache's own counter.
  """
  cfg: config_lib.ModelConfig
  cross_attention: bool = True
  embedding: Optional[TokenEmbedding] = None

  @nn.compact
  def __call__(self, tokens, segment_ids=None, positions=None, encoded=None,
               encoder_segment_ids=None, deterministic: bool = True, decode: bool = False):
    cfg = self.cfg
    if decode:
      positions = self._decode_positions(tokens)
      segment_ids = jnp.ones_like(tokens)
      self_mask = None  # the cache builds its own causal mask.
    else:
      packed = segment_ids is not None
      if not packed and not self.cross_attention:  # decoder-only: no token is padding.
        segment_ids = jnp.ones_like(tokens)  # (see the module doc)
      segment_ids, positions = default_segments(tokens, cfg.pad_id, segment_ids, positions)
      # Unpacked rows are right-padded, so causality alone keeps every real query
      # off the padding. cuDNN then gets no mask tensor: it would take one as a
      # bias [b, 1, l, l] and compute that bias's gradient too (MultiHeadAttention
      # builds the causal mask for XLA).
      self_mask = attention_mask(segment_ids, segment_ids, causal=True) if (
          cfg.attention == 'full' and (packed or cfg.attention_impl != 'cudnn')) else None
    cross_mask = None
    if self.cross_attention:
      cross_mask = attention_mask(segment_ids, encoder_segment_ids, causal=False)
    x = Embedder(cfg, self.embedding, name='embedder')(tokens, positions,
                                                       deterministic=deterministic)
    layer = rematerialised(DecoderLayer, cfg, static_argnums=(7, 8))  # deterministic, decode
    for i in range(cfg.decoder_layers):
      x = layer(cfg, self.cross_attention, name=f'layer_{i}')(
          x, self_mask, segment_ids, positions, encoded, cross_mask, deterministic, decode)
    if cfg.norm == 'pre':
      x = norm_layer(cfg, 'final_norm')(x)
    return x  # [b, l, d]

  def _decode_positions(self, tokens):
    initialised = self.has_variable('cache', 'position')
    position = self.variable('cache', 'position', lambda: jnp.array(0, jnp.int32))
    new = tokens.shape[1]
    positions = position.value + jnp.broadcast_to(jnp.arange(new), tokens.shape)
    if initialised:
      position.value = position.value + new
    return positions


class OutputProjection(nn.Module):
  """The pre-softmax linear transformation: tied to the embedding, or its own.
  [b, l, d] -> float32 logits [b, l, num_outputs].

  `cfg.head_transform` puts BERT's MLM head transform before it (Devlin et al.
  2019, section 3.1, as their released code: dense d -> d, the model's
  activation, LayerNorm); `cfg.output_bias` adds a bias per output to a tied
  projection (BERT's decoder bias; GPT-2's tied head has none); the logits are
  soft-capped last with `cfg.final_logit_softcap` (`soft_cap`).
  """
  cfg: config_lib.ModelConfig
  num_outputs: int
  embedding: Optional[TokenEmbedding] = None

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dtype = compute_dtype(cfg)
    if cfg.head_transform:
      x = activation_fn(cfg.activation)(nn.Dense(cfg.d_model, dtype=dtype, name='transform',
                                                  **matrix_init(cfg))(x))
      x = norm_layer(cfg, 'transform_norm')(x)
    if self.embedding is None:
      logits = nn.Dense(self.num_outputs, use_bias=cfg.use_bias, dtype=dtype, name='logits',
                        **matrix_init(cfg))(x).astype(jnp.float32)
    else:
      logits = self.embedding.attend(x).astype(jnp.float32)
      if cfg.output_bias:
        logits = logits + self.param('bias', nn.initializers.zeros, (self.num_outputs,))
    return soft_cap(logits, cfg.final_logit_softcap)


class DecoderOnly(nn.Module):
  """GPT-style causal language model. `__call__(inputs) -> logits [b, l, vocab]`."""
  cfg: config_lib.ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embedding = token_embedding(cfg)
    self.decoder = Decoder(cfg, cross_attention=False, embedding=self.embedding)
    self.project = OutputProjection(cfg, cfg.vocab_size,
                                    self.embedding if cfg.share_embeddings else None)

  def __call__(self, inputs, segment_ids=None, positions=None, deterministic: bool = True,
               decode: bool = False):
    x = self.decoder(inputs, segment_ids, positions, deterministic=deterministic, decode=decode)
    return self.project(x)


class EncoderOnly(nn.Module):
  """BERT-style encoder with a masked-LM head (logits [b, l, vocab]) or a
  sequence-classification head over pooled outputs (logits [b, num_classes]):
  the mean of the real tokens' outputs or the first token's, then (with
  `cfg.pooler`, BERT's pooler: Devlin et al. 2019, section 3) dense + tanh.

  With `cfg.patch_size` the inputs are images [b, H, W, C] and this is the
  Vision Transformer (Dosovitskiy et al. 2020, section 3.1): the same Encoder
  over the patches (`ImageEmbedder`), pooled as the [CLS] vector's output
  (`pooling='cls'`, eq. 4: y = LN(z_L^0) with pre-LN's final norm) or the mean
  of the patches' (`'mean'`), into the linear classifier.

  A sentence pair's rows carry `token_types` [b, l] (0 for sentence A, 1 for B:
  BERT's segments, added by the `Embedder`); without them every token is of type 0."""
  cfg: config_lib.ModelConfig

  def setup(self):
    cfg = self.cfg
    self.embedding = None if cfg.patch_size else token_embedding(cfg)
    self.encoder = Encoder(cfg, embedding=self.embedding)
    if not cfg.classifies:
      self.project = OutputProjection(cfg, cfg.vocab_size,
                                      self.embedding if cfg.share_embeddings else None)
    else:
      if cfg.pooler:
        self.pooler = nn.Dense(cfg.d_model, dtype=compute_dtype(cfg), name='pooler',
                               **matrix_init(cfg))
      self.project = nn.Dense(cfg.num_classes, dtype=compute_dtype(cfg), name='classifier',
                              **matrix_init(cfg))

  def __call__(self, inputs, segment_ids=None, positions=None, token_types=None,
               deterministic: bool = True):
    if not self.cfg.patch_size:
      segment_ids, positions = default_segments(inputs, self.cfg.pad_id, segment_ids, positions)
    x = self.encoder(inputs, segment_ids, positions, token_types, deterministic)
    if not self.cfg.classifies:
      return self.project(x)
    if self.cfg.pooling in ('first', 'cls'):
      pooled = x[:, 0]
    elif segment_ids is None:  # image patches: every token is real.
      pooled = x.mean(1)
    else:
      real = (segment_ids > 0)[..., None].astype(x.dtype)
      pooled = (x * real).sum(1) / jnp.maximum(real.sum(1), 1)
    if self.cfg.pooler:
      pooled = jnp.tanh(self.pooler(pooled))
    logits = self.project(pooled).astype(jnp.float32)  # [b, num_classes]
    return soft_cap(logits, self.cfg.final_logit_softcap)


class Transformer(nn.Module):
  """The paper's encoder-decoder model. Inputs are source tokens, targets the
  target tokens; the decoder sees targets shifted right."""
  cfg: config_lib.ModelConfig

  def setup(self):
    cfg = self.cfg
    self.shared_embedding = token_embedding(cfg) if cfg.share_embeddings else None
    self.encoder = Encoder(cfg, embedding=self.shared_embedding)
    self.decoder = Decoder(cfg, cross_attention=True, embedding=self.shared_embedding)
    self.project = OutputProjection(cfg, cfg.vocab_size, self.shared_embedding)

  def encode(self, inputs, inputs_segment_ids=None, inputs_positions=None,
             deterministic: bool = True):
    return self.encoder(inputs, inputs_segment_ids, inputs_positions,
                        deterministic=deterministic)

  def decode(self, encoded, inputs_segment_ids, decoder_inputs, targets_segment_ids=None,
             targets_positions=None, deterministic: bool = True, decode: bool = False):
    """Logits for `decoder_inputs` (already shifted) given the encoder output."""
    x = self.decoder(decoder_inputs, targets_segment_ids, targets_positions, encoded,
                     inputs_segment_ids, deterministic, decode)
    return self.project(x)

  def __call__(self, inputs, targets, inputs_segment_ids=None, inputs_positions=None,
               targets_segment_ids=None, targets_positions=None, deterministic: bool = True):
    cfg = self.cfg
    inputs_segment_ids, inputs_positions = default_segments(
        inputs, cfg.pad_id, inputs_segment_ids, inputs_positions)
    targets_segment_ids, targets_positions = default_segments(
        targets, cfg.pad_id, targets_segment_ids, targets_positions)
    encoded = self.encode(inputs, inputs_segment_ids, inputs_positions, deterministic)
    decoder_inputs = shift_right(targets, targets_segment_ids)
    return self.decode(encoded, inputs_segment_ids, decoder_inputs, targets_segment_ids,
                       targets_positions, deterministic)  # [b, l, vocab]


VARIANTS = {'encoder': EncoderOnly, 'decoder': DecoderOnly, 'seq2seq': Transformer}


def init_inputs(cfg, seq_len: int, batch: int = 1) -> tuple:
  """The positional inputs `model.init` traces a model with: images [b, H, W, C]
  (float32) for an image model, else tokens [b, seq_len] (twice for seq2seq:
  sources and targets)."""
  cfg = config_lib.ModelConfig.of(cfg)
  if cfg.patch_size:
    return (jnp.zeros((batch, cfg.image_size, cfg.image_size, cfg.num_channels), jnp.float32),)
  tokens = jnp.ones((batch, seq_len), jnp.int32)
  return (tokens, tokens) if cfg.variant == 'seq2seq' else (tokens,)


def build_model(cfg) -> nn.Module:
  """The model `config.model` (a ConfigDict or ModelConfig) names by its
  `variant`, validated first and holding the frozen ModelConfig."""
  config_lib.validate_model(cfg)
  cfg = config_lib.ModelConfig.of(cfg)
  return VARIANTS[cfg.variant](cfg)
