"""Hugging Face checkpoints in and out: GPT-2 and BERT weights as this project's parameters.

  --config.init_from=hf:PATH     a new run's first parameters from PATH, a directory as
                                 `save_pretrained` writes it (config.json + model.safetensors
                                 or pytorch_model.bin) of a GPT-2 (decoder LM) or a BERT
                                 (encoder: MLM head, or a classifier on the pooled output)
  --mode=export [--output=DIR]   a run's parameters as safetensors + config.json; a decoder
                                 with GPT-2's layout as a directory `transformers` loads

The architectures are the paper's blocks with other options (config.model):
- GPT-2 (Radford et al. 2019, section 2.3): a pre-LN decoder (norm=pre, with its final
  LayerNorm), learned positions, tanh-approximated GELU (activation=gelu_tanh),
  embeddings not scaled by sqrt(d_model), the LM head tied to the token embedding.
- BERT (Devlin et al. 2019, section 3): a post-LN encoder, learned positions,
  token-type embeddings (token_types=2; every token here is of type 0), a LayerNorm
  on the embedding sum (embedding_norm), exact GELU; the MLM head's transform
  (head_transform: dense + GELU + LayerNorm) and decoder bias (output_bias); the
  classifier reads the pooler (pooler=True, pooling=first: dense + tanh on [CLS]).

`model_fields(PATH)` gives the config.model values a checkpoint needs (`configure`
sets them); a run whose config differs in one of them is refused in one line that
lists the overrides to add. Only `transformers`' file layout is read here: the
libraries `safetensors` (and `torch`, for .bin weights) are imported when used, so
the core install does not need them (`pip install transformer_jax[hf]`).
"""

import dataclasses
import json
import os
from typing import Optional

import numpy as np

from transformer_jax import config as config_lib

ConfigError = config_lib.ConfigError
PREFIX = config_lib.HF_PREFIX
WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin')
ACTIVATIONS = {'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu': 'gelu',
               'relu': 'relu'}
EXPORT_ACTIVATIONS = {'gelu_tanh': 'gelu_new', 'gelu': 'gelu', 'relu': 'relu'}
# The config.json fields that model_fields reads without a default.
SHAPE_FIELDS = {'gpt2': ('vocab_size', 'n_positions', 'n_embd', 'n_layer', 'n_head'),
                'bert': ('vocab_size', 'max_position_embeddings', 'hidden_size',
                         'num_hidden_layers', 'num_attention_heads', 'intermediate_size')}


def is_hf(spec: str) -> bool:
  return str(spec).startswith(PREFIX)


def read_config(path: str) -> dict:
  """PATH/config.json of a GPT-2 or BERT checkpoint.

  Raises:
    ConfigError: PATH is not a directory with config.json and weights,
      config.json is not a JSON object with the shape fields, or the
      model_type is not gpt2 or bert.
  """
  where = f'config.init_from={PREFIX}{path}'
  if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, 'config.json')):
    raise ConfigError(f'{where}: {path} is not a model directory (no config.json); give a '
                      'directory that save_pretrained wrote.')
  if not any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES):
    raise ConfigError(f'{where}: {path} holds no weights ({", ".join(WEIGHT_FILES)}); give a '
                      'directory that save_pretrained wrote.')
  try:
    with open(os.path.join(path, 'config.json'), encoding='utf-8') as f:
      hf = json.load(f)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ConfigError(f'{where}: {path}/config.json is not JSON ({e}); give a directory that '
                      'save_pretrained wrote.') from None
  kind = hf.get('model_type') if isinstance(hf, dict) else None
  if kind not in SHAPE_FIELDS:
    raise ConfigError(f'{where}: model_type {kind!r} is not an architecture this project '
                      'imports; use a gpt2 or bert checkpoint.')
  missing = [name for name in SHAPE_FIELDS[kind] if name not in hf]
  if missing:
    raise ConfigError(f'{where}: {path}/config.json lacks {", ".join(missing)}; give a '
                      'directory that save_pretrained wrote.')
  return hf


