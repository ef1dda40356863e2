"""The one config object: defaults for every field, and validation.

Experiment configs in `transformer_jax/configs/` start from `base_config()` and
change what they need; a command-line override such as
`--config.model.num_heads=4` changes one field. `validate` runs before anything
is built, so a config that cannot work fails with one line naming the field and
the fix.
"""

from ml_collections import config_dict

VARIANTS = ('encoder', 'decoder', 'seq2seq')
POSITIONS = ('sinusoidal', 'learned', 'rotary', 'none')
NORMS = ('post', 'pre')
ACTIVATIONS = ('relu', 'gelu', 'swiglu')
ENCODER_HEADS = ('mlm', 'classify')
POOLINGS = ('mean', 'first')
DTYPES = ('float32', 'bfloat16')
ATTENTION_IMPLS = ('xla', 'cudnn')
REMATS = ('none', 'full', 'dots')
DECODE_METHODS = ('greedy', 'sample', 'beam')


class ConfigError(ValueError):
  """A config that cannot work; the message names the field and the fix."""


def model_config() -> config_dict.ConfigDict:
  """Model hyper-parameters; defaults are the paper's base model."""
  m = config_dict.ConfigDict()
  m.variant = 'seq2seq'  # encoder (BERT-style) | decoder (GPT-style) | seq2seq
  m.num_layers = 6  # N, used for both stacks unless overridden below.
  m.num_encoder_layers = config_dict.placeholder(int)
  m.num_decoder_layers = config_dict.placeholder(int)
  m.d_model = 512
  m.num_heads = 8  # h; d_k = d_v = d_model / h.
  m.ffn_ratio = 4.0  # d_ff = ffn_ratio * d_model.
  m.activation = 'relu'  # relu (paper) | gelu | swiglu
  m.dropout_rate = 0.1  # P_drop: sublayer outputs and embedding sums.
  m.attention_dropout_rate = 0.0  # on the attention weights.
  m.vocab_size = 37000  # shared source/target vocabulary, as the paper's.
  m.share_embeddings = True  # source, target and pre-softmax weights tied.
  m.position = 'sinusoidal'  # sinusoidal (paper) | learned | rotary | none
  m.max_len = 512  # size of the positional table / longest sequence.
  m.norm = 'post'  # post (paper): LN(x + Sublayer(x)) | pre: x + Sublayer(LN(x))
  m.layer_norm_epsilon = 1e-6
  m.use_bias = True
  m.encoder_head = 'mlm'  # encoder variant only: mlm | classify
  m.num_classes = 2  # classify head only.
  m.pooling = 'mean'  # classify head only: mean over real tokens | first
  m.pad_id = 0
  m.dtype = 'float32'  # compute dtype; parameters stay float32.
  m.attention_impl = 'xla'  # xla | cudnn (flash attention on GPU; falls back to xla, logged).
  m.remat = 'none'  # none | full | dots: recompute each layer's activations in the backward pass.
  return m


