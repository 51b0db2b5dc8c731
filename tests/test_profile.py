"""Profile mode: compile time, XLA cost and memory analysis, step times for a tiny config."""

from __future__ import annotations

import pytest


def test_profile_tiny_config():
  from configs import avt_ca
  from mer_jax import profiling
  cfg = avt_ca.get_config('tiny')
  rows = profiling.profile_config(cfg, batch_size=4, repeats=2)
  assert [r['step'] for r in rows] == ['train', 'eval']
  for r in rows:
    assert r['flops'] > 0 and r['bytes_accessed'] > 0
    assert r['step_s_median'] > 0 and r['step_s_min'] <= r['step_s_median'] <= r['step_s_max']
    assert r['samples_per_s'] > 0 and r['flops_per_s'] > 0 and r['compile_s'] > 0
    assert r['argument_size_in_bytes'] > 0
  assert rows[0]['flops'] > rows[1]['flops']  # the backward pass costs more than the forward
  table = profiling.format_table(rows)
  assert '| avt_ca | train | 4 |' in table and 'FLOP/s' in table
  # The train row times the step's forward alone; the ratio is step over that forward.
  assert rows[0]['fwd_s_median'] > 0
  assert abs(rows[0]['step_over_fwd'] - rows[0]['step_s_median'] / rows[0]['fwd_s_median']) < 1e-9
  assert 'step_over_fwd' not in rows[1]

  # Two saved runs side by side: matched per step, the ratio of their medians.
  slower = [dict(r, step_s_median=2 * r['step_s_median']) for r in rows]
  cmp = profiling.format_comparison(rows, slower, ('a', 'b'))
  assert cmp.count('| avt_ca |') == 2 and '| 2.00 |' in cmp


def test_train_forward_is_the_train_steps_loss():
  """The profile's forward is the train step's own: same loss for the same state and batch."""
  import jax
  import numpy as np
  from configs import avt_ca
  from mer_jax import assembly, sharding
  cfg = avt_ca.get_config('tiny')
  run = assembly.build_run(cfg)
  batch = sharding.place_batch(assembly.example_batch(cfg, 4, random=True), run.mesh)
  fwd_loss = float(run.train_forward()(run.state, batch))
  _, out = run.train_step(run.state, batch)
  np.testing.assert_allclose(fwd_loss, float(jax.device_get(out['loss'])), rtol=1e-6)


def _rss_bytes() -> int:
  with open('/proc/self/status') as f:
    return next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmRSS'))


def test_release_freed_memory_returns_freed_heap_pages():
  """What XLA's compiler leaves behind: freed heap chunks that stay resident until
  malloc_trim hands them back (the last chunk pins the heap, as live data would)."""
  import ctypes
  import sys
  import pytest
  from mer_jax import contract
  if not sys.platform.startswith('linux'):
    pytest.skip('glibc only')
  libc = ctypes.CDLL('libc.so.6')
  libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
  libc.free.argtypes = [ctypes.c_void_p]
  n, size = 2000, 64 * 1024  # 125 MiB in chunks under glibc's mmap threshold
  ptrs = [libc.malloc(size) for _ in range(n)]
  for p in ptrs:
    ctypes.memset(p, 1, size)
  for p in ptrs[:-1]:
    libc.free(p)
  before = _rss_bytes()
  assert contract.release_freed_memory()
  after = _rss_bytes()
  libc.free(ptrs[-1])
  assert before - after > n * size // 2, (before, after)


@pytest.mark.slow  # a traced compile of the whole model (40 s on 2 cores)
def test_trace_top_groups_remat_blocks_by_module():
  """The per-module totals of a traced step name the frame encoder's blocks, with the
  forward a rematerialised block recomputes in its backward apart from that backward."""
  import re
  from configs import avt_ca
  from experiments import backward_profile
  cfg = avt_ca.get_config('tiny')
  cfg.model.impl, cfg.model.remat = 'matmul', True
  out = backward_profile.trace_top(cfg, 2, top=500, depth=2)
  rows = re.findall(r'^\| (fwd|bwd|remat fwd) ([^|]*) \| ([\d.]+) \|', out, re.M)
  groups = {(kind, path.strip()) for kind, path, _ in rows}
  assert ('remat fwd', 'frame_encoder/InvertedResidual_0') in groups, out
  assert ('bwd', 'frame_encoder/InvertedResidual_0') in groups, out
  assert ('fwd', 'frame_encoder/InvertedResidual_0') in groups, out
  # The backward's repeated outer path is said once.
  assert not any('frame_encoder/frame_encoder' in p or 'AVTCA' in p for _, p in groups), out
