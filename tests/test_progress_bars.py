"""Progress bars on the long operations that count nothing of their own (progress.waiting):
SentencePiece training, reading a Hugging Face checkpoint and exporting one. Each shows on
a terminal what it is doing and stays out of a log file."""

import fcntl
import os
import pty
import struct
import sys
import termios
import threading

import jax
import jax.numpy as jnp
import pytest
import tqdm

from transformer_jax import config as config_lib
from transformer_jax import hf
from transformer_jax import progress
from transformer_jax.data import sources
from transformer_jax.data import tokenizers
from transformer_jax.models.transformer import build_model


class Terminal:
  """A pseudo-terminal 120 columns wide as sys.stderr (where tqdm writes), read
  from a thread so that a bar never blocks on a full buffer."""

  def __init__(self):
    self._main, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 120, 0, 0))
    self.stream = open(follower, 'w', buffering=1)
    self._chunks = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    while True:
      try:
        self._chunks.append(os.read(self._main, 1 << 16))
      except OSError:  # the terminal closed.
        return

  def lines(self) -> list:
    """Each state a bar was drawn in, in order (tqdm redraws after a carriage return)."""
    self.stream.close()
    self._reader.join()
    os.close(self._main)
    text = b''.join(self._chunks).decode()
    return [line.strip() for line in text.replace('\n', '\r').split('\r') if line.strip()]


@pytest.fixture
def terminal(monkeypatch):
  """Terminal(), made sys.stderr by `terminal.use()` in the test's body (pytest's output
  capture sets sys.stderr again between a fixture and the test)."""
  shown = Terminal()
  shown.use = lambda: monkeypatch.setattr(sys, 'stderr', shown.stream)
  return shown


def test_a_waiting_bar_names_each_phase_on_a_terminal_and_nothing_in_a_log(tmp_path):
  shown = Terminal()
  with open(tmp_path / 'log.txt', 'w') as log:
    for stream in (shown.stream, log):
      with progress.waiting('export: converting', file=stream) as bar:
        bar.set_description_str('export: writing')
  lines = shown.lines()
  assert lines[0].startswith('export: converting [00:0') and 'export: writing [00:0' in lines[-1]
  assert (tmp_path / 'log.txt').read_text() == ''


def test_sentencepiece_training_shows_the_characters_read_then_the_training(terminal,
                                                                           tmp_path):
  lines = [line for line in sources.shakespeare_split()[0][:50_000].split('\n') if line.strip()]
  terminal.use()
  tokenizers.train_sentencepiece(lines, str(tmp_path / 'spm.model'), 200)
  shown = terminal.lines()
  read = tqdm.tqdm.format_sizeof(sum(map(len, lines)))
  assert shown[0].startswith('SentencePiece unigram vocabulary of 200: reading')
  assert shown[-1].startswith(f'SentencePiece unigram vocabulary of 200: training on {read} '
                              'characters [00:'), shown[-1]


def test_reading_and_exporting_a_hugging_face_checkpoint_show_their_bars(terminal, tmp_path):
  transformers = pytest.importorskip('transformers')
  pytest.importorskip('safetensors')
  gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=4))
  gpt2.save_pretrained(str(tmp_path / 'gpt2'))
  config = config_lib.base_config()
  config.init_from = f'hf:{tmp_path / "gpt2"}'
  hf.configure(config, str(tmp_path / 'gpt2'))
  terminal.use()
  model = build_model(config.model)
  fresh = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))['params']
  params, _ = hf.load(config, jax.device_get(fresh))
  hf.export(config.model, params, str(tmp_path / 'out'))
  shown = terminal.lines()
  size = tqdm.tqdm.format_sizeof(os.path.getsize(tmp_path / 'gpt2' / 'model.safetensors'),
                                 divisor=1024)
  reading = [line for line in shown if line.startswith(f'reading {tmp_path / "gpt2"}: ')]
  assert reading and f'/{size} [' in reading[0], reading  # bytes of the weights files.
  exporting = [line.split(' [')[0] for line in shown if line.startswith('exporting to')]
  assert [f'exporting to {tmp_path / "out"}: {phase}' for phase in (
      'converting', 'writing model.safetensors', 'writing the tokenizer')] == sorted(
          set(exporting), key=exporting.index)
