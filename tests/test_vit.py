"""The Vision Transformer: the encoder stack on image patches (issue 18).

Patch embedding against the explicit reshape-and-project of the ViT paper's
equation 1, permutation equivariance without positions, parameter counts
against a hand-written formula (and ViT-B/16's), training, evaluation and
exact resume on the shipped digits, the image datasets, and the one-line
errors for an image model on text data and the reverse.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPOSITORY, override
from transformer_jax import catalog
from transformer_jax import config as config_lib
from transformer_jax import configs
from transformer_jax import evaluation
from transformer_jax import restore
from transformer_jax import run_log
from transformer_jax import trainer
from transformer_jax.data import datasets
from transformer_jax.data import examples
from transformer_jax.data import sources
from transformer_jax.models import accounting
from transformer_jax.models.layers import PatchEmbedding, sinusoidal_table_2d
from transformer_jax.models.transformer import Encoder, build_model, init_inputs


def vit_model(**values):
  """digits_vit's model, small: 2 layers, d_model 16, no dropout."""
  m = configs.load('digits_vit').model
  m.update(dict(num_layers=2, d_model=16, num_heads=2, dropout_rate=0.0), **values)
  return m


def to_patches(images, p):
  """[b, H, W, C] -> [b, N, p, p, C], patches in raster order."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p, p, c)


def from_patches(patches, h, w):
  """The inverse of to_patches."""
  b, _, p, _, c = patches.shape
  x = patches.reshape(b, h // p, w // p, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, c)


# ----------------------------------------------------------------------------
# The model.


@pytest.mark.parametrize('patch_size, channels', [(2, 1), (4, 3), (1, 2)])
def test_patch_embedding_is_the_explicit_reshape_and_projection(patch_size, channels):
  """x_p E + b (Dosovitskiy et al. 2020, eq. 1): patch n = (row i, column j) in
  raster order, flattened in (row, column, channel) order, times E = the kernel
  as [P^2 C, D]. A non-square image checks the raster order."""
  p, h, w, d = patch_size, 8, 12, 16
  images = jax.random.uniform(jax.random.key(0), (2, h, w, channels))
  module = PatchEmbedding(p, d)
  params = module.init(jax.random.key(1), images)['params']
  params = dict(params, bias=jax.random.normal(jax.random.key(2), (d,)))  # a non-zero bias.
  out = module.apply({'params': params}, images)
  x_p = np.stack([np.asarray(images)[:, i * p:(i + 1) * p, j * p:(j + 1) * p, :].reshape(2, -1)
                  for i in range(h // p) for j in range(w // p)], axis=1)  # [b, N, P^2 C]
  E = np.asarray(params['kernel']).reshape(p * p * channels, d)
  assert out.shape == (2, (h // p) * (w // p), d)
  np.testing.assert_allclose(out, x_p @ E + np.asarray(params['bias']), rtol=1e-5, atol=1e-5)


def test_patch_helpers_invert_each_other():
  images = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
  np.testing.assert_array_equal(from_patches(to_patches(images, 2), 8, 8), images)
  np.testing.assert_array_equal(to_patches(images, 4)[0, 1], images[0, :4, 4:])  # row 0, col 1.


@pytest.mark.parametrize('pooling', ['mean', 'cls'])
def test_permuting_patches_with_positions_off_permutes_the_encoder_output(pooling):
  """Without positions nothing but the patches' contents tells them apart: the
  encoder output of the permuted image is the permuted output ([CLS], which
  comes first, unchanged), and the classifier's logits do not change. With
  learned or 2-D sinusoidal positions they do (the check can fail)."""
  rng = np.random.default_rng(0)
  images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1))
  perm = rng.permutation(16)
  permuted = jnp.asarray(from_patches(to_patches(np.asarray(images), 2)[:, perm], 8, 8))
  cls = int(pooling == 'cls')
  order = np.concatenate([np.arange(cls), cls + perm])  # rows of the encoder output.
  for position in ('none', 'learned', 'sinusoidal_2d'):
    m = config_lib.ModelConfig.of(vit_model(position=position, pooling=pooling))
    encoder = Encoder(m)
    variables = encoder.init(jax.random.key(1), images)
    out, out_permuted = encoder.apply(variables, images), encoder.apply(variables, permuted)
    assert out.shape == (2, 16 + cls, 16)
    equivariant = np.allclose(out_permuted, np.asarray(out)[:, order], atol=1e-5)
    assert equivariant == (position == 'none'), position
  model = build_model(m.replace(position='none'))
  params = model.init(jax.random.key(2), images)
  np.testing.assert_allclose(model.apply(params, permuted), model.apply(params, images),
                             atol=1e-5)


def test_2d_sinusoids_encode_row_then_column():
  table = sinusoidal_table_2d(4, 16)  # 4 x 4 patches, d 16.
  assert table.shape == (16, 16)
  np.testing.assert_array_equal(table[5, :8], table[6, :8])  # row 1, columns 1 and 2.
  np.testing.assert_array_equal(table[5, 8:], table[9, 8:])  # column 1, rows 1 and 2.
  assert not np.array_equal(table[5, 8:], table[6, 8:])


def vit_formula(m) -> int:
  """ViT's parameters by hand (Dosovitskiy et al. 2020, section 3.1): E and its
  bias, x_class, E_pos with N (+1) rows, L layers of attention (4 D x D + 4 D),
  MLP (2 D d_ff + d_ff + D) and two LayerNorms (2 D each), pre-LN's final
  LayerNorm, and the D x K classifier with its bias."""
  p, c, d, k, layers = m.patch_size, m.num_channels, m.d_model, m.num_classes, m.num_layers
  n, cls, d_ff = (m.image_size // p)**2, int(m.pooling == 'cls'), int(m.ffn_ratio * d)
  embedding = p * p * c * d + d + cls * d + ((n + cls) * d if m.position == 'learned' else 0)
  layer = 4 * d * d + 4 * d + 2 * d * d_ff + d_ff + d + 2 * 2 * d
  return embedding + layers * layer + (2 * d if m.norm == 'pre' else 0) + d * k + k


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
@pytest.mark.parametrize('position', ['learned', 'sinusoidal_2d', 'none'])
@pytest.mark.parametrize('norm', ['pre', 'post'])
def test_parameter_count_matches_the_params_and_the_formula(pooling, position, norm):
  m = vit_model(pooling=pooling, position=position, norm=norm, num_channels=1)
  params = build_model(m).init(jax.random.key(0), *init_inputs(m, 2))['params']
  real = sum(x.size for x in jax.tree.leaves(params))
  assert accounting.count_params(m) == real == vit_formula(m)


def test_vit_b16_parameter_count():
  """ViT-Base/16 at 224 x 224 with a 1000-class head: 86,567,656 parameters, the
  ViT paper's 86M (Table 1) and exactly timm's vit_base_patch16_224."""
  m = vit_model(patch_size=16, image_size=224, num_channels=3, d_model=768, num_heads=12,
                num_layers=12, ffn_ratio=4.0, num_classes=1000, pooling='cls',
                position='learned', norm='pre')
  assert accounting.count_params(m) == vit_formula(m) == 86_567_656


def test_describe_counts_image_tokens():
  config = configs.load('digits_vit')
  summary = accounting.describe(config.model, config.seq_len)
  assert summary['seq_len'] == summary['num_patches'] == 16  # 4 x 4 patches, mean-pooled.
  assert summary['flops_per_token'] == accounting.flops_per_token(config.model, 16)
  config.model.pooling = 'cls'
  assert accounting.describe(config.model, config.seq_len)['seq_len'] == 17  # and [CLS].


# ----------------------------------------------------------------------------
# Data.


def test_digits_split_is_fixed_stratified_and_disjoint():
  images, labels = sources.digits()
  assert images.shape == (1797, 8, 8, 1) and images.max() == 16 and labels.max() == 9
  split = sources.digits_split()
  assert {k: len(v) for k, v in split.items()} == {'train': 1259, 'validation': 179, 'test': 359}
  everything = np.concatenate(list(split.values()))
  assert len(np.unique(everything)) == len(everything) == 1797
  test_share = np.bincount(labels[split['test']]) / np.bincount(labels)
  assert np.all(np.abs(test_share - 0.2) < 0.01)
  again = sources.digits_split()
  assert all(np.array_equal(split[k], again[k]) for k in split)


def test_digits_batches_are_images_in_0_1():
  ds = datasets.create_datasets(configs.load('digits_vit'), None)
  assert ds.tokenizer is None and ds.eval_split == 'validation'
  assert ds.info['train_examples'] == 1259 and ds.info['eval_examples'] == 179
  batch = next(ds.train)
  assert batch['inputs'].shape == (64, 8, 8, 1) and batch['inputs'].dtype == np.float32
  assert 0 <= batch['inputs'].min() and batch['inputs'].max() <= 1
  assert batch['targets'].shape == batch['weights'].shape == (64,)
  eval_batches = list(ds.eval())
  assert len(eval_batches) == 3 and sum(b['weights'].sum() for b in eval_batches) == 179
  test = override(configs.load('digits_vit'), {'data.eval_split': 'test'})
  assert datasets.create_datasets(test, None).info['eval_examples'] == 359


def test_random_crop_flip_keeps_shapes_and_is_seeded():
  images = np.random.default_rng(0).random((6, 8, 8, 3)).astype(np.float32)
  crop = lambda seed, **kw: examples.random_crop_flip(images, np.random.default_rng(seed), 2, **kw)
  out = crop(0)
  assert out.shape == images.shape and out.dtype == images.dtype
  np.testing.assert_array_equal(out, crop(0))
  assert not np.array_equal(out, crop(1)) and not np.array_equal(out, images)
  # Without padding only flips are left: each image is itself or its mirror.
  flipped = examples.random_crop_flip(images, np.random.default_rng(0), 0)
  assert all(np.array_equal(f, x) or np.array_equal(f, x[:, ::-1])
             for f, x in zip(flipped, images))
  # A host's rows of a global batch get the draws one process gives those rows.
  rows = examples.random_crop_flip(images[2:4], np.random.default_rng(0), 2, slice(2, 4), 6)
  np.testing.assert_array_equal(rows, out[2:4])


def image_config(name, **values):
  size, _, channels = catalog.DATASETS[name].image_shape
  return override(configs.load('digits_vit'), {
      'data.name': name, 'model.image_size': size, 'model.num_channels': channels,
      'model.patch_size': 4, 'batch_size': 4, **values})


@pytest.mark.parametrize('name', ['tfds:mnist', 'tfds:cifar10'])
def test_tfds_images_under_mock_data(name):
  """Batches of the right shape in [0, 1]; cifar10's train batches augmented
  (seeded: the same seed gives the same batches), mnist's exactly the images."""
  tfds = pytest.importorskip('tensorflow_datasets')
  size, _, channels = catalog.DATASETS[name].image_shape
  with tfds.testing.mock_data(num_examples=12):
    ds = datasets.create_datasets(image_config(name), None)
    again = datasets.create_datasets(image_config(name), None)
    other_seed = datasets.create_datasets(image_config(name, seed=1), None)
    raw = sources.tfds_examples(name[len('tfds:'):], 'train')
  assert ds.tokenizer is None and ds.eval_split == 'test'
  assert ds.info['train_examples'] == ds.info['eval_examples'] == 12
  batches = [next(ds.train) for _ in range(3)]  # one epoch.
  for batch in batches:
    assert batch['inputs'].shape == (4, size, size, channels)
    assert batch['inputs'].dtype == np.float32
    assert 0 <= batch['inputs'].min() and batch['inputs'].max() <= 1
    assert batch['targets'].shape == batch['weights'].shape == (4,)
  for batch, same in zip(batches, [next(again.train) for _ in range(3)]):
    np.testing.assert_array_equal(batch['inputs'], same['inputs'])
  assert not np.array_equal(batches[0]['inputs'], next(other_seed.train)['inputs'])
  images = {np.asarray(image, np.float32).tobytes() for image, _ in raw}
  as_stored = [(row * 255).round().astype(np.float32).tobytes() in images
               for batch in batches for row in batch['inputs']]
  if name == 'tfds:cifar10':
    assert ds.info['augmentation'] != 'none' and not all(as_stored)
  else:
    assert ds.info['augmentation'] == 'none' and all(as_stored)
  eval_batches = list(ds.eval())
  assert len(eval_batches) == 3 and eval_batches[0]['inputs'].shape == (4, size, size, channels)


