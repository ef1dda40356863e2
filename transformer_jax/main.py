"""Command-line entry point: flags only; the work lives in importable modules.

  python -m transformer_jax.main                     # the default experiment
  python -m transformer_jax.main --config=shakespeare_char \
      --workdir=runs/char --config.model.num_heads=8
  python -m transformer_jax.main --config=wmt14_ende_base --mode=describe
  python -m transformer_jax.main --config=path/to/my_config.py:arg

Modes:
  train     (default) train, or resume the run in --workdir from its latest
            checkpoint; SIGTERM / Ctrl-C save a checkpoint before exiting.
  eval      evaluate the checkpoint (config.restore_checkpoint) of --workdir on the
            full eval split, with the task's decoding metrics (bits/char, WER/PER,
            BLEU); other held-out data (--config.data.eval_files, eval_split) may
            be named, and the record says so.
  decode    turn each line of --input (default stdin) into a continuation
            (decoder) or an output (seq2seq), as config.decode says; a masked
            LM prints each line with the likeliest fills of its [MASK]s.
  Eval, decode and export read the run's parameters and saved vocabulary only
  (restore.py): no optimiser state, and no training data.
  describe  print the model's shape, parameter count and FLOPs per token as one
            JSON object on the last line of stdout, without training.
  export    write the checkpoint (config.restore_checkpoint) of --workdir to --output
            (default <workdir>/export) as model.safetensors + config.json; a decoder
            with GPT-2's layout as a directory transformers.GPT2LMHeadModel loads
            (transformer_jax/hf.py; needs the hf extra).

--config is a packaged config's name (transformer_jax/configs/), a module name or a
.py file, each with an optional :arg. Without --config the default experiment runs
(shakespeare_char); without --workdir the run lives in runs/<config name>. A config
error (a typo in an override, a value that cannot work) exits with one line before
anything is compiled.
"""

import json
import os
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from transformer_jax import config as config_lib
from transformer_jax import configs

DEFAULT_CONFIG = configs.config_file('shakespeare_char')

CONFIG_ERRORS = (AttributeError, KeyError, TypeError, ValueError)


def _config_spec(argv) -> Optional[str]:
  """The --config value of argv (`--config=SPEC` or `--config SPEC`; the last one)."""
  spec = None
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      spec = arg[len('--config='):]
    elif arg == '--config' and i + 1 < len(argv):
      spec = argv[i + 1]
  return spec


def _config_error(e: Exception) -> str:
  """One line for a refused override: the field it names that does not exist,
  else ml_collections' multi-line, quoted error."""
  spec = _config_spec(sys.argv[1:])
  overrides = [a for a in sys.argv[1:] if a.startswith('--config.')]
  try:
    message = config_lib.unknown_override(configs.load(spec or DEFAULT_CONFIG), overrides)
  except config_lib.ConfigError as error:  # --config itself is wrong: that is the message.
    message = str(error)
  if message is None:
    message = str(e.args[0] if len(e.args) == 1 else e).strip('\'"').replace('\\n', ' ')
    message = ' '.join(message.replace('\\"', '"').replace("\\'", "'").split())
  return f'Config error: {message} (in {" ".join(overrides)})'


def _fail(message: str):
  """An expected failure: one line on stderr, exit status 2, no traceback."""
  print(' '.join(str(message).split()), file=sys.stderr, flush=True)
  parallel = sys.modules.get('transformer_jax.parallel')  # imported once jax may run.
  if parallel is not None:
    parallel.exit_now(2)  # multi-host: without waiting for the others.
  sys.exit(2)


try:  # with a default file, config_flags applies the overrides in sys.argv right here.
  _CONFIG = config_flags.DEFINE_config_file(
      'config', DEFAULT_CONFIG, 'Experiment config: a name in transformer_jax/configs/, a '
      'module name or a .py file (get_config()), optionally :arg.', lock_config=True)
