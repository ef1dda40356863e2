"""The data layer: sources -> examples -> batches, one recipe per dataset (datasets.py)."""


class DataError(ValueError):
  """Data that cannot be read or encoded as the config asks (an empty, binary or
  non-UTF-8 file, a malformed line, an over-long example, a dataset that is not
  prepared); the message names the file (and line) and the fix."""
