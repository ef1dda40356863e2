"""Every packaged config and each of its args loads and validates; the quick
variants are small enough for a CPU; the loader takes names and paths alike."""

import os
import subprocess
import sys

import pytest

from conftest import override  # pylint: disable=g-bad-import-order
from transformer_jax import config as config_lib
from transformer_jax import configs
from transformer_jax.models import accounting

CONFIG_DIR = os.path.dirname(os.path.abspath(configs.__file__))
VARIANTS = [(name, arg) for name in configs.NAMES
            for arg in ('', *configs.load_module(name).ARGS)]


def test_the_paper_and_task_configs_are_all_here():
  assert {'shakespeare_char', 'shakespeare_mlm', 'shakespeare_genre', 'cmudict_g2p',
          'wmt14_ende_base', 'wmt14_ende_big', 'lm1b'} <= set(configs.NAMES)


@pytest.mark.parametrize('name,arg', VARIANTS, ids=[f'{n}:{a}' for n, a in VARIANTS])
def test_every_config_and_arg_validates(name, arg):
  config_lib.validate(configs.load(f'{name}:{arg}' if arg else name))


@pytest.mark.parametrize('name', configs.NAMES)
def test_config_declares_a_quick_run_and_its_commands(name):
  module = configs.load_module(name)
  assert f'python -m transformer_jax.main --config={name}' in module.__doc__
  for arg in module.ARGS:
    assert f'--config={name}:{arg}' in module.__doc__, f'the docstring gives the :{arg} command'
  quick = configs.load(f'{name}:quick')
  assert accounting.count_params(quick.model) < 2_000_000
  assert quick.total_steps <= 500


@pytest.mark.parametrize('name', configs.NAMES)
def test_name_module_and_path_give_the_same_config(name):
  by_name = configs.load(f'{name}:quick').to_dict()
  assert configs.load(f'transformer_jax.configs.{name}:quick').to_dict() == by_name
  assert configs.load(os.path.join(CONFIG_DIR, f'{name}.py:quick')).to_dict() == by_name
  assert configs.name(os.path.join(CONFIG_DIR, f'{name}.py:quick')) == name
  assert configs.name(f'transformer_jax.configs.{name}') == name


def test_unknown_arg_is_one_line_naming_it_and_the_known_ones():
  with pytest.raises(config_lib.ConfigError) as e:
    configs.load('cmudict_g2p:no_such_variant')
  assert str(e.value) == ("cmudict_g2p: unknown config argument 'no_such_variant'; "
                          "use one of 'cpu', 'quick' or none.")
  with pytest.raises(config_lib.ConfigError, match="unknown config argument 'big'"):
    configs.load_module('shakespeare_char').get_config('big')


@pytest.mark.parametrize('spec,message', [
    ('no_such_config', "no config named 'no_such_config'; use one of cmudict_g2p, "),
    ('no_such_package.config', "no config named 'no_such_package.config'"),
    ('missing/config.py', 'config file missing/config.py does not exist'),
    ('', "empty config ''"),
])
def test_a_missing_config_is_one_line(spec, message):
  with pytest.raises(config_lib.ConfigError, match=message) as e:
    configs.load(spec)
  assert '\n' not in str(e.value)


def test_the_hf_tokenizer_reads_its_path_or_the_hf_checkpoints_and_else_is_one_line():
  c = configs.load('shakespeare_char:quick')
  c.data.tokenizer = 'hf'
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  assert str(e.value) == (
      'config.data.tokenizer=hf reads a Hugging Face tokenizer, but no directory is named; set '
      '--config.data.tokenizer_path=DIR (a directory save_pretrained wrote) or '
      '--config.init_from=hf:DIR.')
  c.init_from = 'runs/mlm'  # another run's vocabulary is not a tokenizer's files.
  with pytest.raises(config_lib.ConfigError, match='no directory is named'):
    config_lib.validate(c)
  c.init_from = 'hf:/models/gpt2'
  config_lib.validate(c)
  assert config_lib.tokenizer_path(c) == '/models/gpt2'
  c.data.tokenizer_path = '/models/gpt2-tokenizer'  # named: it wins.
  assert config_lib.tokenizer_path(c) == '/models/gpt2-tokenizer'
  c.data.tokenizer = 'char'
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  assert str(e.value) == ("config.data.tokenizer_path='/models/gpt2-tokenizer' is read by "
                          'tokenizer=hf only (got tokenizer=char); set --config.data.tokenizer=hf '
                          'or leave the path empty.')


