"""Hugging Face checkpoints in and out: GPT-2 and BERT weights as this project's parameters.

  --config.init_from=hf:PATH     a new run's first parameters from PATH, a directory as
                                 `save_pretrained` writes it (config.json + model.safetensors
                                 or pytorch_model.bin) of a GPT-2 (decoder LM) or a BERT
                                 (encoder: MLM head, or a classifier on the pooled output)
  --config.init_from=hf:NAME     the same from a Hub id (gpt2, google-bert/bert-base-uncased):
                                 its snapshot in huggingface_hub's cache (hub.py)
  --mode=export [--output=DIR]   a run's parameters as GPT2LMHeadModel, BertForMaskedLM or
                                 BertForSequenceClassification: a directory `transformers`
                                 loads, and that init_from=hf:DIR reads back

The architectures are the paper's blocks with other options (config.model):
- GPT-2 (Radford et al. 2019, section 2.3): a pre-LN decoder (norm=pre, with its final
  LayerNorm), learned positions, tanh-approximated GELU (activation=gelu_tanh),
  embeddings not scaled by sqrt(d_model), the LM head tied to the token embedding
  (or its own: tie_word_embeddings=false, share_embeddings=False).
- BERT (Devlin et al. 2019, section 3): a post-LN encoder, learned positions,
  token-type (segment) embeddings (token_types=2: a sentence pair's batches carry
  their types, other text is all of type 0), a LayerNorm
  on the embedding sum (embedding_norm), exact GELU; the MLM head's transform
  (head_transform: dense + GELU + LayerNorm) and decoder bias (output_bias, or the
  untied decoder's own); the classifier reads the pooler (pooler=True, pooling=first:
  dense + tanh on [CLS]).

One table per architecture (`gpt2_tensors`, `bert_tensors`) names each tensor of
theirs and the parameters of ours it holds, read both ways: the import converts
every tensor by it or lists it as unused with the reason (a buffer, a tied copy,
another head), refuses one it does not know, and first checks config.json
against the weights' shapes; the export writes the same names back.
`model_fields(PATH)` gives the config.model values a checkpoint needs (`configure`
sets them); a run whose config differs in one of them is refused in one line that
lists the overrides to add. Only `transformers`' file layout is read here: the
libraries `safetensors` (and `torch`, for .bin weights) are imported when used, so
the core install does not need them (`pip install transformer_jax[hf]`). Reading
weights (bytes read of all) and exporting (its phases) show progress bars (progress.py).
"""

import dataclasses
import importlib
import json
import os
import re
from typing import Callable, Optional

import numpy as np

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import config as config_lib
from transformer_jax import hub
from transformer_jax import params as params_lib
from transformer_jax import progress
from transformer_jax import restore
from transformer_jax import run_log
from transformer_jax.data import tokenizers

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
  """PATH/config.json of a GPT-2 or BERT checkpoint (PATH a directory, or a Hub id
  read from the Hugging Face cache: `hub.local_dir`).

  Raises:
    ConfigError: PATH is not a directory with config.json and weights (nor a Hub id
      in the cache or to download), config.json is not a JSON object with the
      shape fields, or the model_type is not gpt2 or bert.
  """
  where = f'config.init_from={PREFIX}{path}'
  try:
    path = hub.local_dir(path)
  except ConfigError as e:
    raise ConfigError(f'{where}: {e}') from None
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
  required.update(use_bias=True, norm_bias=True, scale_embeddings=False, attention='full',
                  num_kv_heads=None)
  if hf['model_type'] == 'gpt2':
    required.update(token_types=0, embedding_norm=False, head_transform=False,
                    output_bias=False)
  return required, head_fields


def _saved_vocabulary(directory: str, hf: dict) -> Optional[str]:
  """The vocabulary this project's export wrote beside its weights (tokenizer/),
  when the directory (or Hub id) has no Hugging Face tokenizer files of its own."""
  directory = hub.local_dir(directory)
  saved = os.path.join(directory, tokenizers.RUN_DIRECTORY)
  if 'transformer_jax' in hf and tokenizers.is_saved(saved):
    if not any(os.path.isfile(os.path.join(directory, f)) for f in tokenizers.HFTokenizer.FILES):
      return saved
  return None


