"""Evaluation of a saved checkpoint on any split or dataset directory."""

from __future__ import annotations

import json
from mer_jax.log import logger as logging
import os

from data_pipelines import input_pipeline
from mer_jax import checkpointing, metrics as metrics_lib, train


def evaluate_checkpoint(config, workdir: str, split: str = 'test', checkpoint: str = 'best',
                        data_dir: str = '', dataset: str = '') -> dict:
  """Restores the best / latest / given-step checkpoint and scores `split`.

  Writes `workdir/eval_<dataset>_<split>_<checkpoint>.json` and returns the metrics.
  """
  trainer = train.Trainer(config, workdir)
  ckpts = checkpointing.Checkpoints(workdir)
  abstract = checkpointing.abstract_of(train._state_dict(trainer.state))
  if checkpoint == 'best':
    restored = ckpts.restore_best(abstract)
  elif checkpoint == 'latest':
    restored = ckpts.restore_latest(abstract)
  else:
    restored = ckpts.restore_latest(abstract, step=int(checkpoint))
  ckpts.close()
  if restored is None:
    raise FileNotFoundError(f'no {checkpoint!r} checkpoint under {workdir}/checkpoints')
  state = train._from_state_dict(trainer.state, restored[0])
  builder = trainer.builder
  if data_dir or dataset:
    ds_cfg = config.dataset.copy_and_resolve_references()
    with ds_cfg.unlocked():
      if data_dir:
        ds_cfg.data_dir = data_dir
      if dataset:
        ds_cfg.name = dataset
    builder = input_pipeline.get_builder(ds_cfg)
  result = trainer.evaluate(state, split, builder=builder)
  result.update(checkpoint_step=int(state.step), split=split, dataset=builder.info.full_name,
                data_dir=str(builder.data_dir), label_names=trainer.label_names)
  name = f'eval_{builder.name}_{split}_{checkpoint}.json'.replace('/', '_')
  if trainer.is_main:
    with open(os.path.join(workdir, name), 'w') as f:
      json.dump(result, f, indent=2)
    print(metrics_lib.format_table({split: result}))
  logging.info('wrote %s', os.path.join(workdir, name))
  return result
