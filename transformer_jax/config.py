"""The one config object: every field with its default, every rule, and which
fields may change when a run resumes.

Experiment configs in `transformer_jax/configs/` start from `base_config()` and
change what they need; a command-line override such as
`--config.model.num_heads=4` changes one field. `validate` runs before anything
is built, so a config that cannot work fails with one line naming the field and
the fix. A field wrapped in `resumable(...)` only changes how long a run goes,
how it reports, where it runs or how it decodes, not what it computes, so it
may differ between a checkpoint and the run that resumes it
(`checkpoint.config_differences`). A field wrapped in `tunable(...)` is an
optimiser setting that does change what the run computes from then on, but
not the shape of its state: it too may change on resume, which is how a run
continues from its last good checkpoint after a divergence (e.g. with a lower
learning rate or gradient clipping); the resume names the changes in one line
and records them in environment.json. Every other field must match, except
when a finished run is only read (eval, decode, export): then only the model's
fields must (`MODEL_FIELDS`).

The model section also exists as a frozen, typed `ModelConfig` (hashable, so
modules and decoding can take it as a static argument of `jax.jit`), with the
derived sizes (`d_ff`, `head_dim`, layer counts) and the model's rules (`max_positions`,
`trained_positions`, `max_beam`, `generates`, `fills_masks`, `classifies`) as properties, read by
validation, decoding and generation alike. What a dataset is (its tasks, image
shape, evaluators) is catalog.py's; validation reads it.
"""

import dataclasses
import difflib
import importlib.util
import math
from typing import Any, Optional

from ml_collections import config_dict

from transformer_jax import catalog

VARIANTS = ('encoder', 'decoder', 'seq2seq')
POSITIONS = ('sinusoidal', 'learned', 'rotary', 'none', 'sinusoidal_2d')
IMAGE_POSITIONS = ('sinusoidal_2d',)  # for image patches only (config.model.patch_size > 0).
NORMS = ('post', 'pre')
NORM_TYPES = ('layernorm', 'rmsnorm')
INITS = ('paper', 'gpt2')
ACTIVATIONS = ('relu', 'gelu', 'gelu_tanh', 'swiglu')
ENCODER_HEADS = ('mlm', 'classify')
POOLINGS = ('mean', 'first', 'cls')
DTYPES = ('float32', 'bfloat16')
ATTENTION_IMPLS = ('xla', 'cudnn')
ATTENTIONS = ('full', 'local', 'linear')
REMATS = ('none', 'full', 'dots')
DECODE_METHODS = ('greedy', 'sample', 'beam')
OPTIMIZERS = ('adam', 'adamw')
SCHEDULES = ('rsqrt', 'cosine', 'constant', 'linear', 'wsd')
DECAY_MASKS = ('matrices', 'all')
PARALLELISMS = ('pmap', 'mesh')
RESTORE_PARAMS = ('params', 'ema')  # the weights eval, decode and export read.
# task -> (model variant, encoder head) it feeds.
TASKS = {'lm': ('decoder', None), 'mlm': ('encoder', 'mlm'),
         'classify': ('encoder', 'classify'), 'seq2seq': ('seq2seq', None)}
TOKENIZERS = ('char', 'byte', 'sentencepiece', 'hf')
HF_PREFIX = 'hf:'  # config.init_from=hf:PATH names a Hugging Face checkpoint directory (hf.py).
OVERFLOWS = ('drop', 'truncate', 'error')
UNEVEN_BATCHES = ('drop', 'error')
FORMATS = ('lines', 'tsv')
SPM_MODEL_TYPES = ('unigram', 'bpe')
WANDB_MODES = ('', 'online', 'offline')


class ConfigError(ValueError):
  """A config that cannot work; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class resumable:  # pylint: disable=invalid-name
  """Marks a field's default as one that may change when a run resumes."""
  value: Any


@dataclasses.dataclass(frozen=True)
class tunable:  # pylint: disable=invalid-name
  """Marks an optimiser setting that may change when a run resumes (announced)."""
  value: Any


def _section(fields: dict, prefix: str = '') -> config_dict.ConfigDict:
  """A ConfigDict of `fields`, the `resumable` and `tunable` marks taken off
  (and recorded when `prefix` names the section's place in the run config)."""
  plain = {}
  for name, value in fields.items():
    if isinstance(value, resumable):
      _RESUMABLE.add(prefix + name)
      value = value.value
    elif isinstance(value, tunable):
      _TUNABLE.add(prefix + name)
      value = value.value
    plain[name] = value
  return config_dict.ConfigDict(plain)


_RESUMABLE = set()
_TUNABLE = set()


