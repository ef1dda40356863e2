"""Progress bars that show on a terminal and in a Jupyter or Colab notebook,
and stay quiet where output goes to a file or a pipe (CI, a sweep's log.txt).

tqdm's own `disable=None` hides a bar whenever its stream is not a terminal,
and a notebook kernel's stream is not one, so the notebooks would see nothing;
`disabled` asks for the bar in a kernel instead. `bar` is tqdm's notebook-aware
form (`tqdm.auto`: a widget where ipywidgets is installed, else a text bar);
`waiting` is one for work that counts nothing (a single call that runs for a while).
"""

import contextlib
import sys
import threading
from typing import Iterator, Optional

import tqdm.auto


def in_notebook() -> bool:
  """Whether this process is a Jupyter (or Colab) kernel: its IPython shell is
  ipykernel's, the test tqdm.auto makes too."""
  zmqshell, ipython = sys.modules.get('ipykernel.zmqshell'), sys.modules.get('IPython')
  return bool(zmqshell and ipython) and isinstance(ipython.get_ipython(),
                                                    zmqshell.ZMQInteractiveShell)


def disabled() -> Optional[bool]:
  """tqdm's `disable` for a bar here: False (shown) in a notebook kernel, else
  None (shown on a terminal, hidden where the stream is not one)."""
  return False if in_notebook() else None


def bar(iterable=None, **kwargs) -> tqdm.auto.tqdm:
  """tqdm.auto.tqdm(iterable, **kwargs), shown as `disabled` says."""
  return tqdm.auto.tqdm(iterable, disable=disabled(), **kwargs)


@contextlib.contextmanager
def waiting(desc: str, every: float = 1.0, **kwargs) -> Iterator[tqdm.auto.tqdm]:
  """A bar for work that reports no progress of its own (SentencePiece training,
  writing a weights file): `desc` and the time elapsed, redrawn every `every`
  seconds from a thread while the block runs, closed when it ends. Yields the bar:
  `set_description_str` names each phase; `update(n)` counts what a phase can
  count, shown where kwargs' bar_format has {n_fmt} (the default, '{desc}
  [{elapsed}]', has not).
  """
  shown = bar(total=None, desc=desc, **{'bar_format': '{desc} [{elapsed}]', **kwargs})
  done = threading.Event()

  def redraw():
    while not done.wait(every):
      shown.refresh()

  ticker = threading.Thread(target=redraw, daemon=True)
  if not shown.disable:
    ticker.start()
  try:
    yield shown
  finally:
    done.set()
    if ticker.is_alive():
      ticker.join()
    shown.close()
