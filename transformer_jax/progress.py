"""Progress bars that show on a terminal and in a Jupyter or Colab notebook,
and stay quiet where output goes to a file or a pipe (CI, a sweep's log.txt).

tqdm's own `disable=None` hides a bar whenever its stream is not a terminal,
and a notebook kernel's stream is not one, so the notebooks would see nothing;
`disabled` asks for the bar in a kernel instead. `bar` is tqdm's notebook-aware
form (`tqdm.auto`: a widget where ipywidgets is installed, else a text bar).
"""

import sys
from typing import Optional

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