def model_config() -> config_dict.ConfigDict:
  """Model hyper-parameters; defaults are the paper's base model."""
  return _section(dict(
      variant='seq2seq',  # encoder (BERT-style) | decoder (GPT-style) | seq2seq
      num_layers=6,  # N, used for both stacks unless overridden below.
      num_encoder_layers=config_dict.placeholder(int),
      num_decoder_layers=config_dict.placeholder(int),
      d_model=512,
      num_heads=8,  # h; d_k = d_v = d_model / h.
      # key/value heads shared by num_heads / num_kv_heads query heads each: None = num_heads
      # (the paper), 1 = multi-query (Shazeer 2019), between = grouped-query (Ainslie et al. 2023).
      num_kv_heads=config_dict.placeholder(int),
      # self-attention: full (paper) | local (sliding window, Longformer) | linear (FAVOR+,
      # Performer). Encoder-decoder attention stays full.
      attention='full',
      attention_window=128,  # local only: keys each query sees before it (and after, in encoders).
      # local only, encoder stack: the first N tokens of each row attend to every token and every
      # token attends to them (Longformer's global attention, e.g. a [CLS] token).
      global_tokens=0,
      num_random_features=256,  # linear only: m, FAVOR+'s positive orthogonal random features.
      ffn_ratio=4.0,  # d_ff = ffn_ratio * d_model.
      # relu (paper) | gelu (exact, erf) | gelu_tanh (tanh approximation: GPT-2) | swiglu
      activation='relu',
      dropout_rate=0.1,  # P_drop: sublayer outputs and embedding sums.
      attention_dropout_rate=0.0,  # on the attention weights.
      vocab_size=37000,  # shared source/target vocabulary, as the paper's.
      share_embeddings=True,  # source, target and pre-softmax weights tied.
      scale_embeddings=True,  # token embeddings times sqrt(d_model) (paper 3.4; GPT-2/BERT: no).
      # token-type (segment A/B) embeddings added to the inputs (BERT: 2); 0 = none. Sentence
      # pairs need 2 (their batches carry token_types); other batches are all of type 0.
      token_types=0,
      embedding_norm=False,  # a LayerNorm on the embedding sum, before dropout (BERT).
      # before the pre-softmax projection: dense + activation + LayerNorm (BERT's MLM head).
      head_transform=False,
      output_bias=False,  # a bias per vocabulary entry on a tied pre-softmax projection (BERT).
      # sinusoidal (paper) | learned | rotary (self-attention) | none | sinusoidal_2d (image
      # patches only: half the dimensions encode the patch's row, half its column).
      position='sinusoidal',
      # rows of the positional table: a learned one's longest sequence; sinusoids grow past it
      # in a full pass (a longer eval), not in cached decoding (text; images: see below).
      max_len=512,
      norm='post',  # post (paper): LN(x + Sublayer(x)) | pre: x + Sublayer(LN(x))
      # every norm of the model: layernorm (paper) | rmsnorm (Zhang & Sennrich 2019: no
      # centring, no bias).
      norm_type='layernorm',
      # layernorm only: each LayerNorm's bias beta; False = scale only (nanoGPT's bias=False).
      norm_bias=True,
      layer_norm_epsilon=1e-6,  # epsilon of every norm, layernorm or rmsnorm.
      # normalise each head's queries and keys (norm_type, over the head dim) before their dot
      # product (QK-norm: Henry et al. 2020; Dehghani et al. 2023).
      qk_norm=False,
      # c * tanh(logits / c) on the attention scores (Gemma 2; MaxText's attn_logits_soft_cap);
      # 0 = off. Not with attention=linear (it forms no scores).
      attn_logit_softcap=0.0,
      # the same on the output logits (Gemma 2; MaxText's final_logits_soft_cap); 0 = off.
      final_logit_softcap=0.0,
      # paper: Flax's defaults (LeCun-normal matrices, embeddings N(0, 1/d_model)) | gpt2: every
      # matrix and embedding N(0, 0.02), the projections into the residual stream N(0, 0.02^2 /
      # residual sublayers of the stack) (Radford et al. 2019, section 2.3).
      init='paper',
      use_bias=True,
      encoder_head='mlm',  # encoder variant only: mlm | classify
      num_classes=2,  # classify head only.
      # classify head only: mean over real tokens (images: all patches) | first (text: the first
      # token's output) | cls (images: a learned [CLS] vector prepended to the patches, ViT).
      pooling='mean',
      pooler=False,  # classify head only: dense + tanh on the pooled vector (BERT's pooler).
      pad_id=0,
      # Image input (the Vision Transformer, Dosovitskiy et al. 2020): 0 = text tokens; P > 0 cuts
      # every image into (image_size / P)^2 non-overlapping P x P patches, projected to d_model.
      # Encoder variant with the classify head only; its positional table has one row per patch
      # (plus the [CLS] vector's), so max_len and config.seq_len are not read.
      patch_size=0,
      image_size=0,  # patch_size > 0 only: the side of the (square) images, in pixels.
      num_channels=1,  # patch_size > 0 only: colour channels (1 grey, 3 RGB).
      dtype=resumable('float32'),  # compute dtype; parameters stay float32 either way.
      # xla | cudnn (flash attention on GPU; falls back to xla, logged).
      attention_impl=resumable('xla'),
      # none | full | dots: recompute each layer's activations in the backward pass.
      remat=resumable('none'),
  ), 'model.')


def data_config() -> config_dict.ConfigDict:
  """What to read and how to batch it (transformer_jax/data)."""
  return _section(dict(
      name='shakespeare',  # shakespeare | cmudict | tfds:<name> | text
      task='lm',  # lm | mlm | classify | seq2seq
      # char | byte | sentencepiece | hf (a Hugging Face checkpoint's own tokenizer).
      tokenizer='char',
      # hf only: a directory save_pretrained wrote with the tokenizer's files; '' = the
      # directory of config.init_from=hf:PATH (`tokenizer_path`). Read at a run's first start
      # only: the vocabulary is then the run's own (<workdir>/tokenizer/).
      tokenizer_path=resumable(''),
      packing=False,  # pack several short examples per row (segment ids).
      overflow='error',  # an example longer than seq_len: drop | truncate | error
      # batch_size not divisible by the device count: drop (lower it) | error
      uneven_batch='error',
      vocab_size=8000,  # sentencepiece only: pieces to learn (model.vocab_size must hold them).
      spm_model_type='unigram',  # sentencepiece only: unigram | bpe
      num_threads=resumable(2),  # grain reader threads.
      prefetch=resumable(4),  # batches prepared ahead of the train step.
      mask_rate=0.15,  # mlm only: share of tokens to predict (BERT's 80/10/10 corruption).
      bucketing=True,  # seq2seq without packing: pad each batch only to its length bucket.
      keep_stress=False,  # cmudict only: keep the stress digits on vowels (AH0, AH1).
      # '' = the dataset's default (cmudict: dev; tfds: test or validation).
      eval_split=resumable(''),
      data_dir=config_dict.placeholder(str),  # tfds only: where the prepared data lives.
      source_language='en',  # wmt only: the paper translates en -> de.
      target_language='de',
      max_examples=0,  # tfds and cmudict: use the first N examples of each split; 0 = all.
      tokenizer_examples=1_000_000,  # tfds only: train examples the vocabulary is built from.
      train_files='',  # text only: comma-separated paths or globs.
      eval_files='',  # text only; '' = the last 10% of the training examples.
      format='lines',  # text only: lines (one text per line) | tsv (source<TAB>target)
  ), 'data.')


def optimizer_config() -> config_dict.ConfigDict:
  """Optimiser and schedule (transformer_jax/train.py)."""
  return _section(dict(
      name='adam',  # adam | adamw
      b1=tunable(0.9),  # the paper's Adam: beta1 0.9, beta2 0.98, eps 1e-9.
      b2=tunable(0.98),
      eps=tunable(1e-9),
      weight_decay=tunable(0.0),
      # which parameters weight_decay shrinks: matrices (every parameter of 2 or more dims:
      # kernels and embeddings; not biases or norm scales, as nanoGPT) | all.
      decay=tunable('matrices'),
      # rsqrt (paper) | cosine | constant | linear | wsd (warmup-stable-decay); all but rsqrt
      # after a linear warmup of config.warmup_steps.
      schedule=tunable('rsqrt'),
      # updates over which cosine, linear and wsd decay: end_learning_rate is reached after the
      # last of them, so the last update still learns; later updates stay at end_learning_rate.
      # 0 = config.total_steps (the schedule follows the run's length).
      schedule_steps=tunable(0),
      # wsd only: the share of schedule_steps, at their end, over which the rate decays linearly
      # from learning_rate to end_learning_rate (Hagele et al. 2024: 0.2).
      wsd_decay_fraction=tunable(0.2),
      grad_clip_norm=tunable(0.0),  # 0 = off.
      grad_accum_steps=1,
      label_smoothing=tunable(0.1),
      end_learning_rate=tunable(0.0),  # cosine, linear, wsd: the rate after schedule_steps.
  ), 'optimizer.')