def _unsupported(hf: dict) -> Optional[str]:
  """What in a GPT-2/BERT config.json these models do not compute (None: nothing)."""
  if hf['model_type'] == 'gpt2':
    act = hf.get('activation_function', 'gelu_new')
    if hf.get('scale_attn_by_inverse_layer_idx') or hf.get('reorder_and_upcast_attn'):
      return 'scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn'
    if not hf.get('scale_attn_weights', True):
      return 'scale_attn_weights=false'
  else:
    act = hf.get('hidden_act', 'gelu')
    if hf.get('position_embedding_type', 'absolute') != 'absolute':
      return f'position_embedding_type={hf["position_embedding_type"]}'
    if hf.get('is_decoder') or hf.get('add_cross_attention'):
      return 'is_decoder / add_cross_attention'
  if act not in ACTIVATIONS:
    return f'activation {act!r}'
  return None


def model_fields(hf: dict, head: str = 'mlm') -> tuple:
  """(required, head_fields): the config.model values that compute what the
  checkpoint `hf` (its config.json) computes; `head_fields` are those of the
  encoder head `head` (mlm | classify), which a run may choose otherwise
  (their weights then start fresh or are dropped).

  Raises:
    ConfigError: the checkpoint uses an option these models do not have.
  """
  reason = _unsupported(hf)
  if reason:
    raise ConfigError(f'config.init_from: this {hf["model_type"]} checkpoint uses {reason}, '
                      'which this project does not implement.')
  tied = hf.get('tie_word_embeddings', True)
  if hf['model_type'] == 'gpt2':
    d = hf['n_embd']
    required = dict(variant='decoder', num_layers=hf['n_layer'], d_model=d,
                    num_heads=hf['n_head'], ffn_ratio=(hf.get('n_inner') or 4 * d) / d,
                    activation=ACTIVATIONS[hf.get('activation_function', 'gelu_new')],
                    vocab_size=hf['vocab_size'], position='learned', max_len=hf['n_positions'],
                    norm='pre', layer_norm_epsilon=hf.get('layer_norm_epsilon', 1e-5),
                    share_embeddings=tied)
    head_fields = {}
  else:
    d = hf['hidden_size']
    required = dict(variant='encoder', num_layers=hf['num_hidden_layers'], d_model=d,
                    num_heads=hf['num_attention_heads'], ffn_ratio=hf['intermediate_size'] / d,
                    activation=ACTIVATIONS[hf.get('hidden_act', 'gelu')],
                    vocab_size=hf['vocab_size'], position='learned',
                    max_len=hf['max_position_embeddings'], norm='post',
                    layer_norm_epsilon=hf.get('layer_norm_eps', 1e-12),
                    token_types=hf.get('type_vocab_size', 2), embedding_norm=True)
    head_fields = (dict(share_embeddings=tied, head_transform=True, output_bias=tied)
                   if head == 'mlm' else dict(pooler=True, pooling='first'))
  required.update(use_bias=True, scale_embeddings=False, attention='full', num_kv_heads=None)
  if hf['model_type'] == 'gpt2':
    required.update(token_types=0, embedding_norm=False, head_transform=False,
                    output_bias=False)
  return required, head_fields


def token_fields(directory: str, tokenizer: str) -> dict:
  """The config.model ids that reading text with `tokenizer` (config.data.tokenizer)
  implies: with the checkpoint's own ('hf', read from `directory`), `pad_id` is
  the padding id `tokenizers.HFTokenizer` pads with (GPT-2's <|endoftext|>); other
  tokenizers keep theirs."""
  if tokenizer != 'hf':
    return {}
  from transformer_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
  return {'pad_id': tokenizers.HFTokenizer(directory).pad_id}


def configure(config, path: str):
  """Sets config.model to the checkpoint's architecture (and its encoder head's
  fields and, with config.data.tokenizer='hf', its padding id), config.init_from to
  hf:PATH; returns config."""
  hf = read_config(path)
  required, head_fields = model_fields(hf, config.model.encoder_head)
  config.init_from = PREFIX + path
  config.model.update({**required, **head_fields,
                       **token_fields(config_lib.tokenizer_path(config), config.data.tokenizer)})
  return config


