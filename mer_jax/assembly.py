"""One way to assemble a run: `build_run(config)` and one checkpoint `restore`.

Training, evaluation, profiling, the benchmark, inference and the tests all call
these, so a model, its loss, the optimiser, the train state and the jitted
data-parallel steps are put together in exactly one place:

    run = build_run(config, steps_per_epoch=..., total_steps=..., init_batch=...)
    state, metrics = run.train_step(run.state, placed_batch)
    out = run.eval_step()(state, placed_batch)          # clean evaluation
    out = run.eval_step(corrupt={...})(state, batch)     # robustness, compiled once per setting
    state, meta = restore(run, workdir, 'best')

Input shapes come from the dataset's builder (`example_shapes`), so a config
can never describe inputs its dataset does not produce.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from mer_jax import checkpointing, config_lib, contract as bc, corruption, models, optim, sharding

_CONTRACT_INPUTS = bc.MODALITIES


class TrainState(train_state.TrainState):
  batch_stats: Any = None
  rng: jax.Array = None
  ema_params: Any = None  # the weights' moving average (config.optim.ema_decay > 0)


def state_dict(state: TrainState) -> dict:
  """The arrays a checkpoint holds (functions and optimiser object excluded)."""
  d = {'step': state.step, 'params': state.params, 'batch_stats': state.batch_stats,
       'opt_state': state.opt_state, 'rng': state.rng}
  if state.ema_params is not None:
    d['ema_params'] = state.ema_params
  return d


def from_state_dict(state: TrainState, d: dict) -> TrainState:
  return state.replace(step=d['step'], params=d['params'], batch_stats=d['batch_stats'],
                       opt_state=d['opt_state'], rng=d['rng'],
                       ema_params=d.get('ema_params'))


def eval_variables(state: TrainState) -> dict:
  """The variables evaluation, inference and warm starts use: the weights' moving
  average where the run keeps one."""
  params = state.params if state.ema_params is None else state.ema_params
  return {'params': params, 'batch_stats': state.batch_stats}


def update_ema(ema, params, step, decay: float):
  """One step of the weights' moving average; the decay ramps up as (1 + t) / (10 + t)
  so the first, random weights are forgotten within a short run."""
  step = jnp.asarray(step, jnp.float32)
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


# --- Input shapes ---------------------------------------------------------------

def builder_shapes(dataset_name: str) -> dict:
  """Per-example shapes of the contract's inputs as the builder declares them
  (no data needed: TFDS knows a builder's features before it is built)."""
  import tensorflow_datasets as tfds
  import data_pipelines.registry  # noqa: F401  (registers the builders)
  features = tfds.builder(dataset_name, data_dir=os.path.join(
      os.path.expanduser('~'), '.cache', 'mer_jax_shapes')).info.features
  return {k: tuple(int(d) for d in features[k].shape) for k in _CONTRACT_INPUTS
          if k in features.keys()}


def example_shapes(config) -> dict:
  """The inputs a run's model sees: the builder's shapes, or `config.input.example_shapes`
  for a benchmark setting with no dataset; where both exist they must agree."""
  explicit = {k: tuple(v) for k, v in dict(config.input.example_shapes).items()}
  try:
    declared = builder_shapes(config.dataset.name)
  except Exception as e:  # an unknown dataset name
    if not explicit:
      raise ValueError(f'no input shapes: dataset {config.dataset.name!r} is unknown ({e}) '
                       'and config.input.example_shapes is empty') from e
    return explicit
  for k, shape in explicit.items():
    if k in declared and declared[k] != shape:
      raise ValueError(f'config.input.example_shapes[{k!r}]={shape} disagrees with the '
                       f'builder {config.dataset.name}: {declared[k]}')
  return {**declared, **explicit}


def example_batch(config, batch_size: int, random: bool = False, seed: int = 0) -> dict:
  """A batch of the run's input shapes: zeros, or random values (benchmarks)."""
  rng = np.random.default_rng(seed)
  batch = {}
  for name, shape in example_shapes(config).items():
    video = name == 'video' and len(shape) == 4
    dtype = np.uint8 if video else np.float32
    if not random:
      batch[name] = np.zeros((batch_size,) + tuple(shape), dtype)
    elif video:
      batch[name] = rng.integers(0, 256, (batch_size,) + tuple(shape), dtype=np.uint8)
    else:
      batch[name] = rng.normal(size=(batch_size,) + tuple(shape)).astype(np.float32)
    if len(shape) >= 2:
      batch[f'{name}_valid'] = np.ones((batch_size, shape[0]), np.float32)
  labels = rng.integers(0, config.dataset.num_classes, (batch_size,)) if random else \
      np.zeros((batch_size,))
  batch['label'] = labels.astype(np.int32)
  batch['mask'] = bc.presence_mask(batch.keys(), batch_size)
  batch['valid'] = np.ones((batch_size,), np.float32)
  return batch


# --- Steps ------------------------------------------------------------------------

def _train_loss(state: TrainState, params, batch: dict, loss_fn: Callable, loss_config):
  """The train step's forward: train-mode outputs and loss, with this step's rngs."""
  step_rng = jax.random.fold_in(state.rng, state.step)
  dropout_rng, noise_rng = jax.random.split(step_rng)
  outputs, updates = state.apply_fn(
      {'params': params, 'batch_stats': state.batch_stats}, batch, train=True,
      rngs={'dropout': dropout_rng, 'noise': noise_rng}, mutable=['batch_stats'])
  loss, aux = loss_fn(outputs, batch, loss_config)
  return loss, (aux, updates, outputs['logits'])


def make_train_step(loss_fn: Callable, loss_config, masked: tuple, schedule,
                    ema_decay: float = 0.0):
  def train_step(state: TrainState, batch: dict):
    batch = bc.mask_modalities(batch, masked)
    (loss, (aux, updates, logits)), grads = jax.value_and_grad(
        lambda p: _train_loss(state, p, batch, loss_fn, loss_config), has_aux=True)(
            state.params)
    new_state = state.apply_gradients(grads=grads,
                                      batch_stats=updates.get('batch_stats', state.batch_stats))
    if ema_decay > 0:
      new_state = new_state.replace(
          ema_params=update_ema(state.ema_params, new_state.params, state.step, ema_decay))
    acc = jnp.mean((jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32))
    out = {'loss': loss, 'accuracy': acc, 'grad_norm': optax.global_norm(grads),
           'learning_rate': schedule(state.step)}
    out.update(aux)
    return new_state, out
  return train_step


def make_train_forward(loss_fn: Callable, loss_config, masked: tuple):
  """The train step's forward pass alone (loss, no gradients): the denominator of
  the profile's backward/forward ratio."""
  def train_forward(state: TrainState, batch: dict):
    batch = bc.mask_modalities(batch, masked)
    return _train_loss(state, state.params, batch, loss_fn, loss_config)[0]
  return train_forward


def make_eval_step(loss_fn: Callable, loss_config, masked: tuple, num_classes: int,
                   corrupt: Optional[dict] = None):
  """Confusion matrix, loss sum and example count of a batch (padding excluded)."""
  def eval_step(state: TrainState, batch: dict):
    batch = bc.mask_modalities(batch, masked)
    batch = corruption.apply(batch, corrupt)  # robustness evaluators only
    outputs = state.apply_fn(eval_variables(state), batch, train=False)
    logits = outputs['logits']
    valid = batch['valid']
    preds = jnp.argmax(logits, -1)
    cm = jnp.einsum('bi,bj->ij', jax.nn.one_hot(batch['label'], num_classes) * valid[:, None],
                    jax.nn.one_hot(preds, num_classes))
    loss, _ = loss_fn(outputs, batch, loss_config)
    return {'confusion': cm, 'loss_sum': loss * jnp.sum(valid), 'count': jnp.sum(valid)}
  return eval_step


# --- The run --------------------------------------------------------------------

@dataclasses.dataclass
class Run:
  """Everything a config assembles; nothing here reads data."""
  config: Any
  mesh: Any
  model: nn.Module
  loss_fn: Callable
  tx: Any
  schedule: Callable
  state: TrainState
  train_step: Callable
  num_classes: int
  masked: tuple
  steps_per_epoch: int
  total_steps: int
  _eval_steps: dict = dataclasses.field(default_factory=dict)

  def eval_step(self, corrupt: Optional[dict] = None) -> Callable:
    """The jitted eval step, with `corrupt` settings (robustness) or the config's own.
    Each distinct setting compiles once."""
    settings = corruption.settings(corrupt if corrupt is not None else
                                   self.config.get('corrupt'))
    key = json.dumps(settings, sort_keys=True)
    if key not in self._eval_steps:
      repl, data = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
      self._eval_steps[key] = jax.jit(
          make_eval_step(self.loss_fn, self.config.loss, self.masked, self.num_classes,
                         settings), in_shardings=(repl, data), out_shardings=repl)
    return self._eval_steps[key]

  def train_forward(self) -> Callable:
    """The jitted train-mode forward pass and loss (no gradients, no update)."""
    repl, data = sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)
    return jax.jit(make_train_forward(self.loss_fn, self.config.loss, self.masked),
                   in_shardings=(repl, data), out_shardings=repl)

  def param_count(self) -> int:
    return int(sum(x.size for x in jax.tree.leaves(self.state.params)))

  def abstract_state(self):
    return checkpointing.abstract_of(state_dict(self.state))