def test_a_user_file_loads_and_a_broken_one_is_one_line(tmp_path):
  good = tmp_path / 'mine.py'
  good.write_text('from transformer_jax.configs import shakespeare_char\n\n'
                  'def get_config():\n  c = shakespeare_char.get_config()\n'
                  '  c.model.num_heads = 2\n  return c\n')
  assert configs.load(str(good)).model.num_heads == 2
  broken = tmp_path / 'broken.py'
  broken.write_text('def get_config(:\n  pass\n')
  with pytest.raises(config_lib.ConfigError, match=r'broken.py does not parse: .* \(line 1\)'):
    configs.load(str(broken))
  empty = tmp_path / 'empty.py'
  empty.write_text('X = 1\n')
  with pytest.raises(config_lib.ConfigError, match='has no get_config'):
    configs.load(str(empty))


def test_a_user_get_config_that_cannot_serve_the_spec_is_one_line(tmp_path):
  no_arg = tmp_path / 'no_arg.py'
  no_arg.write_text('from transformer_jax import config\n\n'
                    'def get_config():\n  return config.base_config()\n')
  assert configs.load(str(no_arg)).model.num_heads == config_lib.base_config().model.num_heads
  with pytest.raises(config_lib.ConfigError, match=r'no_arg.py: get_config\(\) takes no '
                     'argument, so :quick cannot be passed; drop :quick'):
    configs.load(f'{no_arg}:quick')
  plain = tmp_path / 'plain.py'
  plain.write_text('def get_config():\n  return {"model": {"num_heads": 2}}\n')
  with pytest.raises(config_lib.ConfigError, match=r'plain.py: get_config\(\) returned a dict, '
                     'not a ConfigDict'):
    configs.load(str(plain))


def test_big_is_the_base_model_scaled_up():
  b, g = configs.load('wmt14_ende_base'), configs.load('wmt14_ende_big')
  assert (g.model.d_model, g.model.num_heads, g.model.dropout_rate) == (1024, 16, 0.3)
  assert g.data.to_dict() == b.data.to_dict()
  assert abs(accounting.count_params(g.model) / 1e6 - 213) / 213 < 0.07  # Table 3: 213M.


def run_main(tmp_path, *args):
  """main.py from a directory that is not the repository."""
  return subprocess.run([sys.executable, '-m', 'transformer_jax.main', *args], cwd=tmp_path,
                        capture_output=True, text=True, timeout=300)


def test_main_takes_names_paths_and_overrides_and_errs_in_one_line(tmp_path):
  path = os.path.join(CONFIG_DIR, 'shakespeare_char.py')
  by_name = run_main(tmp_path, '--config=shakespeare_char:quick', '--mode=describe',
                     '--config.model.num_heads=8')
  by_path = run_main(tmp_path, f'--config={path}:quick', '--mode=describe',
                     '--config.model.num_heads=8')
  assert by_name.returncode == 0, by_name.stderr
  assert by_name.stdout.splitlines()[-1] == by_path.stdout.splitlines()[-1]
  assert '"num_heads": 8' in by_name.stdout
  for args, message in [
      (['--config=shakespeare_char:big'], "Config error: shakespeare_char: unknown config "
                                          "argument 'big'; use one of 'quick', 'nanogpt' or none."),
      (['--config=no_such_config'], "Config error: no config named 'no_such_config'"),
      (['--config.model.num_head=4'], 'Config error: config.model.num_head is not a config '
                                      'field; did you mean config.model.num_heads? (in '),
      (['--config.model.foo=1'], 'Config error: config.model.foo is not a config field; '
                                 'config.model has activation, attention, '),
      (['--config.model.num_heads.x=1'], 'Config error: config.model.num_heads is a value, not '
                                         'a section'),
  ]:
    out = run_main(tmp_path, *args, '--mode=describe')
    assert out.returncode != 0 and out.stderr.strip().startswith(message), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_first_start_refused_once_the_data_is_read_leaves_no_workdir(tmp_path):
  """The workdir check writes in it and trainer.setup makes the run's files; a
  first start refused after both (the vocabulary does not fit) leaves nothing,
  so the listing of runs shows only runs that started."""
  workdir = tmp_path / 'runs' / 'too_small'
  out = run_main(tmp_path, '--config=shakespeare_char:quick', f'--workdir={workdir}',
                 '--config.model.vocab_size=10')
  assert out.returncode != 0
  assert out.stderr.strip().splitlines()[-1].startswith(
      'Config error: config.model.vocab_size=10 is smaller than the char tokenizer')
  assert not (tmp_path / 'runs').exists()