except CONFIG_ERRORS as e:
  _fail(_config_error(e))
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Run directory: checkpoints, metrics.jsonl, TensorBoard, '
                               'config.json. Default: runs/<config file name>.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'decode', 'describe', 'export'],
                          'What to do.')
_INPUT = flags.DEFINE_string('input', '-', 'decode mode: a text file, one input per line '
                             '(- = standard input).')
_OUTPUT = flags.DEFINE_string('output', None, 'export mode: the directory written (default '
                              '<workdir>/export).')


def _config_files(argv):
  """argv with the --config value as the config's file (ml_collections reads files)."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      argv[i] = '--config=' + _config_file(arg[len('--config='):])
    elif arg == '--config' and i + 1 < len(argv):
      argv[i + 1] = _config_file(argv[i + 1])
  return argv


def _config_file(spec: str) -> str:
  """A config spec's file, after checking that the config loads."""
  try:
    configs.load(spec)
    return configs.config_file(spec)
  except config_lib.ConfigError as e:
    _fail(f'Config error: {e}')


def parse_flags(argv):
  """absl flag parsing, with config errors (e.g. --config.model.num_head=4) as one line."""
  try:
    return flags.FLAGS(_config_files(argv))
  except flags.Error as e:
    _fail(f'Flag error: {e}')
  except CONFIG_ERRORS as e:
    _fail(_config_error(e))


def _workdir() -> str:
  if _WORKDIR.value:
    return _WORKDIR.value
  path = config_flags.get_config_filename(flags.FLAGS['config'])
  name = os.path.splitext(os.path.basename(path.split(':')[0]))[0]
  return os.path.join('runs', name)


def _read_lines(path: str) -> list:
  """Every input line for --mode=decode (an empty line is an empty input)."""
  if path == '-':
    text = sys.stdin.read()
  else:
    if os.path.isdir(path):
      _fail(f'--input={path} is a directory; give a text file with one input per line.')
    try:
      with open(path, encoding='utf-8') as f:
        text = f.read()
    except FileNotFoundError:
      _fail(f'--input={path} does not exist; give a text file with one input per line.')
    except UnicodeDecodeError as e:
      _fail(f'--input={path} is not UTF-8 text (byte {e.start}); give a text file with one '
            'input per line.')
  if '\0' in text:
    _fail(f'--input={path} holds NUL bytes, so it is not text; give a text file with one '
          'input per line.')
  lines = text.splitlines()
  if not lines:
    _fail(f'--input={path} is empty; give one input per line.')
  return lines


def _check_workdir(workdir: str):
  """A training workdir must be a directory this process can write. The check
  writes there; directories it had to make are removed again (trainer.setup
  makes them for the run), so a run refused before it starts leaves none."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    _fail(f'--workdir={workdir} is a file, not a directory; give a directory for the run.')
  from transformer_jax import trainer  # pylint: disable=g-import-not-at-top
  from transformer_jax import run_log  # pylint: disable=g-import-not-at-top
  made = trainer.missing_root(workdir)
  try:
    run_log.check_writable(workdir)
  except run_log.WriteFailed as e:
    _fail(f'--workdir={workdir} is not writable ({e.strerror}); give a directory you can '
          'write to.')
  trainer.unmake(workdir, made)  # empty directories only: another process may use them.


class _Labelled:
  """A text stream that starts every line with a label (a process of a multi-host run)."""

  def __init__(self, stream, label: str):
    self._stream, self._label, self._at_line_start = stream, label, True

  def write(self, text: str) -> int:
    for piece in text.splitlines(keepends=True):
      if self._at_line_start:
        self._stream.write(self._label)
      self._stream.write(piece)
      self._at_line_start = piece.endswith('\n')
    return len(text)

  def __getattr__(self, name):
    return getattr(self._stream, name)


def _label_output():
  """Processes other than 0 write no records; their output lines say which they are."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    label = f'[process {jax.process_index()} of {jax.process_count()}] '
    sys.stdout, sys.stderr = _Labelled(sys.stdout, label), _Labelled(sys.stderr, label)