# XLA options for computations that run once or twice (init, the preset check's steps):
# about half the compile time. Forward passes give the same numbers; gradients can differ
# at level 0 (backward_profile.md §7), so training never compiles with these.
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def _one_example(batch: dict) -> dict:
  """The first example of a batch's numeric features: all an init needs is shapes."""
  return {k: np.asarray(v)[:1] for k, v in batch.items() if np.asarray(v).dtype.kind in 'biuf'}


def init_variables(config, model: nn.Module, init_batch: dict, rng,
                   pretrained: bool = True) -> dict:
  """Model variables from a batch's shapes, then any pretrained weights (config.model_init)."""
  small = _one_example(init_batch)
  # One compiled init instead of one compilation per initialiser op (2-3x faster), with
  # XLA's backend optimisation off: it runs once, so compiling it fast matters more.
  init_fn = jax.jit(lambda r, b: model.init({'params': r, 'dropout': r}, b, train=False))
  if isinstance(rng, jax.core.Tracer):  # under eval_shape (abstract states)
    variables = init_fn(rng, small)
  else:
    variables = init_fn.lower(rng, small).compile(compiler_options=FAST_COMPILE)(rng, small)
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  return _pretrained(config, variables) if pretrained else variables


def _pretrained(config, variables: dict) -> dict:
  init = config.get('model_init')
  if init is not None and (init.get('kind') or init.get('sources')):
    from mer_jax import pretrained
    variables = pretrained.apply_init(init, variables)
  return variables