# ----------------------------------------------------------------------------
# Training, evaluation, resume.


def tiny_digits(**values):
  return override(configs.load('digits_vit:quick'), {
      'model.num_layers': 1, 'model.d_model': 16, 'model.num_heads': 2, 'batch_size': 16,
      'total_steps': 4, 'warmup_steps': 2, 'log_every': 1, 'eval_every': 4,
      'checkpoint_every': 2, **values})


def test_train_eval_and_exact_resume_on_digits(tmp_path):
  config = tiny_digits()
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  result = trainer.train(config, straight)
  assert result['step'] == 4 and np.isfinite(result['loss']) and 0 <= result['accuracy'] <= 1
  records = run_log.read_jsonl(straight)
  assert [r['step'] for r in records if r['split'] == 'train'] == [1, 2, 3, 4]
  assert 'perplexity' not in records[-1] and records[-1]['split'] == 'eval'
  trainer.train(override(config, {'total_steps': 2}), resumed)
  assert trainer.train(config, resumed) == result  # 2 steps, then 2 more from the checkpoint.
  a, b = restore.open_run(config, straight), restore.open_run(config, resumed)
  same = jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)),
                      a.params, b.params)
  assert all(jax.tree.leaves(same))
  test = evaluation.evaluate_checkpoint(override(config, {'data.eval_split': 'test'}), straight)
  assert test['eval_split'] == 'test' and test['step'] == 4 and 0 <= test['accuracy'] <= 1