def _override(name, value) -> str:
  return f'--config.model.{name}={value}'


def flags(path: str, head: str = 'mlm', tokenizer: str = 'hf') -> str:
  """The command-line overrides that make config.model the checkpoint's
  architecture (and, for `tokenizer` 'hf', the default, its padding id), as
  `configure` sets them in Python, e.g. for a shell:
  $(python -c "from transformer_jax import hf; print(hf.flags('DIR'))"). A field
  the checkpoint wants unset (num_kv_heads=None) is left out: a flag cannot unset
  it, and no packaged config sets it."""
  hf = read_config(path)
  required, head_fields = model_fields(hf, head)
  fields = {**required, **head_fields, **token_fields(path, tokenizer)}
  return ' '.join(_override(n, v) for n, v in fields.items()
                  if v is not None)


def check_config(model, hf: dict, spec: str):
  """Raises ConfigError (one line, the overrides to add) if config.model `model`
  differs from the checkpoint in a field that changes what it computes."""
  required, _ = model_fields(hf, model.encoder_head)
  m = config_lib.ModelConfig.of(model)
  wrong = []
  for name, want in required.items():
    have = m[name]
    if name == 'num_kv_heads':
      same = m.kv_heads == m.num_heads
    elif name == 'ffn_ratio':
      same = m.d_ff == int(round(want * m.d_model))  # the same ratio, whatever the width.
    elif name == 'layer_norm_epsilon':
      same = abs(have - want) <= 1e-3 * want
    elif name == 'num_layers':
      layers = m.encoder_layers if required['variant'] == 'encoder' else m.decoder_layers
      same = layers == want
    else:
      same = have == want
    if not same:
      wrong.append((name, have, want))
  if wrong:
    fields = ', '.join(f'{n}={h!r} (checkpoint: {w!r})' for n, h, w in wrong)
    fix = ' '.join(_override(n, w) for n, _, w in wrong)
    raise ConfigError(f'config.init_from={spec}: config.model differs from the checkpoint\'s '
                      f'architecture in {fields}; add {fix} (or hf.configure).')


def check_tokenizer(hf: dict, spec: str, tokenizer):
  """Raises ConfigError (one line) if the run's tokenizer is not the checkpoint's
  and has another number of ids than its embedding has rows: its ids would not
  mean the tokens the checkpoint learned. A checkpoint this project exported
  (config.json holds 'transformer_jax') keeps the vocabulary of the run it came
  from, whose tokenizer may hold fewer ids than model.vocab_size."""
  if tokenizer is None or tokenizer.name == 'hf' or 'transformer_jax' in hf:
    return
  if tokenizer.vocab_size != hf['vocab_size']:
    raise ConfigError(f'config.init_from={spec}: the checkpoint\'s embedding has '
                      f'{hf["vocab_size"]} rows for its own tokenizer\'s tokens, and the '
                      f'{tokenizer.name} tokenizer has {tokenizer.vocab_size} ids that mean other '
                      'tokens; add --config.data.tokenizer=hf to read the text with the '
                      'checkpoint\'s tokenizer.')


# ----------------------------------------------------------------------------
# Weights.


def _require(module: str):
  """Imports a module of the hf extra, or says in one line how to install it."""
  import importlib  # pylint: disable=g-import-not-at-top
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ConfigError(f'Hugging Face checkpoints need {module.split(".")[0]}: pip install '
                      '"transformer_jax[hf]" (transformers, safetensors).') from None