def host_variables(config, model: nn.Module, init_batch: dict, seed: int = 0) -> dict:
  """Variables of the model's shapes with values drawn by numpy, not by the model's
  initialisers: nothing is compiled (a paper model's init compiles for 5-20 s). For
  checks that run a step once on whatever values: kernels N(0, 1/fan_in), scales and
  variances 1, everything else 0; then any pretrained weights."""
  small = _one_example(init_batch)
  key = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(
      lambda b: model.init({'params': key, 'dropout': key}, b, train=False), small)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(getattr(path[-1], 'key', path[-1]))
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      return np.zeros(leaf.shape, leaf.dtype)
    if name in ('scale', 'var') or name.endswith('_scale'):
      return np.ones(leaf.shape, leaf.dtype)
    if len(leaf.shape) < 2:
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

  variables = jax.tree_util.tree_map_with_path(fill, shapes)
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  return _pretrained(config, variables)


def create_train_state(config, model: nn.Module, init_batch: dict, tx, mesh,
                       pretrained: bool = True, variables: Optional[dict] = None) -> TrainState:
  """Initialises the train state, replicated over the mesh (from `variables` when given)."""
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  if variables is None:
    variables = init_variables(config, model, init_batch, init_rng, pretrained)

  ema = config.optim.get('ema_decay', 0.0) > 0

  def create(variables):
    return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                             batch_stats=variables['batch_stats'], rng=state_rng,
                             # a copy: params and their average are donated apart
                             ema_params=jax.tree.map(jnp.copy, variables['params'])
                             if ema else None)

  return jax.jit(create, out_shardings=sharding.replicated(mesh))(variables)


