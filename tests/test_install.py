"""Every third-party module the package imports is declared in setup.cfg.

The install check in CI (a fresh venv from the wheel) finds a missing
dependency only on the default experiment's path; this test reads every import
in the package, so a module used by decode, sweeps or export is covered too.
"""

import ast
import configparser
import importlib.metadata
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _requirement_names(lines):
  names = set()
  for line in lines.strip().splitlines():
    match = re.match(r'\s*([A-Za-z0-9_.\-]+)', line)
    if match:
      names.add(match.group(1).lower().replace('_', '-'))
  return names


def _declared():
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / 'setup.cfg')
  required = _requirement_names(cfg['options']['install_requires'])
  extras = {name: _requirement_names(value)
            for name, value in cfg['options.extras_require'].items()}
  return required, extras


def _imported_modules():
  """{top-level module: [files importing it]} for the package's imports."""
  found = {}
  for path in (ROOT / 'transformer_jax').rglob('*.py'):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names = [node.module]
      else:
        continue
      for name in names:
        top = name.split('.')[0]
        if top not in sys.stdlib_module_names and top != 'transformer_jax':
          found.setdefault(top, []).append(path.relative_to(ROOT).as_posix())
  return found


def _missing(declared):
  """Imported modules whose distribution is not in `declared` (normalised names)."""
  distributions = importlib.metadata.packages_distributions()
  missing = []
  for module, files in sorted(_imported_modules().items()):
    names = {d.lower().replace('_', '-') for d in distributions.get(module, [module])}
    if not names & declared:
      missing.append(f'{module} (imported by {sorted(set(files))[0]})')
  return missing


def test_every_imported_module_is_declared():
  required, extras = _declared()
  missing = _missing(required | set().union(*extras.values()))
  assert not missing, f'add to setup.cfg install_requires or an extra: {missing}'


def test_an_undeclared_module_is_reported():
  """The check is live: without tqdm declared, progress.py's import is named."""
  required, extras = _declared()
  missing = _missing((required | set().union(*extras.values())) - {'tqdm'})
  assert any(m.startswith('tqdm (imported by transformer_jax/') for m in missing), missing
