"""Profile mode: compile time, XLA cost and memory analysis, step times for a tiny config."""

from __future__ import annotations


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