def read_weights(path: str) -> dict:
  """Every tensor of the checkpoint in PATH as float32 numpy, by its name there.

  Raises:
    ConfigError: a weights file is truncated or not of its format.
  """
  single = os.path.join(path, 'model.safetensors')
  index = os.path.join(path, 'model.safetensors.index.json')
  if os.path.isfile(single) or os.path.isfile(index):
    read = _require('safetensors.numpy').load_file
    if os.path.isfile(single):
      files = [single]
    else:
      with open(index, encoding='utf-8') as f:
        files = sorted({os.path.join(path, v) for v in json.load(f)['weight_map'].values()})
  else:
    torch = _require('torch')
    files = [os.path.join(path, 'pytorch_model.bin')]
    read = lambda file: {k: v.float().numpy() for k, v in
                         torch.load(file, map_location='cpu', weights_only=True).items()}
  out = {}
  for file in files:
    try:
      out.update(read(file))
    except Exception as e:  # pylint: disable=broad-except  # safetensors', torch's, pickle's.
      raise ConfigError(f'config.init_from={PREFIX}{path}: {file} cannot be read '
                        f'({type(e).__name__}: {" ".join(str(e).split())[:120]}); is it '
                        'complete? Save or download it again.') from None
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


def _strip(name: str, prefix: str) -> str:
  return name[len(prefix):] if name.startswith(prefix) else name


