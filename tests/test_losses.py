"""Losses of papers 000 (InfoNCE, AWOM entropy), 003 (KL similarity) and 004."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mer_jax import losses
from mer_jax.models import attsf_net, mmt_ca, ofcmaer_cat


def _full_cov_kl(mu1, var1, mu2, var2):
  """KL between Gaussians from the general closed form with full covariances."""
  s1, s2 = np.diag(var1), np.diag(var2)
  s2_inv = np.linalg.inv(s2)
  d = mu2 - mu1
  k = len(mu1)
  return 0.5 * (np.trace(s2_inv @ s1) + d @ s2_inv @ d - k
                + np.log(np.linalg.det(s2) / np.linalg.det(s1)))


def test_gaussian_kl_equals_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
  var1, var2 = rng.uniform(0.2, 2, 5), rng.uniform(0.2, 2, 5)
  got = float(losses.gaussian_kl(jnp.asarray(mu1), jnp.asarray(var1), jnp.asarray(mu2),
                                 jnp.asarray(var2), eps=0.0))
  np.testing.assert_allclose(got, _full_cov_kl(mu1, var1, mu2, var2), rtol=1e-5)
  sym = float(losses.symmetric_gaussian_kl(*(jnp.asarray(x) for x in (mu1, var1, mu2, var2))))
  want = _full_cov_kl(mu1, var1, mu2, var2) + _full_cov_kl(mu2, var2, mu1, var1)
  np.testing.assert_allclose(sym, want, rtol=1e-4)


def test_kl_similarity_loss_matches_manual():
  rng = np.random.default_rng(1)
  learn, a2v, v2a = (rng.standard_normal((3, 8)).astype(np.float32) for _ in range(3))
  for mode in ('feature', 'batch'):
    got = np.asarray(losses.kl_similarity_loss(learn, a2v, v2a, mode))
    axis = -1 if mode == 'feature' else 0
    stats = lambda x: (x.mean(axis, keepdims=True), x.var(axis, keepdims=True))
    want = []
    for b in range(3):
      pick = (lambda s: s[b]) if mode == 'feature' else (lambda s: s[0])
      ml, vl = (pick(s) for s in stats(learn))
      terms = []
      for other in (a2v, v2a):
        mo, vo = (pick(s) for s in stats(other))
        terms.append(_full_cov_kl(ml, vl, mo, vo) + _full_cov_kl(mo, vo, ml, vl))
      want.append(0.5 * sum(terms))
    np.testing.assert_allclose(got, want, rtol=1e-3)
  # Identical distributions: zero loss.
  np.testing.assert_allclose(losses.kl_similarity_loss(learn, learn, learn), 0.0, atol=1e-5)


def test_info_nce_equals_numpy():
  rng = np.random.default_rng(2)
  a, p = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
  w = np.array([1, 1, 1, 1, 0, 1], np.float32)
  tau = 0.2
  got = np.asarray(losses.info_nce(jnp.asarray(a, jnp.float32), jnp.asarray(p, jnp.float32),
                                   jnp.asarray(w), tau))
  an = a / np.linalg.norm(a, axis=1, keepdims=True)
  pn = p / np.linalg.norm(p, axis=1, keepdims=True)
  for n in range(6):
    if not w[n]:
      continue
    num = np.exp(an[n] @ pn[n] / tau)  # L_A (Eq. 15)
    den = sum(np.exp(an[n] @ pn[q] / tau) for q in range(6) if w[q])  # L_B (Eq. 16)
    np.testing.assert_allclose(got[n], -np.log(num / den), rtol=1e-4)


def test_multimodal_info_nce_averages_directions():
  rng = np.random.default_rng(3)
  pooled = jnp.asarray(rng.standard_normal((5, 2, 4)), jnp.float32)
  mask, valid = jnp.ones((5, 2)), jnp.ones((5,))
  got = losses.multimodal_info_nce(pooled, mask, valid, 0.5)
  ab = losses.info_nce(pooled[:, 0], pooled[:, 1], valid, 0.5).mean()
  ba = losses.info_nce(pooled[:, 1], pooled[:, 0], valid, 0.5).mean()
  np.testing.assert_allclose(got, 0.5 * (ab + ba), rtol=1e-5)


def test_awom_masked_modality_gets_zero_weight():
  scores = jnp.asarray([[0.3, -1.0, 2.0], [1.0, 1.0, 1.0], [5.0, 0.0, -5.0]])
  mask = jnp.asarray([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
  w = np.asarray(ofcmaer_cat.awom_weights(scores, mask))
  assert np.all(w[np.asarray(mask) == 0] == 0.0)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
  np.testing.assert_allclose(w[1], 1 / 3, atol=1e-6)
  # Among present modalities the softmax ratios are kept.
  np.testing.assert_allclose(w[0, 0] / w[0, 2], np.exp(0.3 - 2.0), rtol=1e-5)


def test_entropy_sign_is_explicit():
  outputs = {'logits': jnp.zeros((2, 3)), 'modality_mask': jnp.ones((2, 2)),
             'pooled_embeddings': jnp.ones((2, 2, 4)), 'reconstructions': jnp.ones((2, 2, 4)),
             'modality_weights': jnp.full((2, 2), 0.5)}
  batch = {'label': jnp.zeros((2,), jnp.int32), 'valid': jnp.ones((2,))}
  cfg = lambda sign: ml_collections.ConfigDict(dict(lambda1=0.0, lambda2=0.0, lambda3=0.0,
                                                    lambda4=1.0, entropy_sign=sign))
  lo, aux = ofcmaer_cat.loss(outputs, batch, cfg(-1.0))
  hi, _ = ofcmaer_cat.loss(outputs, batch, cfg(1.0))
  np.testing.assert_allclose(aux['R_ent'], np.log(2), rtol=1e-5)
  np.testing.assert_allclose(lo, -np.log(2), rtol=1e-5)
  np.testing.assert_allclose(hi, np.log(2), rtol=1e-5)


def test_attsf_loss_weights_as_named():
  rng = np.random.default_rng(4)
  outputs = {k: jnp.asarray(rng.standard_normal((4, 3)), jnp.float32)
             for k in ('logits', 'audio_aux_logits', 'video_aux_logits')}
  outputs.update({k: jnp.asarray(rng.standard_normal((4, 8)), jnp.float32)
                  for k in ('sab_token', 'pooled_a2v', 'pooled_v2a')})
  batch = {'label': jnp.asarray([0, 1, 2, 1]), 'valid': jnp.ones((4,)), 'mask': jnp.ones((4, 4))}
  cfg = ml_collections.ConfigDict(dict(lambda_a=0.5, lambda_v=0.5, lambda_sim=0.3,
                                       sim_stats='feature'))
  total, aux = attsf_net.loss(outputs, batch, cfg)
  want = aux['L_av'] + 0.5 * aux['L_a'] + 0.5 * aux['L_v'] + 0.3 * aux['L_sim']
  np.testing.assert_allclose(total, want, rtol=1e-6)
  ce = lambda lg: float(jnp.mean(-jax.nn.log_softmax(lg)[jnp.arange(4), batch['label']]))
  np.testing.assert_allclose(aux['L_a'], ce(outputs['audio_aux_logits']), rtol=1e-5)


def test_mmt_ca_loss_skips_absent_modality():
  logits = jnp.asarray(np.random.default_rng(5).standard_normal((2, 3)), jnp.float32)
  outputs = {'logits': logits, 'audio_logits': logits, 'face_logits': logits * 3}
  batch = {'label': jnp.asarray([0, 1]), 'valid': jnp.ones((2,)),
           'mask': jnp.asarray([[1.0, 0.0, 0, 0], [1.0, 0.0, 0, 0]])}
  cfg = ml_collections.ConfigDict(dict(unimodal_weight=0.5))
  total, aux = mmt_ca.loss(outputs, batch, cfg)
  assert float(aux['ce_video']) == 0.0
  np.testing.assert_allclose(total, aux['ce'] * 1.5, rtol=1e-6)