def decode_config() -> config_dict.ConfigDict:
  """How --mode=eval and --mode=decode generate (all may change on resume)."""
  return _section(dict(
      method=resumable('beam'),  # greedy | sample | beam
      # the paper's beam search: beam 4, length penalty alpha 0.6.
      beam_size=resumable(4),
      alpha=resumable(0.6),
      temperature=resumable(1.0),  # sample only.
      top_k=resumable(0),  # sample only; 0 = off.
      top_p=resumable(1.0),  # sample only; 1 = off.
      batch_size=resumable(64),  # sources decoded together.
      max_examples=resumable(0),  # eval: decode the first N examples only; 0 = the whole split.
  ), 'decode.')


def distributed_config() -> config_dict.ConfigDict:
  """Multi-host training on JAX's multi-controller runtime (`jax.distributed`):
  the same command runs on every host, each process feeding its own rows."""
  return _section(dict(
      enabled=resumable(False),  # call jax.distributed.initialize() before anything else.
      # HOST:PORT of process 0's coordinator; '' = auto-detect (SLURM, Open MPI, TPU pods,
      # Kubernetes), as jax.distributed.initialize() does.
      coordinator_address=resumable(''),
      num_processes=resumable(0),  # 0 = auto-detect.
      process_id=resumable(-1),  # this process, 0 .. num_processes - 1; -1 = auto-detect.
      initialization_timeout=resumable(300),  # seconds to wait for every process to join.
      # seconds without a sign of life from another process before this one stops, in one
      # line (parallel.py); a process that stops ends the others within about this long.
      peer_timeout=resumable(10),
  ), 'distributed.')


def wandb_config() -> config_dict.ConfigDict:
  """Weights & Biases logging of a training run (run_log.py, wandb_writer.py; the
  `wandb` extra). Records reach W&B as well as stdout, TensorBoard and metrics.jsonl."""
  return _section(dict(
      enabled=resumable(False),
      project=resumable('transformer_jax'),
      entity=resumable(''),  # '' = the default entity of the logged-in user.
      # '' = the sweep's name for a sweep's run (<sweep workdir>/runs/<name>), else none.
      group=resumable(''),
      # '' = wandb's default (WANDB_MODE, else online) | online | offline (wandb sync later)
      mode=resumable(''),
  ), 'wandb.')


def base_config() -> config_dict.ConfigDict:
  """Every field the code reads, with defaults."""
  c = _section(dict(
      seq_len=256,  # context length / maximum example length.
      batch_size=64,  # global, split over devices.
      total_steps=resumable(1000),
      learning_rate=tunable(1.0),  # multiplies the schedule (the paper's rsqrt is 1.0).
      warmup_steps=tunable(4000),
      # z_loss * log(Z)^2 added to each target's loss, Z the softmax's normaliser (PaLM,
      # Chowdhery et al. 2022, section 5; t5x's z_loss): keeps the output logits from drifting.
      # 0 = off. Reported losses stay the plain negative log-likelihood.
      z_loss=tunable(0.0),
      seed=0,
      # A new run's first parameters: another run's workdir, optionally :best (the
      # default), :latest or :STEP (init_from.py). Read at the first start only.
      init_from=resumable(''),
      # An exponential moving average of the parameters, updated after every step with this
      # decay and kept in the checkpoints (train.py: ema = decay ema + (1 - decay) params,
      # read back debiased); 0 = none. Changes what a run computes, so it may not change on
      # resume. Typical: 0.999 to 0.9999.
      ema_decay=0.0,
      # --mode=eval / decode / export: the checkpoint read: latest | best (lowest eval loss) |
      # a step | average:N (the mean of the last N checkpoints, Vaswani et al. 2017, 6.1).
      restore_checkpoint=resumable('latest'),
      # --mode=eval / decode / export: the weights read: params | ema (config.ema_decay's).
      restore_params=resumable('params'),
      eval_every=resumable(500),
      checkpoint_every=resumable(500),
      parallelism=resumable('pmap'),  # pmap | mesh; one device runs as mesh (plain jit).
      # mesh only: devices on the 'fsdp' axis (parameters sharded); the rest on 'data'.
      fsdp=resumable(1),
      log_every=resumable(50),  # steps per train record (stdout, TensorBoard, metrics.jsonl).
      eval_steps=resumable(0),  # batches per evaluation; 0 = the full eval split.
      # Sliding-window eval of a token stream's causal LM: windows this many tokens apart,
      # each scoring only the targets no earlier window scored, with up to seq_len - 1 tokens
      # of context (data/batching.stream_eval_rows); 0 = non-overlapping windows (= seq_len).
      eval_stride=resumable(0),
      # 'START:STOP': a jax.profiler trace of training steps START to STOP (the step numbers
      # of the log, both included) in <workdir>/profile/, for TensorBoard's Profile tab
      # (README, "Profiling"); '' = off.
      profile_steps=resumable(''),
      # A run stops when its train loss leaves its course (divergence.py): the median loss of
      # its last 32 steps more than divergence_factor x ln K (a uniform guess over its K
      # outputs) above the lowest such median so far; 0 = only when the loss or gradient norm
      # is not finite.
      divergence_factor=resumable(2.0),
      keep_checkpoints=resumable(3),  # the latest N checkpoints are kept ...
      keep_best_checkpoints=resumable(1),  # ... plus the N best by eval loss.
      async_checkpointing=resumable(True),  # write checkpoints in the background.
      # per-device peak FLOP/s for MFU; 0 = a known accelerator's, or measured on CPU.
      peak_flops=resumable(0.0),
      # JAX's persistent compilation cache: a later start that compiles the same program
      # (shapes, config, flags, jax version) loads it from here instead of compiling again.
      # Changes no result (benchmarks/startup.py measures what it saves). '' = off;
      # JAX_COMPILATION_CACHE_DIR, where set, wins.
      compilation_cache_dir=resumable('~/.cache/transformer_jax/jax_cache'),
      num_samples=resumable(0),  # decoder LM: texts sampled and printed after training.
      sample_length=resumable(200),  # tokens per sample (and per --mode=decode output).
      sample_prompt=resumable(''),  # text each sample starts from ('' = a newline).
      sample_temperature=resumable(0.8),
      # --mode=eval: the evaluators run after the loss (catalog.EVALUATORS, evaluators.py),
      # comma-separated; '' = the dataset's (catalog.DATASETS), none = no evaluator.
      evals=resumable(''),
      # Training evals (every eval_every) also run those evaluators on the first N examples of
      # the eval split (decoding them as config.decode says); 0 = off: the loss only.
      eval_decode_examples=resumable(0),
  ))
  c.model = model_config()
  c.data = data_config()
  c.optimizer = optimizer_config()
  c.decode = decode_config()
  c.distributed = distributed_config()
  c.wandb = wandb_config()
  return c


