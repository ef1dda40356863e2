"""config.profile_steps: a jax.profiler trace of the named training steps."""

import collections
import glob
import json
import os

import pytest

from conftest import TINY, load_config, override
from transformer_jax import config as config_lib
from transformer_jax import trainer


def test_a_trace_of_the_named_steps_is_written_for_tensorboard(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  config = override(load_config(), {**TINY, 'profile_steps': '2:3'})
  trainer.train(config, workdir)
  traces = glob.glob(os.path.join(workdir, 'profile', 'plugins', 'profile', '*', '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
  assert 'Traced steps 2 to 3' in capsys.readouterr().out


def test_the_profile_plugin_reads_the_named_steps_from_the_trace(tmp_path):
  """The trace as TensorBoard's Profile tab reads it (its converter, the xprof package of
  the 'profile' extra): the trace viewer's events hold the Python train step of steps 2
  and 3 only."""
  convert = pytest.importorskip('xprof.convert.raw_to_tool_data')
  workdir = str(tmp_path / 'run')
  trainer.train(override(load_config(), {**TINY, 'profile_steps': '2:3'}), workdir)
  traces = glob.glob(os.path.join(workdir, 'profile', 'plugins', 'profile', '*', '*.xplane.pb'))
  assert 'trace_viewer' in ' '.join(convert.xspace_to_tool_names(traces))
  data, _ = convert.xspace_to_tool_data(traces, 'trace_viewer', {})
  calls = collections.Counter(e.get('name', '').rsplit(' ', 1)[-1]
                              for e in json.loads(data)['traceEvents'] if e.get('ph') == 'X')
  assert calls['train_step'] == 2  # Python's calls of parallel.py's train_step, one a step.


def test_no_trace_without_profile_steps(tmp_path):
  workdir = str(tmp_path / 'run')
  trainer.train(override(load_config(), TINY), workdir)
  assert not os.path.exists(os.path.join(workdir, 'profile'))


@pytest.mark.parametrize('value', ['10', '10:', 'a:b', '0:3', '5:4', '1:2:3'])
def test_a_malformed_profile_steps_is_one_line(value):
  config = override(load_config(), {**TINY, 'profile_steps': value})
  with pytest.raises(config_lib.ConfigError, match='must be START:STOP') as e:
    config_lib.validate(config)
  assert '\n' not in str(e.value)
