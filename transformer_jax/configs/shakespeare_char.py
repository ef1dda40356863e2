"""Character-level language model on Shakespeare: the default experiment.

A decoder-only Transformer (the paper's blocks without cross-attention) at
nanoGPT's CPU recipe shape: 4 layers, 4 heads, d_model 128 (d_ff 512),
context 64, batch 12, no dropout, 2000 steps. Trains in a few minutes on a
2-core CPU, evaluates on the full validation split (the last 10% of the
corpus) and prints a few samples.

  python -m transformer_jax.main                              # this config, runs/shakespeare_char
  python -m transformer_jax.main --config=shakespeare_char \
      --workdir=runs/char --config.model.num_heads=8
  python -m transformer_jax.main --config=shakespeare_char:quick \
      --workdir=/tmp/char_quick                               # 300 steps, a smoke run
  python -m transformer_jax.main --config=shakespeare_char:nanogpt \
      --workdir=runs/char_nanogpt                             # nanoGPT's own recipe

`:nanogpt` is nanoGPT's CPU recipe (its README's command over
config/train_shakespeare_char.py and train.py's defaults) on the same shape, as
nanoGPT's GPT builds it: pre-LN with a final LayerNorm (epsilon 1e-5), learned
positions, exact GELU, no biases in the dense layers or the LayerNorms (train.py:
bias=False), unscaled tied embeddings, GPT-2's initialisation (N(0, 0.02), residual
projections / sqrt(2 x layers)); AdamW (0.9, 0.99, eps 1e-8) with weight decay 0.1 on
matrices and embeddings, gradients clipped at 1.0, learning rate 1e-3 after 100 warmup
steps cosine-decayed to 1e-4 at step 2000; a softmax over the tokenizer's 88 ids. What
still differs (the 4 special ids in the softmax; the warmup's first 100 rates, 1%
higher at most; our data is our corpus) and the side-by-side run with nanoGPT's own
train.py: experiments/results/shakespeare_char_nanogpt/.

Ablations (get_sweep below), e.g. the paper's Table 3 rows (A) and (C) in small:

  python -m transformer_jax.sweep --config=shakespeare_char \
      --sweep=ffn_x_heads --workdir=runs/ffn_x_heads --config.total_steps=500
"""

from transformer_jax import config as config_lib
from transformer_jax import configs
from transformer_jax.models import accounting

ARGS = {'quick': 'a 300-step smoke run',
        'nanogpt': "nanoGPT's own CPU recipe for this shape (its README), as nanoGPT's GPT"}


def get_config(arg: str = ''):
  """arg: '' (the full run) or one of ARGS."""
  arg = configs.parse_arg(arg, ARGS)
  c = config_lib.base_config()
  c.model.variant = 'decoder'
  c.model.num_layers = 4
  c.model.d_model = 128
  c.model.num_heads = 4
  c.model.ffn_ratio = 4.0
  c.model.dropout_rate = 0.0
  c.model.vocab_size = 96  # 88 characters in the training split, padding and unknown included.
  c.model.max_len = 256  # positions for samples longer than the training context.
  c.data.name = 'shakespeare'
  c.data.task = 'lm'
  c.data.tokenizer = 'char'
  c.seq_len = 64
  c.batch_size = 12
  c.total_steps = 2000
  c.optimizer.label_smoothing = 0.0
  c.learning_rate = 1.0
  c.warmup_steps = 200
  c.log_every = 100
  c.eval_every = 1000  # on the full validation split (659 batches).
  c.checkpoint_every = 500
  c.num_samples = 3
  c.sample_length = 200
  if arg == 'quick':
    c.total_steps = 300
    c.eval_every = 300
    c.eval_steps = 100
  if arg == 'nanogpt':
    # vocab_size: the tokenizer's own ids (its 4 specials and the training split's 84
    # characters, nanoGPT's 84), no spare ids in the softmax.
    c.model.update(norm='pre', position='learned', max_len=64, activation='gelu',
                   use_bias=False, norm_bias=False, scale_embeddings=False,
                   layer_norm_epsilon=1e-5, init='gpt2', vocab_size=88)
    c.optimizer.update(name='adamw', b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.1,
                       decay='matrices', grad_clip_norm=1.0, schedule='cosine',
                       end_learning_rate=1e-4)
    c.learning_rate = 1e-3
    c.warmup_steps = 100
    c.eval_every = 250  # nanoGPT's eval_interval.
  return c


def get_sweep(name: str = 'ffn_x_heads'):
  """Ablation grids over this config (transformer_jax/sweep.py runs them).

  ffn_x_heads: d_ff = ffn_ratio x d_model against the number of heads (d_k =
    d_model / h), as the paper's Table 3 rows (C) and (A), 2 seeds each.
  fixed_params_depth / fixed_params_width: ffn_ratio traded against depth or
    width so that every run has about the base parameter count.
  efficient_attention: at contexts 256 and 1024 (4096 tokens a batch), full
    attention against local (Longformer: windows 32 and 128), linear (Performer's
    FAVOR+: 32 and 128 random features) and grouped-query heads (1 and 2
    key/value heads for 4 query heads), 2 seeds; the command and the reading are in
    experiments/results/efficient_attention/README.md.
  norm_x_z_loss: LayerNorm against RMSNorm, without and with PaLM's z-loss (1e-4),
    2 seeds (issue 26); experiments/results/norm_x_z_loss/.
  """
  if name == 'efficient_attention':
    settings = ([{'model.attention': 'full', 'model.num_kv_heads': kv} for kv in (4, 2, 1)] +
                [{'model.attention': 'local', 'model.attention_window': w} for w in (32, 128)] +
                [{'model.attention': 'linear', 'model.num_random_features': m} for m in (32, 128)])
    return [{'seq_len': n, 'batch_size': 4096 // n, 'model.max_len': n, **s, 'seed': seed}
            for n in (256, 1024) for s in settings for seed in (0, 1)]
  if name == 'ffn_x_heads':
    return {'model.ffn_ratio': [1.0, 2.0, 4.0, 8.0], 'model.num_heads': [1, 2, 4, 8],
            'seed': [0, 1]}
  if name == 'norm_x_z_loss':
    return {'model.norm_type': ['layernorm', 'rmsnorm'], 'z_loss': [0.0, 1e-4], 'seed': [0, 1]}
  if name in ('fixed_params_depth', 'fixed_params_width'):
    scale = 'num_layers' if name == 'fixed_params_depth' else 'd_model'
    return accounting.fixed_params_grid(get_config(), [1.0, 2.0, 4.0, 8.0], scale, seeds=(0, 1))
  raise config_lib.ConfigError(f'Unknown sweep {name!r}; use ffn_x_heads, fixed_params_depth, '
                               'fixed_params_width, efficient_attention or norm_x_z_loss.')