base_config()  # records the resumable marks.
RESUMABLE_FIELDS = frozenset(_RESUMABLE)
TUNABLE_FIELDS = frozenset(_TUNABLE)
# What a finished run read back (--mode=eval, decode, export: restore.py) must share with its
# checkpoint: the model's fields, which say what the parameters are. The others only choose
# what is measured and how (other held-out data, another batch), so there they may differ.
MODEL_FIELDS = frozenset(f'model.{name}' for name in model_config()) - RESUMABLE_FIELDS


def flatten(tree, sep: str = '.') -> dict:
  """A nested dict (or mapping) as {'a.b.c': leaf}: dotted config field names,
  or with sep='/' parameter names ('encoder/layer_0/.../kernel')."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) or hasattr(value, 'items'):
      out.update({f'{key}{sep}{k}': v for k, v in flatten(value, sep).items()})
    else:
      out[key] = value
  return out


def unknown_override(config, args) -> Optional[str]:
  """The first --config.KEY=VALUE among args whose KEY names no field of config,
  as one line with the fix (the closest names, or the section's fields); None
  when every KEY is a field."""
  for arg in args:
    if not arg.startswith('--config.'):
      continue
    parts = arg[len('--config.'):].split('=', 1)[0].split('.')
    section = config
    for i, part in enumerate(parts):
      where = '.'.join(['config', *parts[:i]])
      if not isinstance(section, config_dict.ConfigDict):
        return f'{where} is a value, not a section, so {arg.split("=")[0][2:]} names no field.'
      if part not in section:
        close = difflib.get_close_matches(part, list(section), n=1)
        fix = (f'did you mean {where}.{close[0]}?' if close else
               f'{where} has {", ".join(sorted(section))}.')
        return f'{where}.{part} is not a config field; {fix}'
      section = section[part]
  return None


def from_saved(saved: dict) -> config_dict.ConfigDict:
  """A run's saved config.json as a config; fields the code gained since the run
  was saved take their defaults, so older runs stay readable."""
  def merge(defaults: dict, values: dict) -> dict:
    return {**defaults, **{k: merge(defaults[k], v) if isinstance(v, dict)
                           and isinstance(defaults.get(k), dict) else v
                           for k, v in values.items()}}
  saved = dict(saved)
  if isinstance(saved.get('distributed'), bool):  # a flag before it became a section.
    saved['distributed'] = {'enabled': saved['distributed']}
  return config_dict.ConfigDict(merge(base_config().to_dict(), saved))


# ----------------------------------------------------------------------------
# The model section as a frozen, typed value.


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """`config.model`, frozen and typed: hashable, so a Flax module or a jitted
  decoding function can hold it as a static value. Field meanings: `model_config`."""
  variant: str
  num_layers: int
  num_encoder_layers: Optional[int]
  num_decoder_layers: Optional[int]
  d_model: int
  num_heads: int
  num_kv_heads: Optional[int]
  attention: str
  attention_window: int
  global_tokens: int
  num_random_features: int
  ffn_ratio: float
  activation: str
  dropout_rate: float
  attention_dropout_rate: float
  vocab_size: int
  share_embeddings: bool
  scale_embeddings: bool
  token_types: int
  embedding_norm: bool
  head_transform: bool
  output_bias: bool
  position: str
  max_len: int
  norm: str
  norm_type: str
  norm_bias: bool
  layer_norm_epsilon: float
  qk_norm: bool
  attn_logit_softcap: float
  final_logit_softcap: float
  init: str
  use_bias: bool
  encoder_head: str
  num_classes: int
  pooling: str
  pooler: bool
  pad_id: int
  patch_size: int
  image_size: int
  num_channels: int
  dtype: str
  attention_impl: str
  remat: str

  @classmethod
  def of(cls, m) -> 'ModelConfig':
    """From a `config.model` ConfigDict (or a ModelConfig, returned as is)."""
    if isinstance(m, cls):
      return m
    values = m.to_dict() if hasattr(m, 'to_dict') else dict(m)
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})

  def replace(self, **changes) -> 'ModelConfig':
    return dataclasses.replace(self, **changes)

  @property
  def d_ff(self) -> int:
    """Inner width of the position-wise FFN: ffn_ratio x d_model."""
    return int(round(self.ffn_ratio * self.d_model))

  @property
  def head_dim(self) -> int:
    """d_k = d_v = d_model / num_heads."""
    return self.d_model // self.num_heads

  @property
  def kv_heads(self) -> int:
    """Key/value heads: num_kv_heads, else num_heads."""
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  @property
  def num_patches(self) -> int:
    """N = (image_size / patch_size)^2 patches per image; 0 for text."""
    return (self.image_size // self.patch_size)**2 if self.patch_size else 0

  @property
  def image_length(self) -> int:
    """Tokens per image row the encoder computes on: N patches, plus the [CLS] vector."""
    return self.num_patches + (self.pooling == 'cls')

  @property
  def num_positions(self) -> int:
    """Rows of the positional table: one per image token, else max_len."""
    return self.image_length if self.patch_size else self.max_len

  def row_length(self, seq_len: int) -> int:
    """Tokens per row a step computes on: image_length for images, else `seq_len`."""
    return self.image_length if self.patch_size else seq_len

  @property
  def encoder_layers(self) -> int:
    """N of the encoder stack: num_encoder_layers, else num_layers."""
    return self.num_layers if self.num_encoder_layers is None else self.num_encoder_layers

  @property
  def decoder_layers(self) -> int:
    """N of the decoder stack: num_decoder_layers, else num_layers."""
    return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

  @property
  def has_encoder(self) -> bool:
    """An encoder stack: the encoder-only (BERT, ViT) and seq2seq variants."""
    return self.variant in ('encoder', 'seq2seq')

  @property
  def has_decoder(self) -> bool:
    """A causal decoder stack: the decoder-only (GPT) and seq2seq variants."""
    return self.variant in ('decoder', 'seq2seq')

  @property
  def generates(self) -> bool:
    """Whether the model generates text token by token (decode.py, generate.py): a
    decoder does; an encoder-only model scores its inputs and does not."""
    return self.has_decoder

  @property
  def fills_masks(self) -> bool:
    """A masked LM (an encoder-only text model with the MLM head): it does not
    generate, but scores every token for each masked position of its inputs
    (decode.mask_fills; --mode=decode prints the likeliest)."""
    return self.variant == 'encoder' and self.encoder_head == 'mlm' and not self.patch_size

  @property
  def classifies(self) -> bool:
    """An encoder-only model with the classification head: logits [b, num_classes]
    over the pooled outputs instead of logits per token over the vocabulary."""
    return self.variant == 'encoder' and self.encoder_head == 'classify'

  @property
  def max_positions(self) -> Optional[int]:
    """Longest token sequence the model decodes: the max_len rows of a positional
    table (sinusoidal, learned: paper section 3.5), which a cached decoder, fed one
    token at a time, reads; None where nothing limits it (rotary and none have no
    table; an image model's table has a row per patch, num_positions, whatever the
    sequence length says)."""
    if self.patch_size or self.position not in ('sinusoidal', 'learned'):
      return None
    return self.max_len

  @property
  def trained_positions(self) -> Optional[int]:
    """Longest sequence a full pass (training, eval) reads: a learned table's max_len
    rows, fixed once trained. None for the paper's sinusoids, a formula computed to
    the length of the sequence (layers.PositionalEncoding), so a run may be evaluated
    at a longer context than it trained at; None wherever max_positions is."""
    return self.max_positions if self.position == 'learned' else None

  @property
  def max_beam(self) -> int:
    """Widest beam search: half the vocabulary. Each step keeps the 2 x beam_size
    best of beam_size x vocab_size candidates (decode.beam_search), so that
    beam_size stay live even when beam_size of them end in EOS."""
    return self.vocab_size // 2


# ----------------------------------------------------------------------------
# Rules.


def _check(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def _check_choice(section: str, fields, name: str, allowed):
  value = getattr(fields, name)
  _check(value in allowed, f'config.{section}{name}={value!r} is unknown; use one of {allowed}.')


def validate_model(m):
  """Raises ConfigError for a model config (a ConfigDict or ModelConfig) that cannot work."""
  m = ModelConfig.of(m)
  for name, allowed in (('variant', VARIANTS), ('position', POSITIONS), ('norm', NORMS),
                        ('norm_type', NORM_TYPES), ('init', INITS),
                        ('activation', ACTIVATIONS), ('dtype', DTYPES),
                        ('attention_impl', ATTENTION_IMPLS), ('remat', REMATS),
                        ('encoder_head', ENCODER_HEADS), ('pooling', POOLINGS),
                        ('attention', ATTENTIONS)):
    _check_choice('model.', m, name, allowed)
  for name in ('d_model', 'num_heads', 'vocab_size', 'max_len', 'num_layers'):
    value = getattr(m, name)
    _check(value > 0, f'config.model.{name}={value} must be positive.')
  _check(m.d_model % m.num_heads == 0,
         f'config.model.d_model={m.d_model} is not divisible by config.model.num_heads='
         f'{m.num_heads}; pick num_heads among the divisors of d_model.')
  head_dim = m.d_model // m.num_heads
  _check(m.position != 'rotary' or head_dim % 2 == 0,
         f'config.model.position=rotary needs an even head dim, got d_model/num_heads={head_dim};'
         ' change num_heads or d_model.')
  _check(m.position != 'sinusoidal' or m.d_model % 2 == 0,
         f'config.model.position=sinusoidal needs an even d_model, got {m.d_model}.')
  _check(m.position != 'sinusoidal_2d' or m.d_model % 4 == 0,
         f'config.model.position=sinusoidal_2d needs d_model divisible by 4 (a sine and a cosine '
         f'for rows and for columns), got {m.d_model}.')
  ff = m.ffn_ratio * m.d_model
  _check(m.ffn_ratio > 0 and abs(ff - round(ff)) < 1e-9,
         f'config.model.ffn_ratio={m.ffn_ratio} times d_model={m.d_model} is {ff}, not a '
         'positive integer d_ff; pick a ratio that makes it whole.')
  for name in ('dropout_rate', 'attention_dropout_rate'):
    value = getattr(m, name)
    _check(0.0 <= value < 1.0, f'config.model.{name}={value} must be in [0, 1).')
  _check(m.norm_bias or m.norm_type == 'layernorm',
         f'config.model.norm_bias=False removes LayerNorm\'s bias, and norm_type={m.norm_type} '
         'has none; leave norm_bias at True.')
  _check(m.layer_norm_epsilon > 0,
         f'config.model.layer_norm_epsilon={m.layer_norm_epsilon} must be positive.')
  _check(m.token_types >= 0, f'config.model.token_types={m.token_types} must be >= 0 (0 = none).')
  for name in ('attn_logit_softcap', 'final_logit_softcap'):
    value = getattr(m, name)
    _check(value >= 0, f'config.model.{name}={value} must be >= 0 (0 = off).')
  _check(not m.output_bias or m.share_embeddings,
         'config.model.output_bias=True adds a bias to the tied pre-softmax projection; with '
         'share_embeddings=False the projection has its own (use_bias); set output_bias=False.')
  _check(0 <= m.pad_id < m.vocab_size,
         f'config.model.pad_id={m.pad_id} must be a token id below vocab_size={m.vocab_size}.')
  if m.classifies:
    _check(m.num_classes >= 2, f'config.model.num_classes={m.num_classes} must be at least 2.')
  for name in ('num_encoder_layers', 'num_decoder_layers'):
    value = getattr(m, name)
    _check(value is None or value > 0, f'config.model.{name}={value} must be positive.')
  _validate_attention(m)
  _validate_image(m)


def _validate_image(m):
  """Image input (patch_size > 0): its sizes, and the options that mean something for
  images only or for text only."""
  _check(m.patch_size >= 0, f'config.model.patch_size={m.patch_size} must be >= 0 (0 = text).')
  if not m.patch_size:
    _check(m.pooling != 'cls',
           'config.model.pooling=cls prepends a learned [CLS] vector to image patches '
           '(config.model.patch_size > 0); a text classifier pools its first token (first) or '
           'the mean of its tokens (mean).')
    _check(m.position not in IMAGE_POSITIONS,
           f'config.model.position={m.position} encodes the rows and columns of image patches; '
           'set config.model.patch_size > 0 for images, or a 1-D position for text.')
    return
  _check(m.classifies,
         f'config.model.patch_size={m.patch_size} makes an image classifier (ViT), which needs '
         f'variant=encoder and encoder_head=classify (got variant={m.variant}'
         f'{", encoder_head=" + m.encoder_head if m.variant == "encoder" else ""}); set them, '
         'or patch_size=0 for text.')
  _check(m.image_size > 0 and m.image_size % m.patch_size == 0,
         f'config.model.image_size={m.image_size} must be a positive multiple of '
         f'config.model.patch_size={m.patch_size} (non-overlapping patches); pick a patch size '
         'that divides the image side.')
  _check(m.num_channels > 0, f'config.model.num_channels={m.num_channels} must be positive.')
  _check(m.pooling in ('cls', 'mean'),
         f'config.model.pooling={m.pooling} would pool the top-left patch of an image; use cls '
         '(a learned [CLS] vector, ViT) or mean (of the patches).')
  _check(m.token_types == 0, f'config.model.token_types={m.token_types} adds text segment '
         'embeddings; set it to 0 for images.')


def _validate_attention(m):
  """The attention kind, its sizes, and the options it has no meaning with."""
  kv = m.num_kv_heads
  _check(kv is None or (kv > 0 and m.num_heads % kv == 0),
         f'config.model.num_kv_heads={kv} must be a positive divisor of num_heads={m.num_heads} '
         '(1 = multi-query; unset = num_heads).')
  for name in ('attention_window', 'num_random_features'):
    value = getattr(m, name)
    _check(value > 0, f'config.model.{name}={value} must be positive.')
  _check(m.global_tokens >= 0, f'config.model.global_tokens={m.global_tokens} must be >= 0.')
  _check(m.global_tokens == 0 or (m.attention == 'local' and m.variant != 'decoder'),
         f'config.model.global_tokens={m.global_tokens} applies to attention=local in an encoder '
         f'stack (got attention={m.attention}, variant={m.variant}); set it to 0.')
  _check(m.attention != 'linear' or m.attention_dropout_rate == 0,
         f'config.model.attention_dropout_rate={m.attention_dropout_rate}: attention=linear never '
         'forms the attention weights to drop; set it to 0.')
  _check(m.attention != 'linear' or m.attn_logit_softcap == 0,
         f'config.model.attn_logit_softcap={m.attn_logit_softcap}: attention=linear never forms '
         'the attention scores to cap; set it to 0.')
  _check(m.attention == 'full' or m.attention_impl == 'xla',
         f'config.model.attention_impl={m.attention_impl} runs full attention only; set it to xla '
         f'with attention={m.attention}.')


def validate_optimizer(c):
  """Raises ConfigError for optimiser and schedule fields that cannot work."""
  o = c.optimizer
  _check_choice('optimizer.', o, 'name', OPTIMIZERS)
  _check_choice('optimizer.', o, 'schedule', SCHEDULES)
  _check_choice('optimizer.', o, 'decay', DECAY_MASKS)
  _check(c.learning_rate > 0, f'config.learning_rate={c.learning_rate} must be positive.')
  _check(c.warmup_steps >= 0, f'config.warmup_steps={c.warmup_steps} must be >= 0.')
  _check(c.z_loss >= 0, f'config.z_loss={c.z_loss} must be >= 0 (0 = off; PaLM: 1e-4).')
  _check(o.schedule_steps >= 0, f'config.optimizer.schedule_steps={o.schedule_steps} must be '
         '>= 0 (0 = config.total_steps).')
  _check(0 < o.wsd_decay_fraction <= 1, f'config.optimizer.wsd_decay_fraction='
         f'{o.wsd_decay_fraction} must be in (0, 1].')
  _check(o.schedule_steps == 0 or o.schedule in ('cosine', 'linear', 'wsd'),
         f'config.optimizer.schedule_steps={o.schedule_steps} is the length of a decay; '
         f'schedule={o.schedule} has none, so set it to 0 (or schedule to cosine, linear or wsd).')
  steps = schedule_steps(c)
  if o.schedule == 'wsd':
    _check(c.warmup_steps <= steps - wsd_decay_steps(c),
           f'config.warmup_steps={c.warmup_steps} runs into the wsd decay, which starts at step '
           f'{steps - wsd_decay_steps(c)} of {steps}; lower warmup_steps or '
           'config.optimizer.wsd_decay_fraction.')
  _check(o.schedule != 'rsqrt' or c.warmup_steps > 0,
         'config.optimizer.schedule=rsqrt needs config.warmup_steps > 0.')
  for name in ('b1', 'b2'):
    _check(0.0 <= o[name] < 1.0, f'config.optimizer.{name}={o[name]} must be in [0, 1) '
           '(the paper: b1 0.9, b2 0.98).')
  _check(o.eps > 0, f'config.optimizer.eps={o.eps} must be positive (the paper: 1e-9).')
  _check(o.weight_decay >= 0, f'config.optimizer.weight_decay={o.weight_decay} must be >= 0.')
  _check(o.weight_decay == 0 or o.name == 'adamw',
         f'config.optimizer.weight_decay={o.weight_decay} needs config.optimizer.name=adamw.')
  _check(0.0 <= o.label_smoothing < 1.0,
         f'config.optimizer.label_smoothing={o.label_smoothing} must be in [0, 1).')
  _check(o.grad_clip_norm >= 0, f'config.optimizer.grad_clip_norm={o.grad_clip_norm} must be >= 0.')
  _check(o.end_learning_rate >= 0,
         f'config.optimizer.end_learning_rate={o.end_learning_rate} must be >= 0.')
  _check(o.grad_accum_steps > 0 and c.batch_size % o.grad_accum_steps == 0,
         f'config.optimizer.grad_accum_steps={o.grad_accum_steps} must be positive and divide '
         f'config.batch_size={c.batch_size}.')


def schedule_steps(c) -> int:
  """Updates over which the learning-rate schedule decays: config.optimizer.schedule_steps,
  else (0) config.total_steps."""
  return c.optimizer.schedule_steps or c.total_steps


def wsd_decay_steps(c) -> int:
  """The wsd schedule's decay: the last round(wsd_decay_fraction x schedule_steps) of
  them, at least one."""
  return max(1, round(c.optimizer.wsd_decay_fraction * schedule_steps(c)))


def validate_run(c):
  """Raises ConfigError for run-length, logging, checkpointing and placement fields."""
  _check_choice('', c, 'parallelism', PARALLELISMS)
  for name in ('seq_len', 'batch_size', 'total_steps', 'log_every', 'eval_every',
               'checkpoint_every', 'keep_checkpoints', 'fsdp'):
    _check(c[name] > 0, f'config.{name}={c[name]} must be positive.')
  for name in ('eval_steps', 'keep_best_checkpoints', 'num_samples', 'sample_length',
               'peak_flops', 'eval_stride', 'eval_decode_examples'):
    _check(c[name] >= 0, f'config.{name}={c[name]} must be >= 0.')
  _check(c.divergence_factor >= 0, f'config.divergence_factor={c.divergence_factor} must be '
         '>= 0 (0 = stop on a non-finite loss only; the default 2.0).')
  _check(c.sample_temperature >= 0,
         f'config.sample_temperature={c.sample_temperature} must be >= 0 (0 = greedy).')
  _check(c.fsdp == 1 or c.parallelism == 'mesh',
         f'config.fsdp={c.fsdp} shards parameters only with config.parallelism=mesh; set it.')
  limit = ModelConfig.of(c.model).trained_positions
  _check(limit is None or c.seq_len <= limit,
         f'config.seq_len={c.seq_len} is longer than the learned positional table '
         f'(config.model.max_len={c.model.max_len} rows); lower seq_len, or raise max_len for a '
         'new run (a trained table is fixed: --mode=eval may lengthen seq_len only for '
         'positions that are not learned: sinusoidal, rotary or none).')
  _check(c.eval_stride <= c.seq_len,
         f'config.eval_stride={c.eval_stride} must be at most config.seq_len={c.seq_len} '
         '(0 = non-overlapping windows).')
  _check(not c.eval_stride or (c.data.task == 'lm' and
                               getattr(catalog.DATASETS.get(c.data.name), 'kind', '') == 'corpus'),
         f'config.eval_stride={c.eval_stride} slides the windows of a token stream\'s causal LM '
         f'(data.task=lm on a corpus such as shakespeare), not data.task={c.data.task} on '
         f'{c.data.name}; set it to 0.')
  profile_range(c)
  validate_distributed(c.distributed)
  which = str(c.restore_checkpoint)
  _check(which in ('latest', 'best') or which.isdigit() or averaged_checkpoints(which) > 0,
         f'config.restore_checkpoint={c.restore_checkpoint!r} must be latest, best, a step '
         'number or average:N (N >= 1).')
  _check_choice('', c, 'restore_params', RESTORE_PARAMS)
  _check(0.0 <= c.ema_decay < 1.0, f'config.ema_decay={c.ema_decay} must be in [0, 1) '
         '(0 = no EMA; typical: 0.999 to 0.9999).')


def profile_range(c) -> Optional[tuple]:
  """(START, STOP) of config.profile_steps 'START:STOP' (1 <= START <= STOP), or None when
  it is ''.

  Raises:
    ConfigError: a value not of that form.
  """
  if not c.profile_steps:
    return None
  start, colon, stop = str(c.profile_steps).partition(':')
  _check(colon and start.strip().isdigit() and stop.strip().isdigit()
         and 1 <= int(start) <= int(stop),
         f'config.profile_steps={c.profile_steps!r} must be START:STOP, the first and last '
         'step traced (1 <= START <= STOP, e.g. 10:15), or empty (no trace).')
  return int(start), int(stop)


def averaged_checkpoints(which) -> int:
  """N of a config.restore_checkpoint `which` of average:N (the last N checkpoints
  are averaged); 0 when it names one checkpoint (or is malformed: validation says so)."""
  kind, _, count = str(which).partition(':')
  return int(count) if kind == 'average' and count.isdigit() else 0


def validate_distributed(d):
  """Raises ConfigError for config.distributed fields that cannot work."""
  given = [f'{name}={d[name]!r}' for name, unset in
           (('coordinator_address', ''), ('num_processes', 0), ('process_id', -1))
           if d[name] != unset]
  _check(d.enabled or not given,
         f'config.distributed.{given[0] if given else ""} is set but config.distributed.enabled '
         'is False; set --config.distributed.enabled=True.')
  _check(d.num_processes >= 0, f'config.distributed.num_processes={d.num_processes} must be '
         '>= 1 (or 0 = auto-detect).')
  _check(d.process_id >= -1 and (d.num_processes == 0 or d.process_id < d.num_processes),
         f'config.distributed.process_id={d.process_id} must be in 0..num_processes-1 '
         f'(num_processes={d.num_processes}), or -1 = auto-detect.')
  if d.coordinator_address:
    host, _, port = d.coordinator_address.rpartition(':')
    _check(bool(host) and port.isdigit(),
           f'config.distributed.coordinator_address={d.coordinator_address!r} is not HOST:PORT; '
           'give e.g. 10.0.0.1:12345 (the host of process 0).')
    _check(d.num_processes > 0 and d.process_id >= 0,
           'config.distributed.coordinator_address is set, so num_processes and process_id must '
           'be too (e.g. --config.distributed.num_processes=2 --config.distributed.process_id=0).')
  _check(d.initialization_timeout > 0, 'config.distributed.initialization_timeout='
         f'{d.initialization_timeout} must be positive (seconds).')
  _check(d.peer_timeout > 0, f'config.distributed.peer_timeout={d.peer_timeout} must be '
         'positive (seconds).')


def validate_data(c):
  """Raises ConfigError for data fields that cannot work with the model."""
  d, m = c.data, c.model
  _check(bool(d.name), f'config.data.name is empty; set it to {_dataset_names()}.')
  _check(d.name in catalog.DATASETS or not d.name.startswith(catalog.TFDS_PREFIX),
         f'config.data.name={d.name!r} is not supported; use one of '
         f'{", ".join(catalog.TFDS_PREFIX + n for n in catalog.tfds_names())}.')
  _check(d.name in catalog.DATASETS,
         f'config.data.name={d.name!r} is unknown; use {_dataset_names()}.')
  dataset = catalog.DATASETS[d.name]
  _validate_image_data(c)
  _check_choice('data.', d, 'task', tuple(TASKS))
  variant, head = TASKS[d.task]
  if m.variant != variant or (head and m.encoder_head != head):
    need = f'config.model.variant={variant}' + (f' and encoder_head={head}' if head else '')
    raise ConfigError(f'config.data.task={d.task} needs {need}, got variant={m.variant}'
                      f'{", encoder_head=" + m.encoder_head if m.variant == "encoder" else ""};'
                      ' change the task or the model.')
  _check(d.task in dataset.tasks, f'config.data.task={d.task} is not available for {d.name}; '
         f'use {_either(dataset.tasks)}.')
  _check(dataset.kind != 'pairs' or m.token_types >= 2,
         f'config.data.name={d.name} holds sentence pairs, read with segment embeddings; set '
         'config.model.token_types=2.')
  for name, allowed in (('tokenizer', TOKENIZERS), ('overflow', OVERFLOWS),
                        ('uneven_batch', UNEVEN_BATCHES), ('format', FORMATS),
                        ('spm_model_type', SPM_MODEL_TYPES)):
    _check_choice('data.', d, name, allowed)
  _check(d.tokenizer != 'hf' or bool(tokenizer_path(c)),
         'config.data.tokenizer=hf reads a Hugging Face tokenizer, but no directory is named; '
         'set --config.data.tokenizer_path=DIR (a directory save_pretrained wrote) or '
         '--config.init_from=hf:DIR.')
  _check(d.tokenizer == 'hf' or not d.tokenizer_path,
         f'config.data.tokenizer_path={d.tokenizer_path!r} is read by tokenizer=hf only (got '
         f'tokenizer={d.tokenizer}); set --config.data.tokenizer=hf or leave the path empty.')
  _check(not (d.packing and m.global_tokens),
         f'config.model.global_tokens={m.global_tokens} marks the first tokens of each row, and a '
         'packed row holds several examples; set config.data.packing=False.')
  _check(not (d.packing and d.task == 'classify'),
         'config.data.packing=True does not apply to task=classify (one label per row); set '
         'packing=False.')
  _check(0 < d.mask_rate < 1, f'config.data.mask_rate={d.mask_rate} must be in (0, 1).')
  _check(d.vocab_size > 0, f'config.data.vocab_size={d.vocab_size} must be positive.')
  for name in ('max_examples', 'tokenizer_examples'):
    _check(d[name] >= 0, f'config.data.{name}={d[name]} must be >= 0 (0 = all).')
  for name in ('num_threads', 'prefetch'):
    _check(d[name] >= 0, f'config.data.{name}={d[name]} must be >= 0.')
  evaluators(c)  # names only evaluators that fit.


def _either(names) -> str:
  """'a', 'a or b', 'a, b or c'."""
  names = list(names)
  return ', '.join(names[:-1]) + ' or ' + names[-1] if len(names) > 1 else names[0]


def _dataset_names() -> str:
  """The choices of config.data.name, as an error message names them."""
  local = [n for n in catalog.DATASETS if not n.startswith(catalog.TFDS_PREFIX)]
  return (f'{", ".join(local)} or {catalog.TFDS_PREFIX}<name> '
          f'({", ".join(catalog.tfds_names())})')


def evaluators(c) -> tuple:
  """The evaluators --mode=eval runs (catalog.EVALUATORS; evaluators.py has them):
  config.evals, comma-separated, else the dataset's that fit the run's task and
  tokenizer (catalog.Dataset.evaluators); `none` runs none.

  Raises:
    ConfigError: config.evals names an unknown evaluator, or one that does not fit
      the run's task, dataset or tokenizer.
  """
  d, dataset = c.data, catalog.DATASETS[c.data.name]
  if not c.evals:
    return dataset.default_evaluators(d.task, d.tokenizer)
  if c.evals == 'none':
    return ()
  names = tuple(n.strip() for n in c.evals.split(',') if n.strip())
  fits = [n for n, e in catalog.EVALUATORS.items()
          if e.misfit(d.task, dataset.kind, d.tokenizer) is None]
  for name in names:
    _check(name in catalog.EVALUATORS,
           f'config.evals={c.evals!r} names an unknown evaluator {name!r}; use one of '
           f'{", ".join(catalog.EVALUATORS)} (comma-separated), or none.')
    misfit = catalog.EVALUATORS[name].misfit(d.task, dataset.kind, d.tokenizer)
    _check(misfit is None,
           f'config.evals={c.evals!r}: {name} {misfit} (config.data.name={d.name}, '
           f'task={d.task}, tokenizer={d.tokenizer}); use '
           f'{_either(fits) if fits else "none"}.')
  return names


def tokenizer_path(c) -> str:
  """Where config.data.tokenizer=hf reads its files: config.data.tokenizer_path, else
  the checkpoint directory of config.init_from=hf:PATH, else '' (none named)."""
  if c.data.tokenizer_path:
    return c.data.tokenizer_path
  init_from = str(c.init_from or '')
  return init_from[len(HF_PREFIX):] if init_from.startswith(HF_PREFIX) else ''


def _validate_image_data(c):
  """An image model reads an image dataset of its image size, channels and classes; a text
  model, a text dataset."""
  d, m = c.data, c.model
  dataset = catalog.DATASETS[d.name]
  if m.patch_size and dataset.image_shape is None:
    raise ConfigError(f'config.model.patch_size={m.patch_size} makes an image model, but '
                      f'config.data.name={d.name!r} is not an image dataset; use one of '
                      f'{", ".join(catalog.names_of(kind="image"))}, or set '
                      'config.model.patch_size=0 for text.')
  if dataset.image_shape is None:
    return
  size, _, channels = dataset.image_shape
  classes = dataset.num_classes
  _check(bool(m.patch_size),
         f'config.data.name={d.name} holds {size}x{size} images, but config.model.patch_size=0 '
         'makes a text model; set config.model.patch_size (a divisor of '
         f'{size}), image_size={size} and num_channels={channels}, or start from '
         '--config=digits_vit.')
  for name, value in (('image_size', size), ('num_channels', channels), ('num_classes', classes)):
    _check(m[name] == value, f'config.model.{name}={m[name]} but {d.name} has {size}x{size} '
           f'images of {channels} channel(s) in {classes} classes; set config.model.{name}='
           f'{value}.')


def validate_decode(d, m):
  """Raises ConfigError for decoding settings that cannot work with config.model `m`."""
  m = ModelConfig.of(m)
  _check_choice('decode.', d, 'method', DECODE_METHODS)
  _check(d.beam_size >= 1, f'config.decode.beam_size={d.beam_size} must be at least 1.')
  _check(d.method != 'beam' or not m.generates or d.beam_size <= m.max_beam,
         f'config.decode.beam_size={d.beam_size} is more than half the vocabulary '
         f'(config.model.vocab_size={m.vocab_size}); set it to at most {m.max_beam}.')
  _check(d.batch_size >= 1, f'config.decode.batch_size={d.batch_size} must be at least 1.')
  _check(d.temperature > 0 or d.method != 'sample',
         f'config.decode.temperature={d.temperature} must be positive for sampling.')
  _check(d.top_k >= 0, f'config.decode.top_k={d.top_k} must be >= 0 (0 = off).')
  _check(0 < d.top_p <= 1, f'config.decode.top_p={d.top_p} must be in (0, 1].')
  _check(d.alpha >= 0, f'config.decode.alpha={d.alpha} must be >= 0.')
  _check(d.max_examples >= 0, f'config.decode.max_examples={d.max_examples} must be >= 0.')


def validate_wandb(w):
  """Raises ConfigError for config.wandb fields that cannot work."""
  _check_choice('wandb.', w, 'mode', WANDB_MODES)
  _check(not w.enabled or bool(w.project), 'config.wandb.project is empty; name the W&B project '
         '(e.g. --config.wandb.project=transformer_jax).')
  _check(not w.enabled or importlib.util.find_spec('wandb') is not None,
         'config.wandb.enabled=True needs the wandb package; pip install '
         '"transformer_jax[wandb]" (or wandb), or leave W&B off.')


def _check_finite(fields, prefix: str = 'config.'):
  """Every number of the config is finite: inf passes a `> 0` check, and NaN
  or inf as a rate, size or threshold makes no run."""
  for name, value in fields.items():
    if isinstance(value, config_dict.ConfigDict):
      _check_finite(value, f'{prefix}{name}.')
    elif isinstance(value, float):
      _check(math.isfinite(value), f'{prefix}{name}={value} is not a finite number; give one.')


def validate(c):
  """Raises ConfigError for a run config that cannot work."""
  _check_finite(c)
  validate_model(c.model)
  validate_run(c)
  validate_optimizer(c)
  validate_data(c)
  validate_decode(c.decode, c.model)
  validate_wandb(c.wandb)


def global_batch_size(c, num_devices: int) -> int:
  """The global batch a run uses on `num_devices`: config.batch_size, split over
  the devices and then config.optimizer.grad_accum_steps micro-batches each.

  A batch that does not split is an error unless config.data.uneven_batch=drop,
  which lowers it to the nearest size that does (the caller logs it).
  """
  unit = num_devices * c.optimizer.grad_accum_steps
  b = c.batch_size
  if b % unit == 0:
    return b
  how = (f'over {num_devices} devices' + (f' and then {c.optimizer.grad_accum_steps} '
         'micro-batches (config.optimizer.grad_accum_steps)'
         if c.optimizer.grad_accum_steps > 1 else ''))
  if c.data.uneven_batch == 'drop':
    _check(b >= unit, f'config.batch_size={b} is too small to split {how}; set it to a '
           f'multiple of {unit}.')
    return b - b % unit
  raise ConfigError(f'config.batch_size={b} does not split {how}; set it to a multiple of '
                    f'{unit} or config.data.uneven_batch=drop.')