def build_run(config, mesh=None, *, steps_per_epoch: int = 100, total_steps: int = 10_000,
              init_batch: Optional[dict] = None, abstract: bool = False,
              init: str = 'model') -> Run:
  """Model, loss, optimiser, replicated state and jitted steps of `config` on `mesh`.

  `abstract`: the state holds shapes only (nothing is initialised), for lowering
  paper-size steps to count their FLOPs. `init`: 'model' (the model's initialisers)
  or 'host' (values drawn by numpy, see `host_variables`).
  """
  if init not in ('model', 'host'):
    raise ValueError(f"init must be 'model' or 'host', not {init!r}")
  mesh = mesh if mesh is not None else sharding.make_mesh()
  num_classes = config.dataset.num_classes
  entry = models.get(config.model.name)
  model = models.build(config.model, num_classes)
  tx, schedule = optim.make_optimizer(config.optim, steps_per_epoch, total_steps)
  if init_batch is None:
    init_batch = example_batch(config, 1)
  if abstract:
    state = jax.eval_shape(lambda: create_train_state(config, model, init_batch, tx, mesh,
                                                      pretrained=False))
  else:
    variables = host_variables(config, model, init_batch, config.seed) \
        if init == 'host' else None
    state = create_train_state(config, model, init_batch, tx, mesh, variables=variables)
  masked = config_lib.parse_modalities(config.get('mask_modalities', ''))
  repl, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  train_step = jax.jit(make_train_step(entry.loss_fn, config.loss, masked, schedule,
                                       config.optim.get('ema_decay', 0.0)),
                       in_shardings=(repl, data), out_shardings=(repl, repl),
                       donate_argnums=(0,))
  return Run(config=config, mesh=mesh, model=model, loss_fn=entry.loss_fn, tx=tx,
             schedule=schedule, state=state, train_step=train_step, num_classes=num_classes,
             masked=masked, steps_per_epoch=steps_per_epoch, total_steps=total_steps)


# --- Checkpoints ----------------------------------------------------------------

def restore(run: Run, workdir: str, checkpoint: str = 'best'):
  """(state, meta) of the 'best', 'latest' or numbered checkpoint of `workdir`.

  'best' falls back to 'latest' when validation never ran. Raises
  FileNotFoundError naming what was looked for and what exists.
  """
  ckpts = checkpointing.Checkpoints(workdir)
  abstract = run.abstract_state()
  try:
    steps = ckpts.all_steps()
    if checkpoint == 'best':
      restored = ckpts.restore_best(abstract) or ckpts.restore_latest(abstract)
    elif checkpoint == 'latest':
      restored = ckpts.restore_latest(abstract)
    else:
      step = int(checkpoint)
      if step in steps['latest']:
        restored = ckpts.restore_latest(abstract, step=step)
      elif step in steps['best']:
        restored = ckpts.restore_best(abstract, step=step)
      else:
        raise FileNotFoundError(f'no checkpoint at step {step} under {workdir}/checkpoints; '
                                f'saved: {steps}')
  finally:
    ckpts.close()
  if restored is None:
    raise FileNotFoundError(f'no {checkpoint!r} checkpoint under {workdir}/checkpoints')
  return from_state_dict(run.state, restored[0]), restored[1]


def load_config(workdir: str):
  """The config a training directory was run with (its config.json)."""
  import ml_collections
  with open(os.path.join(workdir, 'config.json')) as f:
    return ml_collections.ConfigDict(json.load(f))


def restore_run(workdir: str, checkpoint: str = 'best', config=None):
  """(run, state, meta) of a training directory without its dataset: the run is
  assembled from the saved config (shapes from its builder), then restored."""
  config = (config if config is not None else load_config(workdir)).copy_and_resolve_references()
  if config.get('model_init') is not None:  # the checkpoint already holds the weights
    with config.unlocked():
      config.model_init.kind = ''
      config.model_init.sources = ()
  run = build_run(config)
  state, meta = restore(run, workdir, checkpoint)
  return run, state, meta
