"""Optimisers and learning-rate schedules from config."""

from __future__ import annotations

import jax
import optax


def make_schedule(cfg, steps_per_epoch: int, total_steps: int):
  """Learning rate per step.

  cfg.schedule: 'constant' | 'cosine' | 'step' (x decay_rate at decay_start_epoch
  and every decay_epochs after it, as ATTSF-Net's recipe; decay_start_epoch < 0
  means after the first decay_epochs); cfg.warmup_epochs adds a linear warm-up in
  front of any of them. Every field is in config_lib.base_config.
  """
  lr = cfg.learning_rate
  warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
  kind = cfg.schedule
  if kind == 'constant':
    main = optax.constant_schedule(lr)
  elif kind == 'cosine':
    main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1),
                                       alpha=cfg.final_lr_fraction)
  elif kind == 'step':
    every = max(int(round(cfg.decay_epochs * steps_per_epoch)), 1)
    # First decay at decay_start_epoch (< 0: after decay_epochs), then every decay_epochs.
    start = cfg.decay_start_epoch if cfg.decay_start_epoch >= 0 else cfg.decay_epochs
    first = int(round(start * steps_per_epoch))
    rate = cfg.decay_rate

    def main(step):
      import jax.numpy as jnp
      n = jnp.where(step >= first, (step - first) // every + 1, 0)
      return lr * rate ** n
  else:
    raise ValueError(f'unknown schedule {kind!r}')
  if warmup:
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])
  return main


def make_optimizer(cfg, steps_per_epoch: int, total_steps: int):
  """Returns (optax transform, schedule).

  weight_decay: decoupled for 'adamw'; for 'adam' and 'sgd' an L2 term added
  to the gradients, as PyTorch's `weight_decay` argument does.
  """
  schedule = make_schedule(cfg, steps_per_epoch, total_steps)
  name = cfg.optimizer
  wd = cfg.weight_decay
  parts = []
  if cfg.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  if name == 'adamw':
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2,
                             weight_decay=wd))
  elif name in ('adam', 'sgd'):
    if wd:
      parts.append(optax.add_decayed_weights(wd))
    if name == 'adam':
      parts.append(optax.adam(schedule, b1=cfg.b1, b2=cfg.b2))
    else:
      parts.append(optax.sgd(schedule, momentum=cfg.momentum or None,
                             nesterov=cfg.nesterov))
  else:
    raise ValueError(f'unknown optimizer {name!r} (adam, adamw, sgd)')
  multipliers = parse_lr_multipliers(cfg.get('lr_multipliers', ''))
  if multipliers:
    parts.append(scale_by_module(multipliers))
  return optax.chain(*parts), schedule


def parse_lr_multipliers(spec: str) -> dict:
  """'audio_stats_classifier=10,face_cnn=0.1' -> {name: factor}."""
  out = {}
  for item in filter(None, (p.strip() for p in spec.split(','))):
    name, sep, value = item.partition('=')
    if not sep or not name.strip():
      raise ValueError(f"lr_multipliers: expected 'module=factor', got {item!r} in {spec!r}")
    out[name.strip()] = float(value)
  return out


def scale_by_module(multipliers: dict) -> optax.GradientTransformation:
  """Multiplies the updates of each named top-level module (its learning rate and,
  for adamw, its decay); a name that matches no module is an error at init."""

  def top(path):
    return getattr(path[0], 'key', str(path[0]))

  def init_fn(params):
    missing = set(multipliers) - {top(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)}
    if missing:
      raise ValueError(f'lr_multipliers name modules the model does not have: {sorted(missing)}')
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(
        lambda p, u: u * multipliers.get(top(p), 1.0), updates), state

  return optax.GradientTransformation(init_fn, update_fn)
