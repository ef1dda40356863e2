"""Every notebook in notebooks/ runs top to bottom, and its committed copy shows its results.

CI executes each notebook with nbclient on the python3 kernel in quick mode (TJ_QUICK=1), in a
fresh temporary working directory (a notebook must not depend on being run from the repository:
on Colab it is not), and fails on the first failing cell or when the notebook runs past
NOTEBOOK_BUDGET_S. A notebook added to notebooks/ is picked up by the glob, nothing to register.

After editing a notebook, refresh its committed outputs (full mode, plots embedded as PNG):

  python tests/test_notebooks.py notebooks/01_anatomy.ipynb
"""

import glob
import os
import sys
import tempfile
import time

import nbclient
import nbformat
import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPOSITORY, 'notebooks', '*.ipynb')))
# Quick mode, per notebook: a hang guard, not a speed test. A quick run takes
# 30-70 s on 2 idle cores; a busy or slower machine may take several times that.
NOTEBOOK_BUDGET_S = 1200
FULL_BUDGET_S = 1800  # refreshing the committed outputs in full mode.
COLAB = ('https://colab.research.google.com/github/transformer-jax/transformer_jax/blob/main/'
         'notebooks/')


def execute(nb, cwd: str, quick: bool, budget_s: float):
  """Runs `nb` in place on a fresh python3 kernel.

  Raises CellExecutionError on the first failing cell, CellTimeoutError once the whole notebook
  has run `budget_s` seconds. The kernel imports transformer_jax from this repository even where
  it is not pip-installed (as pytest does), and reads TJ_QUICK in the notebook's parameter cell.
  """
  env = dict(os.environ, TJ_QUICK='1' if quick else '0',
             PYTHONPATH=os.pathsep.join(filter(None, (REPOSITORY, os.environ.get('PYTHONPATH')))))
  deadline = time.monotonic() + budget_s
  client = nbclient.NotebookClient(
      nb, kernel_name='python3', record_timing=False, resources={'metadata': {'path': cwd}},
      extra_arguments=['--InteractiveShell.colors=NoColor'],  # readable tracebacks in CI logs
      timeout_func=lambda cell: max(1, int(deadline - time.monotonic())))
  client.execute(env=env)
  return nb


def code_cells(nb):
  return [cell for cell in nb.cells if cell.cell_type == 'code' and cell.source.strip()]


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_in_quick_mode(path, tmp_path):
  nb = nbformat.read(path, as_version=4)
  start = time.monotonic()
  execute(nb, str(tmp_path), quick=True, budget_s=NOTEBOOK_BUDGET_S)
  print(f'{os.path.basename(path)}: {time.monotonic() - start:.1f} s in quick mode')
  assert all(cell.execution_count for cell in code_cells(nb))


def test_execute_fails_on_a_failing_cell_and_past_the_budget(tmp_path):
  cells = [nbformat.v4.new_code_cell(source)
           for source in ('import os', 'assert os.environ["TJ_QUICK"] == "1"', '1 / 0')]
  with pytest.raises(nbclient.exceptions.CellExecutionError, match='ZeroDivisionError'):
    execute(nbformat.v4.new_notebook(cells=cells), str(tmp_path), quick=True, budget_s=60)
  slow = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('import time; time.sleep(30)')])
  with pytest.raises(nbclient.exceptions.CellTimeoutError):
    execute(slow, str(tmp_path), quick=True, budget_s=2)


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_committed_notebook_shows_its_results(path):
  """What issue 6 asks of every notebook, on the copy a reader sees on GitHub."""
  name = os.path.basename(path)
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  assert COLAB + name in nb.cells[0].source, f'{name}: the first cell needs the link {COLAB + name}'
  parameters = [cell.source for cell in code_cells(nb)
                if 'parameters' in cell.metadata.get('tags', [])]
  assert len(parameters) == 1 and 'QUICK' in parameters[0] and 'TJ_QUICK' in parameters[0], (
      f"{name}: needs one code cell tagged 'parameters' setting QUICK from the TJ_QUICK variable")
  counts = [cell.execution_count for cell in code_cells(nb)]
  assert counts == list(range(1, len(counts) + 1)), (
      f'{name}: outputs are not from one top-to-bottom run (execution counts {counts}); '
      f'refresh them with python tests/test_notebooks.py notebooks/{name}')
  outputs = [output for cell in code_cells(nb) for output in cell.outputs]
  assert not [o for o in outputs if o.output_type == 'error'], f'{name}: committed with an error'
  assert any('image/png' in o.get('data', {}) for o in outputs), f'{name}: committed without a plot'


def main(paths):
  """Executes each notebook in full mode and saves it with its outputs."""
  for path in paths:
    nb = nbformat.read(path, as_version=4)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as cwd:
      execute(nb, cwd, quick=False, budget_s=FULL_BUDGET_S)
    nbformat.write(nb, path)
    print(f'{path}: executed in {time.monotonic() - start:.1f} s, outputs saved')


if __name__ == '__main__':
  if len(sys.argv) < 2:
    sys.exit('usage: python tests/test_notebooks.py notebooks/NAME.ipynb [...]')
  main(sys.argv[1:])