# ----------------------------------------------------------------------------
# Config errors: one line, naming the fix.


def run_main(tmp_path, *args):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, (REPOSITORY, os.environ.get('PYTHONPATH')))))
  return subprocess.run([sys.executable, '-m', 'transformer_jax.main', *args, '--mode=describe'],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('args, message', [
    (['--config=digits_vit', '--config.data.name=shakespeare'],
     "Config error: config.model.patch_size=2 makes an image model, but config.data.name="
     "'shakespeare' is not an image dataset; use one of digits, tfds:mnist, tfds:cifar10, or "
     "set config.model.patch_size=0 for text."),
    (['--config=shakespeare_genre', '--config.data.name=digits'],
     'Config error: config.data.name=digits holds 8x8 images, but config.model.patch_size=0 '
     'makes a text model; set config.model.patch_size (a divisor of 8), image_size=8 and '
     'num_channels=1, or start from --config=digits_vit.'),
], ids=['image model, text data', 'text model, image data'])
def test_image_and_text_mismatch_is_one_line(tmp_path, args, message):
  out = run_main(tmp_path, *args)
  assert out.returncode == 2 and 'Traceback' not in out.stderr
  assert out.stderr.strip().splitlines() == [message]


@pytest.mark.parametrize('values, message', [
    ({'data.name': 'tfds:cifar10'}, 'config.model.image_size=8 but tfds:cifar10 has 32x32 '
                                    'images of 3 channel(s) in 10 classes; set '
                                    'config.model.image_size=32.'),
    ({'model.patch_size': 3}, 'config.model.image_size=8 must be a positive multiple of '
                              'config.model.patch_size=3'),
    ({'model.pooling': 'first'}, 'config.model.pooling=first would pool the top-left patch'),
    ({'model.variant': 'decoder', 'data.task': 'lm'}, 'config.model.patch_size=2 makes an image '
                                                     'classifier (ViT), which needs '
                                                     'variant=encoder'),
    ({'model.patch_size': 0, 'data.name': 'shakespeare', 'model.vocab_size': 96,
      'model.pooling': 'cls', 'model.position': 'sinusoidal'},
     'config.model.pooling=cls prepends a learned [CLS] vector to image patches'),
    ({'model.patch_size': 0, 'data.name': 'shakespeare', 'model.vocab_size': 96},
     'config.model.position=sinusoidal_2d encodes the rows and columns of image patches'),
    ({'model.position': 'sinusoidal_2d', 'model.d_model': 66, 'model.num_heads': 2},
     'config.model.position=sinusoidal_2d needs d_model divisible by 4'),
    ({'data.eval_split': 'train'}, "config.data.eval_split='train' is not a held-out split"),
])
def test_bad_image_configs_are_one_line(values, message):
  config = override(configs.load('digits_vit'), values)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(config)
    datasets.create_datasets(config, None)
  assert message in str(e.value) and '\n' not in str(e.value)
