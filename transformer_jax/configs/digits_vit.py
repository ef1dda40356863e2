"""Vision Transformer on scikit-learn's handwritten digits: the encoder on image patches.

ViT (Dosovitskiy et al. 2020) in small: each 8x8 grey digit is cut into 16
patches of 2x2 pixels, projected to d_model with fixed 2-D sine-cosine
positions added (half the dimensions the patch's row, half its column), and
the same `Encoder` stack as every other model (3 pre-LN layers, d_model 32,
4 heads, d_ff 64; 26k parameters) feeds a linear classifier on the mean of the
patches' outputs (`pooling='cls'` prepends ViT's [CLS] vector instead). The
data ship with scikit-learn (no download); the split is by class with seed 0
(1,259 train, 179 validation, 359 test images: data/sources.digits_split).
3000 steps of 64 images take 2-3 minutes on a 2-core CPU. Training evaluates
on validation (the shape, positions, dropout and pooling were chosen on its
loss, 2 seeds each; test was not looked at for choosing); report test:

  python -m transformer_jax.main --config=digits_vit --workdir=runs/digits_vit
  python -m transformer_jax.main --config=digits_vit --workdir=runs/digits_vit \
      --mode=eval --config.data.eval_split=test
  python -m transformer_jax.main --config=digits_vit:quick --workdir=/tmp/digits_quick

The patch size x depth ablation (get_sweep below), 2 seeds:

  python -m transformer_jax.sweep --config=digits_vit --sweep=patch_x_depth \
      --workdir=runs/digits_patch_x_depth --metric=accuracy

config.seq_len and config.model.max_len are not read by an image model: its
rows are (image_size / patch_size)^2 patches, plus [CLS].
"""

from transformer_jax import config as config_lib
from transformer_jax import configs

ARGS = {'quick': 'a 300-step smoke run'}


def get_config(arg: str = ''):
  """arg: '' (the full run) or one of ARGS."""
  arg = configs.parse_arg(arg, ARGS)
  c = config_lib.base_config()
  c.model.variant = 'encoder'
  c.model.encoder_head = 'classify'
  c.model.num_classes = 10
  c.model.patch_size = 2
  c.model.image_size = 8
  c.model.num_channels = 1
  c.model.pooling = 'mean'
  c.model.position = 'sinusoidal_2d'
  c.model.num_layers = 3
  c.model.d_model = 32
  c.model.num_heads = 4
  c.model.ffn_ratio = 2.0
  c.model.norm = 'pre'
  c.model.activation = 'gelu'
  c.model.dropout_rate = 0.1
  c.data.name = 'digits'
  c.data.task = 'classify'
  c.batch_size = 64
  c.total_steps = 3000
  c.optimizer.name = 'adamw'
  c.optimizer.weight_decay = 0.05
  c.optimizer.schedule = 'cosine'
  c.optimizer.label_smoothing = 0.0
  c.learning_rate = 1e-3
  c.warmup_steps = 150
  c.log_every = 250
  c.eval_every = 500
  c.checkpoint_every = 500
  if arg == 'quick':
    c.total_steps = 300
    c.warmup_steps = 30
    c.log_every = 100
    c.eval_every = 300
    c.checkpoint_every = 300
  return c


def get_sweep(name: str = 'patch_x_depth'):
  """Ablation grids over this config (transformer_jax/sweep.py runs them).

  patch_x_depth: patch size 1, 2, 4 (64, 16 or 4 patches of an 8x8 digit) against
    1, 3 (the default) or 6 encoder layers, 2 seeds each.
  """
  if name == 'patch_x_depth':
    return {'model.patch_size': [1, 2, 4], 'model.num_layers': [1, 3, 6], 'seed': [0, 1]}
  raise config_lib.ConfigError(f'Unknown sweep {name!r}; use patch_x_depth.')