def token_fields(directory: str, hf: dict, tokenizer: str) -> tuple:
  """(config.model fields, config.data fields) that reading text with `tokenizer`
  (config.data.tokenizer) implies: with the checkpoint's own ('hf'), `pad_id` is the
  padding id `tokenizers.HFTokenizer` pads with (GPT-2's <|endoftext|>); a directory
  this project exported keeps the run's vocabulary instead (`export`), so its
  tokenizer and pad_id are the run's. Other tokenizers keep their ids."""
  if tokenizer != 'hf':
    return {}, {}
  saved = _saved_vocabulary(directory, hf)
  if saved:
    return ({'pad_id': hf['transformer_jax']['pad_id']},
            {'tokenizer': tokenizers.load(saved).name})
  return {'pad_id': tokenizers.HFTokenizer(directory).pad_id}, {}


def configure(config, path: str):
  """Sets config.model to the checkpoint's architecture (and its encoder head's
  fields and, with config.data.tokenizer='hf', its padding id, or an export's
  vocabulary: `token_fields`), config.init_from to hf:PATH; returns config."""
  hf = read_config(path)
  required, head_fields = model_fields(hf, config.model.encoder_head)
  config.init_from = PREFIX + path
  model, data = token_fields(config_lib.tokenizer_path(config), hf, config.data.tokenizer)
  config.model.update({**required, **head_fields, **model})
  config.data.update(data)
  return config


def _override(name, value) -> str:
  return f'--config.model.{name}={value}'


def flags(path: str, head: str = 'mlm', tokenizer: str = 'hf') -> str:
  """The command-line overrides that make config.model the checkpoint's
  architecture (and, for `tokenizer` 'hf', the default, its padding id, or an
  export's vocabulary: `token_fields`), as `configure` sets them in Python, e.g.
  for a shell: $(python -c "from transformer_jax import hf; print(hf.flags('DIR'))").
  A field the checkpoint wants unset (num_kv_heads=None) is left out: a flag
  cannot unset it, and no packaged config sets it."""
  hf = read_config(path)
  required, head_fields = model_fields(hf, head)
  model, data = token_fields(path, hf, tokenizer)
  fields = {**required, **head_fields, **model}
  return ' '.join([_override(n, v) for n, v in fields.items() if v is not None]
                  + [f'--config.data.{n}={v}' for n, v in data.items()])


def check_config(model, hf: dict, spec: str):
  """Raises ConfigError (one line, the overrides to add) if config.model `model`
  differs from the checkpoint in a field that changes what it computes."""
  required, _ = model_fields(hf, model.encoder_head)
  m = config_lib.ModelConfig.of(model)
  wrong = []
  for name, want in required.items():
    have = getattr(m, name)
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
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ConfigError(f'Hugging Face checkpoints need {module.split(".")[0]}: pip install '
                      '"transformer_jax[hf]" (transformers, safetensors).') from None