def _heads(w, m, axis_first: bool):
  """A [d, d] kernel (input-major) as [d, h, k] (axis_first) or [h, k, d]."""
  d, h = m.d_model, m.num_heads
  return w.reshape(d, h, d // h) if axis_first else w.reshape(h, d // h, d)


def gpt2_to_params(weights: dict, m) -> tuple:
  """(params, unread names): GPT-2's tensors (GPT2LMHeadModel or GPT2Model
  names; Conv1D weights are input-major) as DecoderOnly's nested parameters."""
  d = m.d_model
  w = {_strip(k, 'transformer.'): v for k, v in weights.items()}
  used = set()

  def get(name):
    used.add(name)
    return w[name]

  flat = {'embedding/embedding': get('wte.weight'),
          'decoder/embedder/positional_encoding/table': get('wpe.weight'),
          'decoder/final_norm/scale': get('ln_f.weight'),
          'decoder/final_norm/bias': get('ln_f.bias')}
  for i in range(m.decoder_layers):
    src, dst = f'h.{i}.', f'decoder/layer_{i}/'
    qkv, qkv_bias = get(src + 'attn.c_attn.weight'), get(src + 'attn.c_attn.bias')
    for j, part in enumerate(('query', 'key', 'value')):
      flat[f'{dst}self_attention/{part}/kernel'] = _heads(qkv[:, j * d:(j + 1) * d], m, True)
      flat[f'{dst}self_attention/{part}/bias'] = qkv_bias[j * d:(j + 1) * d].reshape(
          m.num_heads, d // m.num_heads)
    flat[f'{dst}self_attention/out/kernel'] = _heads(get(src + 'attn.c_proj.weight'), m, False)
    flat[f'{dst}self_attention/out/bias'] = get(src + 'attn.c_proj.bias')
    for ours, theirs in (('self_attention_add_norm', 'ln_1'), ('feed_forward_add_norm', 'ln_2')):
      flat[f'{dst}{ours}/norm/scale'] = get(f'{src}{theirs}.weight')
      flat[f'{dst}{ours}/norm/bias'] = get(f'{src}{theirs}.bias')
    for ours, theirs in (('expand', 'c_fc'), ('compress', 'c_proj')):
      flat[f'{dst}feed_forward/{ours}/kernel'] = get(f'{src}mlp.{theirs}.weight')
      flat[f'{dst}feed_forward/{ours}/bias'] = get(f'{src}mlp.{theirs}.bias')
  if 'lm_head.weight' in w and not m.share_embeddings:
    flat['project/logits/kernel'] = get('lm_head.weight').T
  elif 'lm_head.weight' in w:
    used.add('lm_head.weight')  # tied: the same matrix as wte.
  unread = sorted(k for k in w if k not in used and not k.endswith(('attn.bias',
                                                                    'attn.masked_bias')))
  return flat, unread


def bert_to_params(weights: dict, m) -> tuple:
  """(params, unread names): BERT's tensors (BertModel, BertForMaskedLM or
  BertForSequenceClassification names; torch Linear weights are output-major)
  as EncoderOnly's nested parameters."""
  w = {}
  for k, v in weights.items():
    k = _strip(k, 'bert.').replace('LayerNorm.gamma', 'LayerNorm.weight')
    w[k.replace('LayerNorm.beta', 'LayerNorm.bias')] = v
  used = set()

  def get(name):
    used.add(name)
    return w[name]

  def dense(dst, src, flat, shape=None, bias_shape=None):
    kernel = get(src + '.weight').T
    flat[dst + '/kernel'] = kernel if shape is None else kernel.reshape(shape)
    bias = get(src + '.bias')
    flat[dst + '/bias'] = bias if bias_shape is None else bias.reshape(bias_shape)

  def norm(dst, src, flat):
    flat[dst + '/scale'], flat[dst + '/bias'] = get(src + '.weight'), get(src + '.bias')

  d, h = m.d_model, m.num_heads
  flat = {'embedding/embedding': get('embeddings.word_embeddings.weight'),
          'encoder/embedder/positional_encoding/table':
              get('embeddings.position_embeddings.weight')}
  if 'embeddings.token_type_embeddings.weight' in w:
    flat['encoder/embedder/token_type_embedding'] = get('embeddings.token_type_embeddings.weight')
  norm('encoder/embedder/embedding_norm', 'embeddings.LayerNorm', flat)
  for i in range(m.encoder_layers):
    src, dst = f'encoder.layer.{i}.', f'encoder/layer_{i}/'
    for part in ('query', 'key', 'value'):
      dense(f'{dst}self_attention/{part}', f'{src}attention.self.{part}', flat, (d, h, d // h),
            (h, d // h))
    dense(f'{dst}self_attention/out', f'{src}attention.output.dense', flat, (h, d // h, d))
    norm(f'{dst}self_attention_add_norm/norm', f'{src}attention.output.LayerNorm', flat)
    dense(f'{dst}feed_forward/expand', f'{src}intermediate.dense', flat)
    dense(f'{dst}feed_forward/compress', f'{src}output.dense', flat)
    norm(f'{dst}feed_forward_add_norm/norm', f'{src}output.LayerNorm', flat)
  if 'pooler.dense.weight' in w:
    dense('pooler', 'pooler.dense', flat)
  if 'classifier.weight' in w:
    dense('classifier', 'classifier', flat)
  if 'cls.predictions.transform.dense.weight' in w:
    dense('project/transform', 'cls.predictions.transform.dense', flat)
    norm('project/transform_norm', 'cls.predictions.transform.LayerNorm', flat)
  bias = next((k for k in ('cls.predictions.bias', 'cls.predictions.decoder.bias') if k in w),
              None)
  if bias:
    flat['project/bias'] = get(bias)
    used.update(k for k in ('cls.predictions.bias', 'cls.predictions.decoder.bias') if k in w)
  if 'cls.predictions.decoder.weight' in w:
    used.add('cls.predictions.decoder.weight')  # tied: the same matrix as the embedding.
  unread = sorted(k for k in w if k not in used and not k.endswith('position_ids'))
  return flat, unread


def load(config, fresh: dict, tokenizer=None) -> tuple:
  """(params, report line) for a run with config.init_from=hf:PATH: `fresh` (the
  new model's initial parameters, nested) with every converted tensor.
  `tokenizer`, the run's, is checked against the checkpoint's vocabulary.

  Raises:
    ConfigError: PATH is not a model directory, holds another architecture, the
      run's tokenizer is not the checkpoint's (`check_tokenizer`), the run's
      config.model differs from it (one line with the overrides), or a tensor's
      shape differs from the model's.
  """
  spec = config.init_from
  path = spec[len(PREFIX):]
  hf = read_config(path)
  check_tokenizer(hf, spec, tokenizer)
  check_config(config.model, hf, spec)
  m = config_lib.ModelConfig.of(config.model)
  convert = gpt2_to_params if hf['model_type'] == 'gpt2' else bert_to_params
  try:
    flat, unread = convert(read_weights(path), m)
  except KeyError as e:
    raise ConfigError(f'config.init_from={spec}: the weights lack {e.args[0]} that its '
                      f'config.json promises; is the directory complete?') from None
  from transformer_jax import init_from  # pylint: disable=g-import-not-at-top
  params, report = init_from.merge(fresh, init_from._unflatten(flat), spec)  # pylint: disable=protected-access
  skipped = f'; not read: {init_from._names(unread)}' if unread else ''  # pylint: disable=protected-access
  return params, f'Initialised from {hf["model_type"]} {path}: {report}{skipped}.'


# ----------------------------------------------------------------------------
# Export.


def gpt2_layout(model) -> Optional[str]:
  """Why a config.model does not have GPT-2's layout (None when it has)."""
  m = config_lib.ModelConfig.of(model)
  needs = dict(variant='decoder', norm='pre', position='learned', use_bias=True,
               share_embeddings=True, scale_embeddings=False, token_types=0,
               embedding_norm=False, head_transform=False, output_bias=False, attention='full',
               norm_type='layernorm', qk_norm=False, attn_logit_softcap=0.0,
               final_logit_softcap=0.0)
  wrong = [f'{k}={m[k]!r}' for k, v in needs.items() if m[k] != v]
  if m.activation not in EXPORT_ACTIVATIONS:
    wrong.append(f'activation={m.activation!r}')
  if m.kv_heads != m.num_heads:
    wrong.append(f'num_kv_heads={m.num_kv_heads}')
  return ', '.join(wrong) or None


def gpt2_config(model, dropout: bool = True, eos_id: int = 2) -> dict:
  """GPT2Config's config.json for a config.model of GPT-2's layout (`eos_id`:
  the run's tokenizer's <eos>, also GPT-2's bos)."""
  m = config_lib.ModelConfig.of(model)
  rate = m.dropout_rate if dropout else 0.0
  return {'model_type': 'gpt2', 'architectures': ['GPT2LMHeadModel'],
          'vocab_size': m.vocab_size, 'n_positions': m.max_len, 'n_embd': m.d_model,
          'n_layer': m.decoder_layers, 'n_head': m.num_heads, 'n_inner': m.d_ff,
          'activation_function': EXPORT_ACTIVATIONS[m.activation],
          'resid_pdrop': rate, 'embd_pdrop': rate, 'attn_pdrop': m.attention_dropout_rate,
          'layer_norm_epsilon': m.layer_norm_epsilon, 'initializer_range': 0.02,
          'tie_word_embeddings': True, 'pad_token_id': m.pad_id, 'bos_token_id': eos_id,
          'eos_token_id': eos_id, 'transformer_jax': dataclasses.asdict(m)}


def params_to_gpt2(params: dict, model) -> dict:
  """DecoderOnly's parameters (nested) as GPT2LMHeadModel's tensors (the
  inverse of `gpt2_to_params`; the tied lm_head is left out, as transformers
  saves it)."""
  m = config_lib.ModelConfig.of(model)
  flat = {k: np.asarray(v, np.float32) for k, v in config_lib.flatten(params, '/').items()}
  d = m.d_model
  out = {'wte.weight': flat['embedding/embedding'],
         'wpe.weight': flat['decoder/embedder/positional_encoding/table'],
         'ln_f.weight': flat['decoder/final_norm/scale'],
         'ln_f.bias': flat['decoder/final_norm/bias']}
  for i in range(m.decoder_layers):
    src, dst = f'decoder/layer_{i}/', f'h.{i}.'
    parts = ('query', 'key', 'value')
    out[dst + 'attn.c_attn.weight'] = np.concatenate(
        [flat[f'{src}self_attention/{p}/kernel'].reshape(d, d) for p in parts], 1)
    out[dst + 'attn.c_attn.bias'] = np.concatenate(
        [flat[f'{src}self_attention/{p}/bias'].reshape(d) for p in parts])
    out[dst + 'attn.c_proj.weight'] = flat[f'{src}self_attention/out/kernel'].reshape(d, d)
    out[dst + 'attn.c_proj.bias'] = flat[f'{src}self_attention/out/bias']
    for ours, theirs in (('self_attention_add_norm', 'ln_1'), ('feed_forward_add_norm', 'ln_2')):
      out[f'{dst}{theirs}.weight'] = flat[f'{src}{ours}/norm/scale']
      out[f'{dst}{theirs}.bias'] = flat[f'{src}{ours}/norm/bias']
    for ours, theirs in (('expand', 'c_fc'), ('compress', 'c_proj')):
      out[f'{dst}mlp.{theirs}.weight'] = flat[f'{src}feed_forward/{ours}/kernel']
      out[f'{dst}mlp.{theirs}.bias'] = flat[f'{src}feed_forward/{ours}/bias']
  return {'transformer.' + k: np.ascontiguousarray(v) for k, v in out.items()}


def export(model, params: dict, directory: str, step: Optional[int] = None,
           tokenizer=None) -> str:
  """Writes `params` (nested) to `directory`: model.safetensors + config.json,
  and the files of `tokenizer` (the run's) when it is a Hugging Face one
  (tokenizer=hf: `transformers.AutoTokenizer.from_pretrained(directory)` loads it).

  A decoder of GPT-2's layout (`gpt2_layout`) is written as GPT2LMHeadModel's
  directory (`transformers.GPT2LMHeadModel.from_pretrained(directory)` loads
  it; our config.model is kept in config.json under 'transformer_jax'); any
  other model as its own parameter names ('encoder/layer_0/...') with
  config.json {'format': 'transformer_jax', 'model': config.model, 'step'}.
  Returns 'gpt2' or 'transformer_jax'. A decoder-only model attends to every
  token, as GPT-2 does (our encoders read config.model.pad_id as padding).
  """
  save_file = _require('safetensors.numpy').save_file
  os.makedirs(directory, exist_ok=True)
  if gpt2_layout(model) is None:
    meta = gpt2_config(model, eos_id=2 if tokenizer is None else tokenizer.eos_id)
    tensors, kind = params_to_gpt2(params, model), 'gpt2'
  else:
    tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32))
               for k, v in config_lib.flatten(params, '/').items()}
    meta = {'format': 'transformer_jax', 'model': dataclasses.asdict(
        config_lib.ModelConfig.of(model)), 'step': step}
    kind = 'transformer_jax'
  save_file(tensors, os.path.join(directory, 'model.safetensors'), metadata={'format': 'pt'})
  with open(os.path.join(directory, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(meta, f, indent=1)
  if tokenizer is not None and tokenizer.name == 'hf':
    tokenizer.save_pretrained(directory)
  return kind


def export_checkpoint(config, workdir: str, directory: str) -> str:
  """--mode=export: the checkpoint config.restore_checkpoint names (latest, best
  or a step) of `workdir` written to `directory` by `export`, with the model
  config the run saved with it (so no model overrides are needed); returns one
  line saying what was written.

  Raises:
    FileNotFoundError: the workdir holds no checkpoint (or not that step).
  """
  from transformer_jax import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top
  from transformer_jax.data import tokenizers  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise FileNotFoundError(f'{workdir} holds no checkpoint; train first (--mode=train).')
  with checkpoint_lib.Checkpointer(workdir, config, writable=False) as checkpoints:
    step = checkpoints.select(config.restore_checkpoint)
    params = checkpoints.read_params(step)
    saved = checkpoints.saved_config()
  model = config_lib.from_saved(saved).model if saved else config.model  # the run's own.
  vocabulary = os.path.join(workdir, tokenizers.RUN_DIRECTORY)
  tokenizer = tokenizers.load(vocabulary) if tokenizers.is_saved(vocabulary) else None
  kind = export(model, params, directory, step, tokenizer)
  how = ('GPT-2 layout: transformers.GPT2LMHeadModel.from_pretrained loads it' if kind == 'gpt2'
         else f'this project\'s names (not GPT-2\'s layout: {gpt2_layout(model)})')
  if tokenizer is not None and tokenizer.name == 'hf':
    how += ', and AutoTokenizer.from_pretrained its tokenizer'
  return f'Exported {workdir} step {step} to {directory} ({how}).'
