"""orbax-checkpoint managers: periodic checkpoints for resuming, and the best
checkpoint on the validation metric."""

from __future__ import annotations

import os
from typing import Any, Optional

import orbax.checkpoint as ocp


class Checkpoints:
  """Two managers under `workdir/checkpoints`: 'latest' (keep N) and 'best' (keep 1).

  Each checkpoint holds the train state and a JSON 'meta' record (epoch, best
  metric, early-stopping counter, elapsed time) so a resumed run continues with
  exactly the bookkeeping of the run it replaces.
  """

  def __init__(self, workdir: str, keep: int = 2):
    root = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    opts = lambda n: ocp.CheckpointManagerOptions(max_to_keep=n, create=True)
    self.latest = ocp.CheckpointManager(os.path.join(root, 'latest'), options=opts(keep),
                                        item_names=('state', 'meta'))
    self.best = ocp.CheckpointManager(os.path.join(root, 'best'), options=opts(1),
                                      item_names=('state', 'meta'))

  @staticmethod
  def _save(mngr, step: int, state, meta: dict):
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()

  def save_latest(self, step: int, state, meta: dict):
    self._save(self.latest, step, state, meta)

  def save_best(self, step: int, state, meta: dict):
    self._save(self.best, step, state, meta)

  @staticmethod
  def _restore(mngr, abstract_state, step: Optional[int]):
    step = mngr.latest_step() if step is None else step
    if step is None:
      return None
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    return out['state'], dict(out['meta'])

  def restore_latest(self, abstract_state, step: Optional[int] = None):
    return self._restore(self.latest, abstract_state, step)

  def restore_best(self, abstract_state, step: Optional[int] = None):
    return self._restore(self.best, abstract_state, step)

  def all_steps(self) -> dict:
    return {'latest': list(self.latest.all_steps()), 'best': list(self.best.all_steps())}

  def close(self):
    self.latest.close()
    self.best.close()


def abstract_of(tree: Any):
  import jax
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def read_state(workdir: str, which: str = 'best'):
  """(state as saved, step) of a run's latest 'best' or 'latest' checkpoint, without
  knowing its structure: for warm starts from another model's run."""
  root = os.path.join(os.path.abspath(workdir), 'checkpoints', which)
  if not os.path.isdir(root):
    raise FileNotFoundError(f'no {which!r} checkpoints at {root}')
  mngr = ocp.CheckpointManager(root, item_names=('state', 'meta'),
                               options=ocp.CheckpointManagerOptions(create=False))
  try:
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f'{root} holds no checkpoint')
    return mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))['state'], step
  finally:
    mngr.close()