def read_weights(path: str) -> dict:
  """Every tensor of the checkpoint in PATH (a directory or a Hub id: `read_config`)
  as float32 numpy, by its name there.

  Raises:
    ConfigError: a weights file is truncated or not of its format.
  """
  spec, path = path, hub.local_dir(path)
  single = os.path.join(path, 'model.safetensors')
  index = os.path.join(path, 'model.safetensors.index.json')
  if os.path.isfile(single) or os.path.isfile(index):
    safe_open = _require('safetensors').safe_open
    if os.path.isfile(single):
      files = [single]
    else:
      with open(index, encoding='utf-8') as f:
        files = sorted({os.path.join(path, v) for v in json.load(f)['weight_map'].values()})

    def read(file, shown):  # tensor by tensor, so that the bar moves.
      tensors = {}
      with safe_open(file, framework='np') as f:
        for name in f.keys():
          tensors[name] = f.get_tensor(name)
          shown.update(tensors[name].nbytes)
      return tensors
  else:
    torch = _require('torch')
    files = [os.path.join(path, 'pytorch_model.bin')]

    def read(file, shown):
      del shown  # one load: the bar moves by the file when it is read.
      return {k: v.float().numpy() for k, v in
              torch.load(file, map_location='cpu', weights_only=True).items()}
  out = {}
  size = sum(os.path.getsize(file) for file in files if os.path.isfile(file))
  with progress.bar(total=size, unit='B', unit_scale=True, unit_divisor=1024,
                    desc=f'reading {spec}', leave=False) as shown:
    for file in files:
      start = shown.n
      try:
        out.update(read(file, shown))
      except Exception as e:  # pylint: disable=broad-except  # safetensors', torch's, pickle's.
        raise ConfigError(f'config.init_from={PREFIX}{spec}: {file} cannot be read '
                          f'({type(e).__name__}: {" ".join(str(e).split())[:120]}); is it '
                          'complete? Save or download it again.') from None
      shown.update(os.path.getsize(file) - (shown.n - start))  # the rest: its header.
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One tensor of a Hugging Face checkpoint and the parameters of ours it holds.

  `theirs`: its name in the checkpoint (without the base model's prefix); `ours`:
  our parameter names; `split(array) -> arrays` (one per name of ours) and
  `join(*arrays) -> array`, its inverse, convert layouts (torch's Linear is
  output-major, Flax's kernels input-major and split into heads).
  """
  theirs: str
  ours: tuple
  split: Callable = lambda a: (a,)
  join: Callable = lambda a: a


def _linear(theirs: str, ours: str, kernel_shape=None, inputs: int = 1,
            bias_shape=None) -> list:
  """torch Linear `theirs`.weight [out, in] and .bias as Dense `ours`: kernel [in, out]
  reshaped to `kernel_shape`, whose first `inputs` axes are the input's."""
  def split(a):
    return (a.T if kernel_shape is None else a.T.reshape(kernel_shape),)

  def join(k):
    return k.reshape(int(np.prod(k.shape[:inputs])), -1).T

  return [Tensor(f'{theirs}.weight', (f'{ours}/kernel',), split, join),
          Tensor(f'{theirs}.bias', (f'{ours}/bias',),
                 lambda a: (a if bias_shape is None else a.reshape(bias_shape),),
                 lambda b: b.reshape(-1))]


def _norm(theirs: str, ours: str) -> list:
  """LayerNorm `theirs`.weight and .bias as `ours`/scale and /bias."""
  return [Tensor(f'{theirs}.weight', (f'{ours}/scale',)),
          Tensor(f'{theirs}.bias', (f'{ours}/bias',))]


def gpt2_tensors(m, tied: bool) -> list:
  """GPT-2's tensors (GPT2Model's names; GPT2LMHeadModel adds 'transformer.' and
  lm_head) as DecoderOnly's parameters. Conv1D weights are input-major; c_attn
  holds the query, key and value projections side by side."""
  d, h, k = m.d_model, m.num_heads, m.head_dim
  out = [Tensor('wte.weight', ('embedding/embedding',)),
         Tensor('wpe.weight', ('decoder/embedder/positional_encoding/table',)),
         *_norm('ln_f', 'decoder/final_norm')]
  for i in range(m.decoder_layers):
    src, dst = f'h.{i}.', f'decoder/layer_{i}/'
    qkv = [f'{dst}self_attention/{part}/' for part in ('query', 'key', 'value')]
    out += [Tensor(src + 'attn.c_attn.weight', tuple(p + 'kernel' for p in qkv),
                   lambda a: tuple(a[:, j * d:(j + 1) * d].reshape(d, h, k) for j in range(3)),
                   lambda *ks: np.concatenate([x.reshape(d, d) for x in ks], 1)),
            Tensor(src + 'attn.c_attn.bias', tuple(p + 'bias' for p in qkv),
                   lambda a: tuple(a[j * d:(j + 1) * d].reshape(h, k) for j in range(3)),
                   lambda *bs: np.concatenate([x.reshape(d) for x in bs])),
            Tensor(src + 'attn.c_proj.weight', (f'{dst}self_attention/out/kernel',),
                   lambda a: (a.reshape(h, k, d),), lambda x: x.reshape(d, d)),
            Tensor(src + 'attn.c_proj.bias', (f'{dst}self_attention/out/bias',)),
            *_norm(src + 'ln_1', f'{dst}self_attention_add_norm/norm'),
            *_norm(src + 'ln_2', f'{dst}feed_forward_add_norm/norm')]
    for ours, theirs in (('expand', 'c_fc'), ('compress', 'c_proj')):
      out += [Tensor(f'{src}mlp.{theirs}.weight', (f'{dst}feed_forward/{ours}/kernel',)),
              Tensor(f'{src}mlp.{theirs}.bias', (f'{dst}feed_forward/{ours}/bias',))]
  if not tied:
    out.append(Tensor('lm_head.weight', ('project/logits/kernel',), lambda a: (a.T,),
                      lambda x: x.T))
  return out


def bert_tensors(m, tied: bool, head: str) -> list:
  """BERT's tensors (BertModel's names, which BertFor* prefix with 'bert.'; the heads'
  as BertForMaskedLM and BertForSequenceClassification name them) as EncoderOnly's
  parameters, for the encoder head `head` (mlm | classify)."""
  d, h, k = m.d_model, m.num_heads, m.head_dim
  out = [Tensor('embeddings.word_embeddings.weight', ('embedding/embedding',)),
         Tensor('embeddings.position_embeddings.weight',
                ('encoder/embedder/positional_encoding/table',)),
         Tensor('embeddings.token_type_embeddings.weight',
                ('encoder/embedder/token_type_embedding',)),
         *_norm('embeddings.LayerNorm', 'encoder/embedder/embedding_norm')]
  for i in range(m.encoder_layers):
    src, dst = f'encoder.layer.{i}.', f'encoder/layer_{i}/'
    for part in ('query', 'key', 'value'):
      out += _linear(f'{src}attention.self.{part}', f'{dst}self_attention/{part}', (d, h, k), 1,
                     (h, k))
    out += [*_linear(f'{src}attention.output.dense', f'{dst}self_attention/out', (h, k, d), 2),
            *_norm(f'{src}attention.output.LayerNorm', f'{dst}self_attention_add_norm/norm'),
            *_linear(f'{src}intermediate.dense', f'{dst}feed_forward/expand'),
            *_linear(f'{src}output.dense', f'{dst}feed_forward/compress'),
            *_norm(f'{src}output.LayerNorm', f'{dst}feed_forward_add_norm/norm')]
  if head == 'classify':
    return out + _linear('pooler.dense', 'pooler') + _linear('classifier', 'classifier')
  out += [*_linear('cls.predictions.transform.dense', 'project/transform'),
          *_norm('cls.predictions.transform.LayerNorm', 'project/transform_norm')]
  if tied:
    return out + [Tensor('cls.predictions.bias', ('project/bias',))]
  return out + [Tensor('cls.predictions.decoder.weight', ('project/logits/kernel',),
                       lambda a: (a.T,), lambda x: x.T),
                Tensor('cls.predictions.decoder.bias', ('project/logits/bias',))]


# Each architecture: the base model's prefix in task checkpoints, and the tensors of
# its checkpoints that are not parameters of ours, by pattern, with the reason.
BASE_PREFIX = {'gpt2': 'transformer.', 'bert': 'bert.'}
_BUFFERS = {'gpt2': {r'h\.\d+\.attn\.(bias|masked_bias)': 'the causal mask, a buffer'},
            'bert': {r'embeddings\.(position_ids|token_type_ids)': 'position/type ids, a buffer',
                     r'cls\.seq_relationship\..*': 'the next-sentence head, which these '
                                                   'models do not have'}}
_TIED = {'gpt2': ('lm_head.weight', 'wte.weight'),
         'bert': ('cls.predictions.decoder.weight', 'embeddings.word_embeddings.weight')}
# BERT's MLM bias has two names: transformers ties cls.predictions.decoder.bias to
# cls.predictions.bias, and reads the decoder's own when the decoder is untied; a
# checkpoint may hold either (or both).
_BIASES = ('cls.predictions.bias', 'cls.predictions.decoder.bias')
_HEADS = {'classify': (r'cls\.predictions\..*', 'the MLM head; this run\'s encoder_head is '
                                                'classify'),
          'mlm': (r'(pooler|classifier)\..*', 'the pooler and classifier; this run\'s '
                                              'encoder_head is mlm')}


def _their_names(weights: dict, kind: str) -> dict:
  """The checkpoint's tensors by their base-model names: the prefix of task models
  dropped, TF-era LayerNorm.gamma/beta renamed."""
  out = {}
  for name, value in weights.items():
    name = name[len(BASE_PREFIX[kind]):] if name.startswith(BASE_PREFIX[kind]) else name
    out[name.replace('LayerNorm.gamma', 'LayerNorm.weight').replace('LayerNorm.beta',
                                                                    'LayerNorm.bias')] = value
  return out


def _tensors(hf: dict, m, head: str) -> list:
  tied = hf.get('tie_word_embeddings', True)
  return gpt2_tensors(m, tied) if hf['model_type'] == 'gpt2' else bert_tensors(m, tied, head)


def _implied(hf: dict, w: dict) -> list:
  """(config.json field, its value, the value the weights imply, the tensor that
  implies it) for each shape field where the two disagree."""
  layer = re.compile(r'(?:h|encoder\.layer)\.(\d+)\.')
  layers = len({match.group(1) for match in map(layer.match, w) if match})
  if hf['model_type'] == 'gpt2':
    d = hf['n_embd']
    rules = [('vocab_size', 'wte.weight', 0), ('n_embd', 'wte.weight', 1),
             ('n_positions', 'wpe.weight', 0), ('n_inner', 'h.0.mlp.c_fc.weight', 1)]
    given = {**hf, 'n_inner': hf.get('n_inner') or 4 * d}
    count = 'n_layer'
  else:
    rules = [('vocab_size', 'embeddings.word_embeddings.weight', 0),
             ('hidden_size', 'embeddings.word_embeddings.weight', 1),
             ('max_position_embeddings', 'embeddings.position_embeddings.weight', 0),
             ('type_vocab_size', 'embeddings.token_type_embeddings.weight', 0),
             ('intermediate_size', 'encoder.layer.0.intermediate.dense.weight', 0)]
    given = {**hf, 'type_vocab_size': hf.get('type_vocab_size', 2)}
    count = 'num_hidden_layers'
  wrong = [(field, given[field], w[name].shape[axis], f'{name} {list(w[name].shape)}')
           for field, name, axis in rules if name in w and w[name].shape[axis] != given[field]]
  if layers != given[count]:
    wrong.append((count, given[count], layers, f'the weights hold {layers} layers'))
  return wrong


def check_weights(hf: dict, w: dict, path: str):
  """Raises ConfigError (one line: the edit to config.json) where PATH/config.json
  contradicts the weights beside it: a shape field another size than its
  tensor, or tie_word_embeddings true with an output matrix of its own."""
  wrong = _implied(hf, w)
  their, embedding = _TIED[hf['model_type']]
  if (hf.get('tie_word_embeddings', True) and their in w and embedding in w
      and not np.array_equal(w[their], w[embedding])):
    wrong.append(('tie_word_embeddings', True, False, f'{their} differs from {embedding}'))
  if wrong:
    found = '; '.join(f'{f}={g!r} but {why}' for f, g, _, why in wrong)
    edit = ', '.join(f'"{f}": {json.dumps(v)}' for f, _, v, _ in wrong)
    config_json = os.path.join(hub.local_dir(path), 'config.json')
    raise ConfigError(f'config.init_from={PREFIX}{path}: config.json contradicts its weights '
                      f'({found}); set {edit} in {config_json}.')


def to_params(hf: dict, weights: dict, m, head: str, spec: str) -> tuple:
  """(flat params, unused): every tensor of the checkpoint (`weights`, by its
  names there) accounted for: converted to a parameter of ours by the table
  (`gpt2_tensors`, `bert_tensors`, read against config.json's tie_word_embeddings),
  or unused, as '{name} ({reason})'.

  Raises:
    ConfigError: a tensor the table does not know, or config.json contradicts the
      weights (`check_weights`).
  """
  kind = hf['model_type']
  w = _their_names(weights, kind)
  flat, used = {}, set()
  for tensor in _tensors(hf, m, head):
    name = tensor.theirs
    if name not in w and name in _BIASES:
      name = _BIASES[1 - _BIASES.index(name)]
    if name in w:
      flat.update(zip(tensor.ours, tensor.split(w[name])))
      used.add(name)
  reasons = dict(_BUFFERS[kind])
  if kind == 'bert':
    reasons[_HEADS[head][0]] = _HEADS[head][1]
  their, embedding = _TIED[kind]
  if hf.get('tie_word_embeddings', True):
    reasons[re.escape(their)] = f'tied: equal to {embedding}'
  if kind == 'bert' and head == 'mlm':
    read, other = _BIASES if hf.get('tie_word_embeddings', True) else _BIASES[::-1]
    reasons[re.escape(other)] = f'transformers reads {read} in its place'
  unused, unknown = [], []
  for name in sorted(set(w) - used):
    reason = next((r for pattern, r in reasons.items() if re.fullmatch(pattern, name)), None)
    (unused if reason else unknown).append(f'{name} ({reason})' if reason else name)
  if unknown:
    raise ConfigError(f'config.init_from={spec}: the {kind} checkpoint holds tensors this '
                      f'import does not map: {params_lib.names(unknown)}; is it a GPT2LMHeadModel, '
                      'BertForMaskedLM or BertForSequenceClassification (or their base model)?')
  return flat, unused


def load(config, fresh: dict, tokenizer=None) -> tuple:
  """(params, report line) for a run with config.init_from=hf:PATH: `fresh` (the
  new model's initial parameters, nested) with every converted tensor; the line
  names the checkpoint's tensors left unused, with the reason.
  `tokenizer`, the run's, is checked against the checkpoint's vocabulary.

  Raises:
    ConfigError: PATH is not a model directory, holds another architecture, its
      config.json contradicts its weights (`check_weights`: the edit that fixes
      it), the run's tokenizer is not the checkpoint's (`check_tokenizer`), the
      run's config.model differs from it (one line with the overrides), or it
      holds a tensor no table knows (`to_params`).
  """
  spec = config.init_from
  path = spec[len(PREFIX):]
  hf = read_config(path)
  check_tokenizer(hf, spec, tokenizer)
  weights = read_weights(path)
  check_weights(hf, _their_names(weights, hf['model_type']), path)
  check_config(config.model, hf, spec)
  m = config_lib.ModelConfig.of(config.model)
  flat, unused = to_params(hf, weights, m, m.encoder_head, spec)
  params, report = params_lib.merge(fresh, params_lib.unflatten(flat), spec)
  unused = f'; unused: {params_lib.names(unused)}' if unused else ''
  return params, f'Initialised from {hf["model_type"]} {path}: {report}{unused}.'


# ----------------------------------------------------------------------------
# Export.


# What neither GPT-2 nor BERT has: our ablation options must be off to export. Their
# LayerNorms have a bias, so a run without (norm_bias=False) is refused, as one without
# dense biases is (use_bias=False), rather than written with zeros.
_NO_ABLATION_OPTIONS = dict(norm_type='layernorm', norm_bias=True, qk_norm=False,
                            attn_logit_softcap=0.0, final_logit_softcap=0.0)


def _layout(m, needs: dict) -> list:
  needs = {**needs, **_NO_ABLATION_OPTIONS}
  wrong = [f'{k}={getattr(m, k)!r}' for k, v in needs.items() if getattr(m, k) != v]
  if m.activation not in EXPORT_ACTIVATIONS:
    wrong.append(f'activation={m.activation!r}')
  if m.kv_heads != m.num_heads:
    wrong.append(f'num_kv_heads={m.num_kv_heads}')
  return wrong


def gpt2_layout(model) -> Optional[str]:
  """Why a config.model does not have GPT-2's layout (None when it has)."""
  m = config_lib.ModelConfig.of(model)
  return ', '.join(_layout(m, dict(
      variant='decoder', norm='pre', position='learned', use_bias=True, scale_embeddings=False,
      token_types=0, embedding_norm=False, head_transform=False, output_bias=False,
      attention='full'))) or None


def bert_layout(model) -> Optional[str]:
  """Why a config.model does not have BERT's layout with a head transformers has
  (BertForMaskedLM's transform, BertForSequenceClassification's pooler on the first
  token); None when it has."""
  m = config_lib.ModelConfig.of(model)
  needs = dict(variant='encoder', norm='post', position='learned', use_bias=True,
               scale_embeddings=False, embedding_norm=True, attention='full', patch_size=0)
  needs.update(dict(head_transform=True) if m.encoder_head == 'mlm' else
               dict(pooler=True, pooling='first'))
  return ', '.join(_layout(m, needs)) or None


def hf_config(model, dropout: bool = True, eos_id: int = 2) -> dict:
  """The config.json of `transformers`' class for a config.model of GPT-2's or
  BERT's layout (`eos_id`: the run's tokenizer's <eos>, also GPT-2's bos); our
  config.model is kept under 'transformer_jax'."""
  m = config_lib.ModelConfig.of(model)
  rate = m.dropout_rate if dropout else 0.0
  act = EXPORT_ACTIVATIONS[m.activation]
  if m.variant == 'decoder':
    out = {'model_type': 'gpt2', 'architectures': ['GPT2LMHeadModel'],
           'vocab_size': m.vocab_size, 'n_positions': m.max_len, 'n_embd': m.d_model,
           'n_layer': m.decoder_layers, 'n_head': m.num_heads, 'n_inner': m.d_ff,
           'activation_function': act, 'resid_pdrop': rate, 'embd_pdrop': rate,
           'attn_pdrop': m.attention_dropout_rate, 'layer_norm_epsilon': m.layer_norm_epsilon,
           'bos_token_id': eos_id, 'eos_token_id': eos_id}
  else:
    classify = m.encoder_head == 'classify'
    out = {'model_type': 'bert', 'architectures': ['BertForSequenceClassification' if classify
                                                   else 'BertForMaskedLM'],
           'vocab_size': m.vocab_size, 'hidden_size': m.d_model,
           'num_hidden_layers': m.encoder_layers, 'num_attention_heads': m.num_heads,
           'intermediate_size': m.d_ff, 'hidden_act': act, 'hidden_dropout_prob': rate,
           'attention_probs_dropout_prob': m.attention_dropout_rate,
           'max_position_embeddings': m.max_len, 'type_vocab_size': max(m.token_types, 1),
           'layer_norm_eps': m.layer_norm_epsilon}
    if classify:
      out['id2label'] = {str(i): f'LABEL_{i}' for i in range(m.num_classes)}
  return {**out, 'initializer_range': 0.02, 'pad_token_id': m.pad_id,
          'tie_word_embeddings': m.share_embeddings or m.encoder_head == 'classify',
          'transformer_jax': dataclasses.asdict(m)}


def to_transformers(params: dict, model) -> dict:
  """Our parameters (nested) as the tensors of the transformers class `hf_config`
  names, by the same tables the import reads (a tied output matrix left out, as
  transformers saves it).

  Raises:
    ConfigError: the model has neither GPT-2's nor BERT's layout (one line, the
      fields), or an untied decoder's output bias is not zero (GPT-2's lm_head has none).
  """
  m = config_lib.ModelConfig.of(model)
  why = (gpt2_layout(m) if m.variant == 'decoder' else bert_layout(m)
         if m.variant == 'encoder' else 'variant=seq2seq (transformers has no class for it)')
  if why:
    raise ConfigError(f'--mode=export writes a checkpoint transformers loads, and this model '
                      f'has no transformers class: {why}; export a GPT-2-like decoder or a '
                      'BERT-like encoder.')
  flat = {k: np.asarray(v, np.float32) for k, v in params_lib.flatten(params).items()}
  if m.variant == 'encoder':
    prefix = 'bert.'
    if not m.token_types:  # one type, all zeros: the same sum.
      flat['encoder/embedder/token_type_embedding'] = np.zeros((1, m.d_model), np.float32)
    if m.encoder_head == 'mlm' and m.share_embeddings and not m.output_bias:
      flat['project/bias'] = np.zeros((m.vocab_size,), np.float32)
  else:
    prefix = 'transformer.'
    bias = flat.pop('project/logits/bias', None)
    if bias is not None and np.any(bias):
      raise ConfigError('--mode=export: GPT-2\'s lm_head has no bias, and this run\'s '
                        'project/logits/bias is not zero (an untied decoder with use_bias); '
                        'only a tied decoder (share_embeddings=True) or a zero bias exports.')
  hf = hf_config(m)
  out = {}
  for tensor in _tensors(hf, m, m.encoder_head):
    name = tensor.theirs
    if not name.startswith(('cls.', 'classifier', 'lm_head')):
      name = prefix + name
    out[name] = np.ascontiguousarray(tensor.join(*(flat[o] for o in tensor.ours)))
  if m.variant == 'encoder' and m.encoder_head == 'mlm' and not m.share_embeddings:
    out[_BIASES[0]] = out[_BIASES[1]]  # untied, transformers saves the bias under both names.
  return out


def export(model, params: dict, directory: str, step: Optional[int] = None,
           tokenizer=None) -> str:
  """Writes `params` (nested) to `directory` as `transformers` saves its GPT2LMHeadModel,
  BertForMaskedLM or BertForSequenceClassification (model.safetensors + config.json,
  `hf_config`; `transformers.AutoModelFor*.from_pretrained(directory)` loads it),
  and the run's vocabulary: a Hugging Face tokenizer's files
  (`AutoTokenizer.from_pretrained(directory)` loads it), any other under
  tokenizer/, which `config.init_from=hf:DIRECTORY` and `flags` read back.
  Returns the model_type. Our encoders read config.model.pad_id as padding; pass
  transformers the attention_mask that says so. A decoder attends to every token,
  as GPT-2 does.

  Raises:
    ConfigError: the model has no transformers class (`to_transformers`).
    run_log.WriteFailed: `directory` cannot be written (one line, with the fix).
  """
  with progress.waiting(f'exporting to {directory}: converting', leave=False) as shown:
    tensors = to_transformers(params, model)
    save_file = _require('safetensors.numpy').save_file
    m = config_lib.ModelConfig.of(model)
    meta = hf_config(m, eos_id=2 if tokenizer is None else tokenizer.eos_id)
    meta['transformer_jax_step'] = step
    try:
      os.makedirs(directory, exist_ok=True)
      shown.set_description_str(f'exporting to {directory}: writing model.safetensors')
      save_file(tensors, os.path.join(directory, 'model.safetensors'), metadata={'format': 'pt'})
      with open(os.path.join(directory, 'config.json'), 'w', encoding='utf-8') as f:
        json.dump(meta, f, indent=1)
      shown.set_description_str(f'exporting to {directory}: writing the tokenizer')
      if tokenizer is not None and tokenizer.name == 'hf':
        tokenizer.save_pretrained(directory)
      elif tokenizer is not None:
        tokenizer.save(os.path.join(directory, tokenizers.RUN_DIRECTORY))
    except (OSError, _require('safetensors').SafetensorError) as e:
      raise run_log.write_failed(directory, e, other='--output') from None
  return meta['model_type']


def export_checkpoint(config, workdir: str, directory: str) -> str:
  """--mode=export: the checkpoint config.restore_checkpoint names (latest, best,
  a step or average:N; config.restore_params: its parameters or their EMA) of
  `workdir` written to `directory` by `export`, with the model config the run
  saved with it (so no model overrides are needed); returns one line saying
  what was written.

  Raises:
    FileNotFoundError: the workdir holds no checkpoint (or not that step).
    ConfigError: the model has no transformers class (`to_transformers`).
  """
  with progress.waiting(f'reading {workdir}', leave=False):
    run = restore.open_run(config, workdir, own_config=True)  # the run's own model config.
  model, tokenizer = run.config.model, run.tokenizer
  kind = export(model, run.params, directory, run.step, tokenizer)
  how = f'transformers.{hf_config(model)["architectures"][0]}.from_pretrained loads it'
  if tokenizer is not None and tokenizer.name == 'hf':
    how += ', and AutoTokenizer.from_pretrained its tokenizer'
  what = f'step {run.step}' + (f' ({run.weights})' if run.weights else '')
  return (f'Exported {workdir} {what} to {directory} ({kind}: {how}; '
          'config.init_from=hf:DIR reads it back).')