@pytest.mark.parametrize('field', ['learning_rate', 'optimizer.b2', 'optimizer.grad_clip_norm',
                                   'model.dropout_rate', 'model.ffn_ratio', 'data.mask_rate',
                                   'decode.top_p', 'sample_temperature'])
@pytest.mark.parametrize('value', [float('inf'), float('nan')])
def test_a_number_that_is_not_finite_is_refused_in_one_line(field, value):
  """Every float of the config, whatever its own range check (inf passes `> 0`)."""
  c = override(configs.load('shakespeare_char'), {field: value})
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.validate(c)
  assert str(e.value) == f'config.{field}={value} is not a finite number; give one.'


@pytest.mark.parametrize('model, max_positions, trained_positions', [
    ({}, 512, None),  # sinusoidal: max_len rows when decoding; a formula in a full pass.
    ({'position': 'learned', 'max_len': 64}, 64, 64),
    ({'position': 'rotary'}, None, None),  # no table, no limit.
    ({'position': 'none'}, None, None),
    ({'variant': 'encoder', 'encoder_head': 'classify', 'patch_size': 4, 'image_size': 8,
      'position': 'learned', 'pooling': 'cls'}, None, None),  # a row per patch, whatever seq_len.
])
def test_the_positional_limit_is_the_model_configs_and_validation_reads_it(
    model, max_positions, trained_positions):
  c = override(config_lib.base_config(), {f'model.{k}': v for k, v in model.items()})
  m = config_lib.ModelConfig.of(c.model)
  assert (m.max_positions, m.trained_positions) == (max_positions, trained_positions)
  c.seq_len = (max_positions or 4096) + 1
  if trained_positions is None:
    config_lib.validate_run(c)
  else:
    with pytest.raises(config_lib.ConfigError, match=rf'positional table \(config.model.max_len='
                       rf'{max_positions} rows\); lower seq_len, or raise max_len for a new run'):
      config_lib.validate_run(c)


@pytest.mark.parametrize('variant, head, generates, classifies', [
    ('decoder', 'mlm', True, False), ('seq2seq', 'mlm', True, False),
    ('encoder', 'mlm', False, False), ('encoder', 'classify', False, True),
])
def test_what_a_variant_does_is_read_off_the_model_config(variant, head, generates, classifies):
  m = config_lib.ModelConfig.of(override(config_lib.base_config(), {
      'model.variant': variant, 'model.encoder_head': head}).model)
  assert (m.generates, m.classifies) == (generates, classifies)
  assert m.has_encoder == (variant != 'decoder') and m.has_decoder == (variant != 'encoder')
  assert m.max_beam == m.vocab_size // 2


def test_fixed_params_grid_holds_parameters():
  base = config_lib.base_config()
  base.model.update(variant='decoder', num_layers=4, d_model=128, num_heads=4, vocab_size=96)
  target = accounting.count_params(base.model)
  for scale in ('num_layers', 'd_model'):
    runs = accounting.fixed_params_grid(base, [1.0, 2.0, 4.0, 8.0], scale=scale)
    assert [r['model.ffn_ratio'] for r in runs] == [1.0, 2.0, 4.0, 8.0]
    depths_or_widths = [r[f'model.{scale}'] for r in runs]
    assert depths_or_widths == sorted(depths_or_widths, reverse=True)  # bigger d_ff, less else.
    for overrides in runs:
      m = base.model.copy_and_resolve_references()
      m.ffn_ratio, m[scale] = overrides['model.ffn_ratio'], overrides[f'model.{scale}']
      assert abs(accounting.count_params(m) - target) / target < 0.2