def _use_compilation_cache(config):
  """Points JAX's persistent compilation cache at config.compilation_cache_dir
  before anything compiles, unless the field is '' or
  JAX_COMPILATION_CACHE_DIR already names one. A directory that cannot be
  written leaves the cache off, said in one line: the run does not need it."""
  path = os.path.expanduser(config.compilation_cache_dir)
  if not path or os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return
  from transformer_jax import run_log  # pylint: disable=g-import-not-at-top  # imports jax.
  try:
    run_log.check_writable(path)
  except run_log.WriteFailed as e:
    print(f'Compilation cache off: cannot write {path} ({e.strerror}); set '
          '--config.compilation_cache_dir to a writable directory, or to \'\' for off.',
          file=sys.stderr, flush=True)
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)  # every program kept.


def _printable(text: str) -> str:
  """An output as one line: newlines inside it become the two characters \\n."""
  return text.replace('\\', '\\\\').replace('\n', '\\n')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    _fail(f'Config error: {e}')
  if _MODE.value == 'describe':
    from transformer_jax.models import accounting  # pylint: disable=g-import-not-at-top
    print(json.dumps(accounting.describe(config.model, config.seq_len)))
    return
  _use_compilation_cache(config)
  if not flags.FLAGS['verbosity'].present:  # keep Orbax's INFO logs out of the progress.
    logging.set_verbosity(logging.WARNING)
  from transformer_jax import parallel  # pylint: disable=g-import-not-at-top
  if config.distributed.enabled:
    if _MODE.value != 'train':
      _fail(f'--mode={_MODE.value} runs in one process; drop --config.distributed.* (eval and '
            'decode read the checkpoint that the multi-host run wrote).')
    try:
      parallel.initialize_distributed(config.distributed)
    except parallel.DistributedError as e:
      _fail(str(e))
    _label_output()
  # pylint: disable=g-import-not-at-top
  from transformer_jax import checkpoint
  from transformer_jax import evaluation
  from transformer_jax import lock
  from transformer_jax import run_log
  from transformer_jax import trainer
  from transformer_jax.data import DataError
  # pylint: enable=g-import-not-at-top
  workdir = _workdir()
  try:
    if _MODE.value == 'eval':
      result = evaluation.evaluate_checkpoint(config, workdir)
      print(json.dumps(result), flush=True)  # first: a failed write must not lose it.
      try:
        evaluation.record_eval(config, workdir, result)
      except OSError as e:
        _fail(f'Could not record the result above in {workdir} ({e.strerror or e}); it is '
              'printed only. Make the workdir writable to record evaluations.')
      return
    elif _MODE.value == 'export':
      from transformer_jax import hf  # pylint: disable=g-import-not-at-top  # the hf extra.
      output = _OUTPUT.value or os.path.join(workdir, 'export')
      if os.path.exists(output) and not os.path.isdir(output):
        _fail(f'--output={output} is a file, not a directory; give a directory for the export.')
      print(hf.export_checkpoint(config, workdir, output), flush=True)
      return
    elif _MODE.value == 'decode':
      evaluation.check_decodable(config)
      lines = _read_lines(_INPUT.value)
      for line in evaluation.decode_checkpoint(config, workdir, lines):
        print(_printable(line), flush=True)
      return
    else:
      _check_workdir(workdir)
      result = trainer.train(config, workdir)
  except config_lib.ConfigError as e:
    _fail(f'Config error: {e}')
  except (DataError, trainer.TrainingDiverged, FileNotFoundError, lock.WorkdirLocked,
          checkpoint.NoIntactCheckpoint, run_log.RecordError, parallel.DistributedError,
          run_log.WriteFailed) as e:
    _fail(str(e))
  except OSError as e:  # a write of a module without its own message (the vocabulary, the lock).
    if e.errno not in run_log.WRITE_ONLY_ERRNOS:
      raise
    _fail(str(run_log.write_failed(e.filename or workdir, e)))
  parallel.finish_distributed()
  if result.get('interrupted'):
    sys.exit(128 + result['interrupted'])
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
