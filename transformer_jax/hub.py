"""Hugging Face Hub ids as local directories, through huggingface_hub's cache.

`config.init_from=hf:NAME` and `config.data.tokenizer_path=NAME` take a directory
that `save_pretrained` wrote or, where no such directory exists, a Hub id
(`gpt2`, `google-bert/bert-base-uncased`). `local_dir` turns an id into the
directory of its cached snapshot (the `main` revision) in huggingface_hub's cache:
HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub, laid out as
huggingface_hub lays it out (models--ORG--NAME/refs/main naming a snapshot in
models--ORG--NAME/snapshots/), so a model `hf download NAME` (or transformers)
fetched before is read offline. An id the cache lacks is downloaded (only the
files read here: config.json, the weights, the tokenizer's files), unless
HF_HUB_OFFLINE=1 forbids it; where it cannot be had, one line names the fix.

This module imports nothing of the package but config (its error): the data
layer (tokenizers.HFTokenizer) and hf.py both read ids through it.
"""

import importlib
import os

from transformer_jax import config as config_lib

ConfigError = config_lib.ConfigError
# What the import reads from a checkpoint directory (hf.py, tokenizers.HFTokenizer).
CONFIG_FILES = ('config.json',)
WEIGHTS = ('*.safetensors', '*.safetensors.index.json')
TORCH_WEIGHTS = ('pytorch_model.bin',)  # only where a repository has no safetensors.
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'vocab.txt', 'vocab.json', 'merges.txt', 'spiece.model', 'tokenizer.model',
                   'sentencepiece.bpe.model', 'added_tokens.json')


def _hub():
  try:
    return importlib.import_module('huggingface_hub')
  except ImportError:
    raise ConfigError('Hugging Face Hub ids need huggingface_hub: pip install '
                      '"transformer_jax[hf]".') from None


def is_hub_id(spec: str) -> bool:
  """Whether `spec` has the form of a Hub id (NAME or ORG/NAME) and names no directory."""
  if os.path.isdir(spec) or not spec:
    return False
  try:
    from huggingface_hub.utils import validate_repo_id  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  try:
    validate_repo_id(spec)
  except ValueError:  # HFValidationError: a path, not an id.
    return False
  return True


def cache_dir() -> str:
  """Where huggingface_hub keeps its cache (HF_HUB_CACHE, else HF_HOME/hub)."""
  return _hub().constants.HF_HUB_CACHE


def _cached(spec: str):
  """The snapshot directory of the cached `main` revision of `spec`, or None."""
  hub = _hub()
  for name in (*CONFIG_FILES, *TOKENIZER_FILES):
    path = hub.try_to_load_from_cache(spec, name)
    if isinstance(path, str):
      return os.path.dirname(path)
  return None


def _download(spec: str) -> str:
  """The files of `spec` read here, fetched into the cache: its snapshot directory.

  Raises:
    ConfigError: the Hub cannot be reached, or has no such repository.
  """
  hub = _hub()
  errors = hub.errors
  try:
    path = hub.snapshot_download(spec, allow_patterns=[*CONFIG_FILES, *WEIGHTS, *TOKENIZER_FILES])
    if not any(name.endswith('.safetensors') for name in os.listdir(path)):
      path = hub.snapshot_download(spec, allow_patterns=list(TORCH_WEIGHTS))
  except (errors.RepositoryNotFoundError, errors.GatedRepoError):
    raise ConfigError(f'{spec} is not a directory, and the Hugging Face Hub has no model {spec} '
                      'this machine may read (private or gated: `hf auth login`); check the '
                      'name, or give a directory that save_pretrained wrote.') from None
  except Exception as e:  # pylint: disable=broad-except  # httpx's, the hub's, OSError.
    raise ConfigError(f'{spec} is not a directory, nor in the Hugging Face cache ({cache_dir()}), '
                      f'and it could not be downloaded ({type(e).__name__}); connect to the '
                      f'internet, or run `hf download {spec}` on a machine that is and copy its '
                      'cache here (HF_HOME or HF_HUB_CACHE).') from None
  return path


def local_dir(spec: str) -> str:
  """The directory `spec` names: `spec` itself unless it is a Hub id (`is_hub_id`:
  no such directory, and of the form NAME or ORG/NAME); an id's cached snapshot
  (the `main` revision), downloaded first unless HF_HUB_OFFLINE=1 where the cache
  lacks it. A path that is neither is returned as it is (its readers say what is
  missing there).

  Raises:
    ConfigError: an id neither cached nor downloadable (one line with the fix).
  """
  if not is_hub_id(spec):
    return spec
  cached = _cached(spec)
  if cached is not None:
    return cached
  if _hub().constants.HF_HUB_OFFLINE:
    raise ConfigError(f'{spec} is not a directory, nor in the Hugging Face cache ({cache_dir()}), '
                      f'and HF_HUB_OFFLINE=1 forbids downloading it; run `hf download {spec}` '
                      'where there is internet (with this HF_HOME or HF_HUB_CACHE), or unset '
                      'HF_HUB_OFFLINE.')
  return _download(spec)
