"""Parameter counts against the paper's Table 3, config validation and describe."""

import json
import os
import subprocess
import sys

import pytest

from transformer_jax import config as config_lib
from transformer_jax.models import accounting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def base_model():
  """The paper's base model: N=6, d_model 512, h 8, d_ff 2048, shared 37k vocabulary."""
  m = config_lib.model_config()
  m.variant = 'seq2seq'
  return m


# Table 3 of the paper (newstest2013 variations): overrides of the base model and
# the parameter count the paper gives, in millions.
TABLE_3 = [
    ('base', {}, 65),
    ('(A) h=1', {'num_heads': 1}, 65),
    ('(A) h=4', {'num_heads': 4}, 65),
    ('(A) h=16', {'num_heads': 16}, 65),
    ('(A) h=32', {'num_heads': 32}, 65),
    ('(C) N=2', {'num_layers': 2}, 36),
    ('(C) N=4', {'num_layers': 4}, 50),
    ('(C) N=8', {'num_layers': 8}, 80),
    ('(C) d_model=256', {'d_model': 256, 'num_heads': 8, 'ffn_ratio': 8.0}, 28),
    ('(C) d_model=1024', {'d_model': 1024, 'num_heads': 8, 'ffn_ratio': 2.0}, 168),
    ('(C) d_ff=1024', {'ffn_ratio': 2.0}, 53),
    ('(C) d_ff=4096', {'ffn_ratio': 8.0}, 90),
    ('big', {'d_model': 1024, 'num_heads': 16, 'ffn_ratio': 4.0}, 213),
]


@pytest.mark.parametrize('row,overrides,paper_millions', TABLE_3, ids=[r[0] for r in TABLE_3])
def test_param_count_matches_table_3(row, overrides, paper_millions):
  m = base_model()
  m.update(overrides)
  params = accounting.count_params(m)
  assert abs(params / 1e6 - paper_millions) / paper_millions < 0.07, (row, params)


def test_heads_do_not_change_parameters():
  counts = set()
  for h in (1, 4, 8, 16, 32):
    m = base_model()
    m.num_heads = h
    counts.add(accounting.count_params(m))
  assert len(counts) == 1


def test_base_param_count_exact():
  # 6 encoder layers (4d^2+4d attention, 2*d*d_ff + d_ff + d FFN, 2 LayerNorms),
  # 6 decoder layers (two attentions, FFN, 3 LayerNorms), one shared 37000 x 512 table.
  d, ff, v = 512, 2048, 37000
  attention = 4 * d * d + 4 * d
  ffn = 2 * d * ff + ff + d
  encoder = 6 * (attention + ffn + 2 * 2 * d)
  decoder = 6 * (2 * attention + ffn + 3 * 2 * d)
  assert accounting.count_params(base_model()) == encoder + decoder + v * d


def test_flops_per_token_is_6n_plus_attention():
  m = config_lib.model_config()
  m.update(variant='decoder', num_layers=4, d_model=128, num_heads=4, vocab_size=65)
  n_matmul = 4 * (4 * 128 * 128 + 2 * 128 * 512) + 128 * 65
  assert accounting.flops_per_token(m, 64) == 6 * n_matmul + 12 * 4 * 128 * 64


def test_flops_per_token_count_the_classifier_head():
  m = config_lib.model_config()
  m.update(variant='encoder', num_layers=1, d_model=16, num_heads=2, vocab_size=11,
           encoder_head='classify', num_classes=5)
  body = 6 * (4 * 16 * 16 + 2 * 16 * 64) + 12 * 16 * 8
  assert accounting.flops_per_token(m, 8) == body + 6 * 16 * 5
  m.update(pooler=True)
  assert accounting.flops_per_token(m, 8) == body + 6 * (16 * 16 + 16 * 5)


@pytest.mark.parametrize('overrides,field', [
    ({'num_heads': 7}, 'num_heads'),
    ({'ffn_ratio': 0.3333}, 'ffn_ratio'),
    ({'variant': 'encdec'}, 'variant'),
    ({'activation': 'tanh'}, 'activation'),
    ({'position': 'alibi'}, 'position'),
    ({'norm': 'sandwich'}, 'norm'),
])
def test_bad_model_config_names_the_field(overrides, field):
  m = config_lib.model_config()
  m.update(overrides)
  with pytest.raises(config_lib.ConfigError, match=f'config.model.{field}') as e:
    config_lib.validate_model(m)
  assert '\n' not in str(e.value)


def test_sequence_longer_than_positional_table():
  c = config_lib.base_config()
  c.model.variant = 'decoder'  # the default data task is lm.
  c.model.update(position='learned', max_len=128)
  c.seq_len = 256
  with pytest.raises(config_lib.ConfigError, match='config.seq_len=256 is longer'):
    config_lib.validate(c)
  for position in ('sinusoidal', 'rotary'):  # a formula's table grows; no table to run off.
    c.model.position = position
    config_lib.validate(c)


def run_main(*args):
  return subprocess.run([sys.executable, '-m', 'transformer_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_describe_prints_one_json_object_on_last_line():
  out = run_main('--config=wmt14_ende_base', '--mode=describe',
                 '--config.model.num_layers=2')
  assert out.returncode == 0, out.stderr
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert summary['variant'] == 'seq2seq'
  assert summary['num_encoder_layers'] == summary['num_decoder_layers'] == 2
  m = base_model()
  m.num_layers = 2
  assert summary['params'] == accounting.count_params(m)
  assert summary['flops_per_token'] == accounting.flops_per_token(m, 256)


def test_describe_big_model():
  out = run_main('--config=wmt14_ende_big', '--mode=describe')
  assert out.returncode == 0, out.stderr
  summary = json.loads(out.stdout.strip().splitlines()[-1])
  assert abs(summary['params'] / 1e6 - 213) / 213 < 0.07


def test_describe_rejects_bad_config_in_one_line():
  out = run_main('--config=wmt14_ende_base', '--mode=describe',
                 '--config.model.num_heads=7')
  assert out.returncode != 0
  assert out.stderr.strip().splitlines()[-1].startswith('Config error: config.model.d_model=512')