def data_config() -> config_dict.ConfigDict:
  """What to read and how to batch it (transformer_jax/data)."""
  d = config_dict.ConfigDict()
  d.name = 'shakespeare'  # shakespeare | cmudict | tfds:<name> | text
  d.task = 'lm'  # lm | mlm | classify | seq2seq
  d.tokenizer = 'char'  # char | byte | sentencepiece
  d.packing = False  # pack several short examples per row (segment ids).
  d.overflow = 'error'  # an example longer than seq_len: drop | truncate | error
  d.uneven_batch = 'error'  # batch_size not divisible by the device count: drop | error
  d.vocab_size = 8000  # sentencepiece only: pieces to learn (model.vocab_size must hold them).
  d.spm_model_type = 'unigram'  # sentencepiece only: unigram | bpe
  d.num_threads = 2  # grain reader threads.
  d.prefetch = 4  # batches prepared ahead of the train step.
  d.mask_rate = 0.15  # mlm only: share of tokens to predict (BERT's 80/10/10 corruption).
  d.bucketing = True  # seq2seq without packing: pad each batch only to its length bucket.
  d.keep_stress = False  # cmudict only: keep the stress digits on vowels (AH0, AH1).
  d.eval_split = ''  # '' = the dataset's default (cmudict: dev; tfds: test or validation).
  d.data_dir = config_dict.placeholder(str)  # tfds only: where the prepared data lives.
  d.source_language = 'en'  # wmt only: the paper translates en -> de.
  d.target_language = 'de'
  d.max_examples = 0  # tfds and cmudict: use the first N examples of each split; 0 = all.
  d.tokenizer_examples = 1_000_000  # tfds only: train examples the vocabulary is built from.
  d.train_files = ''  # text only: comma-separated paths or globs.
  d.eval_files = ''  # text only; '' = the last 10% of the training examples.
  d.format = 'lines'  # text only: lines (one text per line) | tsv (source<TAB>target)
  return d


def optimizer_config() -> config_dict.ConfigDict:
  """Optimiser and schedule (transformer_jax/train.py)."""
  o = config_dict.ConfigDict()
  o.name = 'adam'  # adam | adamw
  o.b1 = 0.9  # the paper's Adam: beta1 0.9, beta2 0.98, eps 1e-9.
  o.b2 = 0.98
  o.eps = 1e-9
  o.weight_decay = 0.0
  o.schedule = 'rsqrt'  # rsqrt (paper) | cosine | constant
  o.grad_clip_norm = 0.0  # 0 = off.
  o.grad_accum_steps = 1
  o.label_smoothing = 0.1
  o.end_learning_rate = 0.0  # cosine only: the rate reached at total_steps.
  return o


def decode_config() -> config_dict.ConfigDict:
  """How --mode=eval and --mode=decode generate (transformer_jax/evaluation.py)."""
  d = config_dict.ConfigDict()
  d.method = 'beam'  # greedy | sample | beam
  d.beam_size = 4  # the paper's beam search: beam 4, length penalty alpha 0.6.
  d.alpha = 0.6
  d.temperature = 1.0  # sample only.
  d.top_k = 0  # sample only; 0 = off.
  d.top_p = 1.0  # sample only; 1 = off.
  d.batch_size = 64  # sources decoded together.
  d.max_examples = 0  # eval: decode the first N examples only; 0 = the whole split.
  return d


def base_config() -> config_dict.ConfigDict:
  """Every field the code reads, with defaults."""
  c = config_dict.ConfigDict()
  c.model = model_config()
  c.data = data_config()
  c.optimizer = optimizer_config()
  c.decode = decode_config()
  c.seq_len = 256  # context length / maximum example length.
  c.batch_size = 64  # global, split over devices.
  c.total_steps = 1000
  c.learning_rate = 1.0  # multiplies the schedule (the paper's rsqrt is 1.0).
  c.warmup_steps = 4000
  c.seed = 0
  c.eval_every = 500
  c.checkpoint_every = 500
  c.parallelism = 'pmap'  # pmap | mesh; one device is the degenerate case.
  c.fsdp = 1  # mesh only: devices on the 'fsdp' axis (parameters sharded); the rest on 'data'.
  c.distributed = False  # multi-host: call jax.distributed.initialize() first.
  c.log_every = 50  # steps per train record (stdout, TensorBoard, metrics.jsonl).
  c.eval_steps = 0  # batches per evaluation; 0 = the full eval split.
  c.keep_checkpoints = 3  # the latest N checkpoints are kept ...
  c.keep_best_checkpoints = 1  # ... plus the N best by eval loss.
  c.async_checkpointing = True  # write checkpoints in the background.
  c.peak_flops = 0.0  # per-device peak FLOP/s for MFU; 0 = a known accelerator's, or measured on CPU.
  c.num_samples = 0  # decoder LM: texts sampled and printed after training.
  c.sample_length = 200  # tokens per sample.
  c.sample_prompt = ''  # text each sample starts from ('' = a newline).
  c.sample_temperature = 0.8
  return c


