"""When a training run has diverged, and which of its checkpoints are still good.

The one rule (`Course.update`): the loss has left its course at a step when the
step's loss or gradient norm is not finite, or when the median train loss of
the last `WINDOW` steps lies more than `config.divergence_factor` x ln K above
the lowest such median of the run so far, ln K being the loss of a uniform
guess over the model's K outputs (its vocabulary, or its classes:
`uniform_loss`). The median rides out noisy batches, and measuring the rise in
units of ln K lets one factor serve every task, a character LM at 1.5 nats and
a classifier at 0.05 alike. The default factor, 2, is far outside a healthy
run's noise: the shipped configs' quick runs rise at most 0.05 ln K above their
best, the noisiest run measured (shakespeare_genre at batch size 1) 0.6 ln K;
a learning rate that blows up lifts the loss by thousands to millions of nats.
Factor 0 stops on a non-finite loss only.

A checkpoint is good when the loss of the state it holds was on course. The
loss recorded at step t is that of the state the update of step t starts from,
so checkpoint s holds the state whose loss is step s + 1's: it is good when
step s + 1 came before the loss left its course (`Divergence.last_good`).
Where the loss left it is the first step of the last WINDOW whose loss was off
course on its own (above the same bound, or not finite); before the window,
the median said the loss was on course.

The course is part of a run's state: each checkpoint records it (`state`, with
the median loss it was saved at) and a resumed run continues from it, so a
resumed run stops where the uninterrupted one would.
"""

import collections
import dataclasses
import math
from typing import Optional

import numpy as np

from transformer_jax import config as config_lib

WINDOW = 32  # steps whose median train loss the rule compares.


def outputs(model) -> int:
  """K, the outputs a model's loss spreads over: its classes, else its vocabulary."""
  m = config_lib.ModelConfig.of(model)
  return m.num_classes if m.classifies else m.vocab_size


def uniform_loss(model) -> float:
  """ln K: the loss (nats) of a uniform guess over the model's K outputs."""
  return math.log(outputs(model))


@dataclasses.dataclass(frozen=True)
class Divergence:
  """The loss left its course: found at `step`, first off it at `left_at`."""
  step: int
  left_at: int
  reason: str  # what was off, in words (no trailing period).

  def last_good(self, steps) -> Optional[int]:
    """The newest of the checkpoint `steps` that is good: whose state's loss,
    step s + 1's, came before the loss left its course (None: none is)."""
    good = [s for s in steps if s + 1 < self.left_at]
    return max(good) if good else None


class Course:
  """The train loss's course so far: the last WINDOW steps' losses and the
  lowest median of them; `update` puts each step to the rule."""

  def __init__(self, config, saved: Optional[dict] = None):
    """A new run's course, or the one a checkpoint recorded (`saved`, `state`'s)."""
    saved = saved or {}
    self.factor = float(config.divergence_factor)
    self.outputs = outputs(config.model)
    self.best: Optional[float] = saved.get('best')
    self.window = collections.deque((tuple(x) for x in saved.get('window', ())), maxlen=WINDOW)

  @property
  def median(self) -> Optional[float]:
    """The median loss of the window (None before the first step)."""
    return float(np.median([loss for _, loss in self.window])) if self.window else None

  @property
  def margin(self) -> float:
    """How far above its best median the loss may go: factor x ln K."""
    return self.factor * math.log(self.outputs)

  def _off(self, loss: float) -> bool:
    return self.factor > 0 and self.best is not None and loss > self.best + self.margin

  def update(self, step: int, nll: float, weight: float, grad_norm: float) -> Optional[Divergence]:
    """Puts step `step` (its summed nll and target weight, and its gradient
    norm) to the rule; returns the Divergence if the loss has left its course,
    else None (the run goes on). A step without targets (weight 0) counts only
    for finiteness."""
    loss = float(nll) / max(float(weight), 1e-9)
    finite = bool(np.isfinite(loss) and np.isfinite(grad_norm))
    if finite and weight > 0:
      self.window.append((int(step), loss))
    median = self.median
    if finite and not (median is not None and self._off(median)):
      if median is not None:
        self.best = median if self.best is None else min(self.best, median)
      return None
    left_at = min([s for s, x in self.window if self._off(x)] + [int(step)])
    if not finite:
      reason = f'loss is {loss} (grad norm {grad_norm}) at step {step}'
    else:
      reason = (f'the median train loss of steps {self.window[0][0]}-{step} is {median:.6g}, '
                f'more than config.divergence_factor={self.factor:g} x ln {self.outputs} = '
                f'{self.margin:.3g} above its best, {self.best:.4f}')
    if left_at < step or finite:
      reason += f' (it left its course at step {left_at})'
    return Divergence(step=int(step), left_at=left_at, reason=reason)

  def state(self) -> dict:
    """What a checkpoint records: the median train loss it was saved at
    ('loss'), the best median and the window, as JSON values."""
    return {'loss': self.median, 'best': self.best, 'window': [list(x) for x in self.window]}