def from_saved(saved: dict) -> config_dict.ConfigDict:
  """A run's saved config.json as a config; fields the code gained since the run
  was saved take their defaults, so older runs stay readable."""
  def merge(defaults: dict, values: dict) -> dict:
    return {**defaults, **{k: merge(defaults[k], v) if isinstance(v, dict)
                           and isinstance(defaults.get(k), dict) else v
                           for k, v in values.items()}}
  return config_dict.ConfigDict(merge(base_config().to_dict(), saved))


def _check(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def d_ff(m) -> int:
  """Inner width of the position-wise FFN."""
  return int(round(m.ffn_ratio * m.d_model))


def encoder_layers(m) -> int:
  return m.num_encoder_layers if m.num_encoder_layers is not None else m.num_layers


def decoder_layers(m) -> int:
  return m.num_decoder_layers if m.num_decoder_layers is not None else m.num_layers


def validate_model(m):
  """Raises ConfigError for a model config that cannot work."""
  _check(m.variant in VARIANTS,
         f'config.model.variant={m.variant!r} is unknown; use one of {VARIANTS}.')
  _check(m.position in POSITIONS,
         f'config.model.position={m.position!r} is unknown; use one of {POSITIONS}.')
  _check(m.norm in NORMS, f'config.model.norm={m.norm!r} is unknown; use one of {NORMS}.')
  _check(m.activation in ACTIVATIONS,
         f'config.model.activation={m.activation!r} is unknown; use one of {ACTIVATIONS}.')
  _check(m.dtype in DTYPES, f'config.model.dtype={m.dtype!r} is unknown; use one of {DTYPES}.')
  _check(m.attention_impl in ATTENTION_IMPLS, f'config.model.attention_impl={m.attention_impl!r} '
         f'is unknown; use one of {ATTENTION_IMPLS}.')
  _check(m.remat in REMATS, f'config.model.remat={m.remat!r} is unknown; use one of {REMATS}.')
  _check(m.encoder_head in ENCODER_HEADS,
         f'config.model.encoder_head={m.encoder_head!r} is unknown; use one of {ENCODER_HEADS}.')
  _check(m.pooling in POOLINGS,
         f'config.model.pooling={m.pooling!r} is unknown; use one of {POOLINGS}.')
  for name in ('d_model', 'num_heads', 'vocab_size', 'max_len', 'num_layers'):
    _check(m[name] > 0, f'config.model.{name}={m[name]} must be positive.')
  _check(m.d_model % m.num_heads == 0,
         f'config.model.d_model={m.d_model} is not divisible by config.model.num_heads='
         f'{m.num_heads}; pick num_heads among the divisors of d_model.')
  head_dim = m.d_model // m.num_heads
  _check(m.position != 'rotary' or head_dim % 2 == 0,
         f'config.model.position=rotary needs an even head dim, got d_model/num_heads={head_dim};'
         ' change num_heads or d_model.')
  _check(m.position != 'sinusoidal' or m.d_model % 2 == 0,
         f'config.model.position=sinusoidal needs an even d_model, got {m.d_model}.')
  ff = m.ffn_ratio * m.d_model
  _check(m.ffn_ratio > 0 and abs(ff - round(ff)) < 1e-9,
         f'config.model.ffn_ratio={m.ffn_ratio} times d_model={m.d_model} is {ff}, not a '
         'positive integer d_ff; pick a ratio that makes it whole.')
  for name in ('dropout_rate', 'attention_dropout_rate'):
    _check(0.0 <= m[name] < 1.0, f'config.model.{name}={m[name]} must be in [0, 1).')
  _check(0 <= m.pad_id < m.vocab_size,
         f'config.model.pad_id={m.pad_id} must be a token id below vocab_size={m.vocab_size}.')
  if m.variant == 'encoder' and m.encoder_head == 'classify':
    _check(m.num_classes >= 2, f'config.model.num_classes={m.num_classes} must be at least 2.')
  for name in ('num_encoder_layers', 'num_decoder_layers'):
    _check(m[name] is None or m[name] > 0, f'config.model.{name}={m[name]} must be positive.')


OPTIMIZERS = ('adam', 'adamw')
SCHEDULES = ('rsqrt', 'cosine', 'constant')
PARALLELISMS = ('pmap', 'mesh')


def validate_training(c):
  """Raises ConfigError for optimiser and run fields that cannot work."""
  o = c.optimizer
  _check(o.name in OPTIMIZERS,
         f'config.optimizer.name={o.name!r} is unknown; use one of {OPTIMIZERS}.')
  _check(o.schedule in SCHEDULES,
         f'config.optimizer.schedule={o.schedule!r} is unknown; use one of {SCHEDULES}.')
  _check(c.parallelism in PARALLELISMS,
         f'config.parallelism={c.parallelism!r} is unknown; use one of {PARALLELISMS}.')
  for name in ('batch_size', 'total_steps', 'log_every', 'eval_every', 'checkpoint_every',
               'keep_checkpoints', 'fsdp'):
    _check(c[name] > 0, f'config.{name}={c[name]} must be positive.')
  _check(c.learning_rate > 0, f'config.learning_rate={c.learning_rate} must be positive.')
  _check(c.warmup_steps >= 0, f'config.warmup_steps={c.warmup_steps} must be >= 0.')
  _check(o.schedule != 'rsqrt' or c.warmup_steps > 0,
         'config.optimizer.schedule=rsqrt needs config.warmup_steps > 0.')
  _check(0.0 <= o.label_smoothing < 1.0,
         f'config.optimizer.label_smoothing={o.label_smoothing} must be in [0, 1).')
  _check(o.grad_clip_norm >= 0, f'config.optimizer.grad_clip_norm={o.grad_clip_norm} must be >= 0.')
  _check(o.weight_decay == 0 or o.name == 'adamw',
         f'config.optimizer.weight_decay={o.weight_decay} needs config.optimizer.name=adamw.')
  for name in ('eval_steps', 'keep_best_checkpoints', 'num_samples', 'sample_length'):
    _check(c[name] >= 0, f'config.{name}={c[name]} must be >= 0.')
  _check(o.grad_accum_steps > 0 and c.batch_size % o.grad_accum_steps == 0,
         f'config.optimizer.grad_accum_steps={o.grad_accum_steps} must be positive and divide '
         f'config.batch_size={c.batch_size}.')


def validate_decode(d):
  """Raises ConfigError for decoding settings that cannot work."""
  _check(d.method in DECODE_METHODS,
         f'config.decode.method={d.method!r} is unknown; use one of {DECODE_METHODS}.')
  _check(d.beam_size >= 1, f'config.decode.beam_size={d.beam_size} must be at least 1.')
  _check(d.batch_size >= 1, f'config.decode.batch_size={d.batch_size} must be at least 1.')
  _check(d.temperature > 0 or d.method != 'sample',
         f'config.decode.temperature={d.temperature} must be positive for sampling.')
  _check(0 < d.top_p <= 1, f'config.decode.top_p={d.top_p} must be in (0, 1].')


def validate(c):
  """Raises ConfigError for a run config that cannot work."""
  validate_model(c.model)
  validate_training(c)
  validate_decode(c.decode)
  _check(c.seq_len > 0, f'config.seq_len={c.seq_len} must be positive.')
  _check(c.model.position in ('rotary', 'none') or c.seq_len <= c.model.max_len,
         f'config.seq_len={c.seq_len} is longer than the positional table '
         f'config.model.max_len={c.model.max_len}; raise max_len or lower seq_len.')
