"""OF-CMAER-CAT: optimised-fusion cross-modal architecture with CNN, attention and
transformer (paper 000).

Which modalities take part is the `modalities` field: ('audio', 'video') or with
a third stream, 'physio' (DEAP windows) or 'text' (word features).

Encoders (Eq. 1): a CNN per modality, F_i [B, T_i, d]. Sequences [B, T, F]
(audio, text, physio, pre-extracted video features) go through Conv1D -> BN ->
ReLU -> MaxPool blocks; face frames u8 [B, T, H, W, 3] through a per-frame 2-D
CNN. Pooled f_i = mean_t F_i.

CMAA (Eqs. 2-7): Attn_{i<-j} = MHA(Q = F_i, K = V = F_j) per ordered pair;
partner weights alpha_ij = softmax_{j != i}(f_i^T W_phi f_j) over the partners
present (with two modalities each has one partner, alpha = 1 and W_phi gets
no gradient: the bilinear compatibility only matters from three modalities); F~_i = sum_j alpha_ij Attn_{i<-j}; gated residual
F^a_i = LN(F_i + sigmoid(G_i) * F~_i) with G_i = MLP([F_i, F~_i]) per step (the
paper does not say what the gate MLP sees).

AWOM (Eqs. 8-11): s_i = MLP_w([mean_t F^a_i, var_t F^a_i]) (one MLP shared by
the modalities), w = softmax(s), w~_i = m_i w_i / (sum_k m_k w_k + eps): a
missing modality gets exactly zero weight.

Transformer contextual block: the aligned sequences of all modalities, each
scaled by its AWOM weight w~_i ("the adaptively weighted and contrastively
aligned features are input into a Transformer-based contextual modeling
block", Section III overview), with a learned modality embedding each,
concatenated in time; `num_layers`
transformer layers with missing modalities masked out of the keys;
h = sum_i w~_i Pool(segment_i).

Heads (`head`): 'projection' (Eqs. 12-13: ReLU(W_p h + b) -> classifier) or
'concat' (Eqs. 20-22: z_1 (+) ... (+) z_M with z_i = w~_i Pool(segment_i) -> LN ->
FF + ReLU -> dropout -> classifier).

Reconstruction (L_rec, unspecified in the paper): a Dense per modality maps h
back to that modality's pooled encoder embedding f_i. Table 4 ablations switch
off `use_cmaa`, `use_awom` (then w~ = mask / count) and `use_transformer`.

Config switches for the paper's ambiguous points (defaults = the paper's reading):
  transformer_input  'weighted' (w~_i F^a_i enters the transformer, Section III
        overview; h then still sums w~_i Pool(segment_i) as Eq. 11 writes, so the
        weights act on both sides) | 'unweighted' (F^a_i enters the transformer).
  head  'projection' (Eqs. 12-13) | 'concat' (Eqs. 20-22).
  use_cmaa, use_awom, use_transformer  Table 4 ablations.

Padding: `<modality>_valid` ([B, T], 1 = real step). Sequence encoders zero and
mask padded steps through their Conv1D/BN/max-pool blocks (a pooled step is
valid if any step of its window is); every attention masks padded keys (CMAA
reads only the partner's real steps; the transformer's keys are the real steps
of the present modalities); f_i, AWOM's mean and var(F_i) and the segment
pooling count real steps only.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mer_jax import contract as bc
from mer_jax import losses
from mer_jax.models import encoders, layers

Array = jax.Array


def awom_weights(scores: Array, mask: Array) -> Array:
  """Eq. 10: w~ = m w / (sum m w + eps) with w = softmax(scores). [B, M] -> [B, M].

  Computed as a softmax over the present modalities only, which is the same
  quantity with eps -> 0 but stays exact when a present modality's w is tiny
  (the eps form would then leave the weights summing to less than 1). A row
  with no modality present gets all zeros.
  """
  logits = jnp.where(mask > 0, scores, -jnp.inf)
  any_present = mask.sum(-1, keepdims=True) > 0
  logits = jnp.where(any_present, logits, 0.0)
  return jnp.where(mask > 0, jax.nn.softmax(logits, axis=-1), 0.0)


class SequenceCNNEncoder(nn.Module):
  """Conv1D blocks then a Dense to d: [B, T, F], valid [B, T] -> ([B, T', d], valid [B, T'])."""
  channels: Sequence[int]
  d_model: int
  pool: int = 2

  @nn.compact
  def __call__(self, x, train, valid):
    x = encoders.Conv1DAudioEncoder(self.channels, pool=self.pool)(
        x.astype(jnp.float32), train, valid=valid)
    return nn.Dense(self.d_model)(x), encoders.pool_valid(valid, self.pool, len(self.channels))


class OFCMAERCAT(nn.Module):
  num_classes: int
  modalities: Sequence[str] = ('audio', 'video')
  d_model: int = 128
  seq_channels: Sequence[int] = (64, 128)  # Conv1D encoder of sequence modalities
  seq_pool: int = 2
  frame_channels: Sequence[int] = (32, 64, 128)  # 2-D CNN of face frames
  frame_stem_stride: int = 1
  num_heads: int = 4
  num_layers: int = 2
  d_ff_ratio: int = 4
  dropout_rate: float = 0.1
  use_cmaa: bool = True
  use_awom: bool = True
  use_transformer: bool = True
  awom_hidden: int = 64
  head: str = 'projection'  # 'projection' (Eqs. 12-13) | 'concat' (Eqs. 20-22)
  head_hidden: int = 128
  max_len: int = 512
  # What the contextual transformer reads (Section III, overview): 'weighted' =
  # the AWOM-weighted aligned features w~_i F^a_i (the paper), 'unweighted' = F^a_i.
  transformer_input: str = 'weighted'
  impl: str = 'xla'  # 'matmul': the CPU-fast im2col convolutions and max-pool of the face CNN
  remat: bool = False  # recompute the frame encoder's activations in the backward pass
  dtype: str = 'float32'  # compute dtype of the encoders; params and fusion stay float32

  def _encode(self, name, x, train, valid):
    """-> (F_i [B, T_i, d], valid [B, T_i])."""
    if name == 'video' and x.ndim == 5:
      cnn = encoders.frame_encoder_cls(encoders.ConvFrameEncoder, self.remat)(
          self.frame_channels, out_dim=self.d_model, stem_stride=self.frame_stem_stride,
          impl=self.impl, dtype=jnp.dtype(self.dtype), name='video_encoder')
      return encoders.encode_frames(cnn, x, train).astype(jnp.float32), valid
    return SequenceCNNEncoder(self.seq_channels, self.d_model, self.seq_pool,
                              name=f'{name}_encoder')(x, train, valid)

  @nn.compact
  def __call__(self, batch, train: bool = False):
    if self.head not in ('projection', 'concat'):
      raise ValueError(f"head must be 'projection' or 'concat', got {self.head!r}")
    names = tuple(self.modalities)
    d = self.d_model
    drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    if self.transformer_input not in ('weighted', 'unweighted'):
      raise ValueError("transformer_input must be 'weighted' or 'unweighted', "
                       f"got {self.transformer_input!r}")
    mask = jnp.stack([bc.modality_mask(batch, n) for n in names], axis=-1)  # [B, M]

    feats, valids = [], []
    for i, n in enumerate(names):
      f, valid = self._encode(n, batch[n], train, bc.time_valid(batch, n))
      feats.append(f * mask[:, i, None, None])
      valids.append(valid)
    # [B, M, d] over real steps only; 0 if missing
    pooled = jnp.stack([layers.masked_mean(f, v) for f, v in zip(feats, valids)], axis=1)

    # Cross-modal attention alignment with partner weights and gated residual.
    aligned = []
    if self.use_cmaa and len(names) > 1:
      w_phi = self.param('w_phi', nn.initializers.lecun_normal(), (d, d))
      compat = jnp.einsum('bid,de,bje->bij', pooled, w_phi, pooled)  # phi(f_i, f_j)
      for i, ni in enumerate(names):
        partners = [j for j in range(len(names)) if j != i]
        logits = jnp.stack([compat[:, i, j] for j in partners], axis=-1)
        present = jnp.stack([mask[:, j] for j in partners], axis=-1)
        logits = jnp.where(present > 0, logits, -1e9)
        alpha = jax.nn.softmax(logits, axis=-1) * present  # no partner -> all zero
        self.sow('intermediates', f'alpha_{ni}', alpha)
        f_tilde = 0.0
        for k, j in enumerate(partners):
          att, w = layers.MultiHeadAttention(
              self.num_heads, dropout_rate=self.dropout_rate, name=f'cmaa_{ni}_from_{names[j]}')(
                  feats[i], feats[j], train, kv_mask=valids[j], return_weights=True)
          self.sow('intermediates', f'attention_{ni}_from_{names[j]}', w)
          f_tilde = f_tilde + alpha[:, k, None, None] * att
        gate = nn.Dense(d, name=f'gate_{ni}_out')(nn.relu(nn.Dense(d, name=f'gate_{ni}_hidden')(
            jnp.concatenate([feats[i], f_tilde], -1))))
        fa = nn.LayerNorm(name=f'gate_{ni}_ln')(feats[i] + nn.sigmoid(gate) * drop(f_tilde))
        aligned.append(fa * mask[:, i, None, None])
    else:
      aligned = feats

    # Adaptive weight optimisation from [mean, variance] of each aligned sequence.
    if self.use_awom:
      mlp_in = jnp.stack([jnp.concatenate([layers.masked_mean(f, v), layers.masked_var(f, v)], -1)
                          for f, v in zip(aligned, valids)], 1)
      s = nn.Dense(1, name='awom_out')(nn.relu(nn.Dense(self.awom_hidden, name='awom_hidden')(mlp_in)))
      weights = awom_weights(s[..., 0], mask)
    else:
      weights = mask / jnp.maximum(mask.sum(-1, keepdims=True), 1.0)
    self.sow('intermediates', 'modality_weights', weights)

    # Transformer contextual block over all modalities' aligned sequences.
    if self.use_transformer:
      lengths = [f.shape[1] for f in aligned]
      mod_emb = self.param('modality_embedding', nn.initializers.normal(0.02), (len(names), d))
      pos = self.param('positions', nn.initializers.normal(0.02), (self.max_len, d))
      if self.transformer_input == 'weighted':
        inputs = [weights[:, i, None, None] * f for i, f in enumerate(aligned)]
      else:
        inputs = aligned
      x = jnp.concatenate([f + mod_emb[i] + pos[:f.shape[1]] for i, f in enumerate(inputs)], 1)
      # Keys: the real steps of the modalities present.
      key_mask = jnp.concatenate([v * mask[:, i:i + 1] for i, v in enumerate(valids)], 1)
      for layer in range(self.num_layers):
        x = layers.TransformerLayer(self.num_heads, self.d_ff_ratio * d, self.dropout_rate,
                                    name=f'context_{layer}')(x, train, context_mask=key_mask)
      splits = list(np.cumsum(lengths)[:-1])
      segments = jnp.split(x, splits, axis=1)
    else:
      segments = aligned
    seg_pooled = jnp.stack([layers.masked_mean(s, v) for s, v in zip(segments, valids)],
                           axis=1)  # [B, M, d]
    h = jnp.einsum('bm,bmd->bd', weights, seg_pooled)

    if self.head == 'projection':
      z = nn.relu(nn.Dense(self.head_hidden, name='projection')(h))
      logits = nn.Dense(self.num_classes, name='classifier')(drop(z))
    else:
      z = (weights[..., None] * seg_pooled).reshape(h.shape[0], -1)
      z = nn.relu(nn.Dense(self.head_hidden, name='feedforward')(nn.LayerNorm(name='fusion_ln')(z)))
      logits = nn.Dense(self.num_classes, name='classifier')(drop(z))

    recon = jnp.stack([nn.Dense(d, name=f'reconstruct_{n}')(h) for n in names], axis=1)
    return {'logits': logits, 'pooled_embeddings': pooled, 'reconstructions': recon,
            'modality_weights': weights, 'modality_mask': mask}


def loss(outputs, batch, loss_config):
  """OF-CMAER-CAT Eq. 19: l1 CE + l2 L_con + l3 L_rec + l4 * sign * R_ent.

  The weight-decay term l5 ||Theta||^2 is applied by the optimiser (config
  optim.weight_decay). `entropy_sign` = -1 rewards entropy, as the text says
  the term should keep any one modality from dominating; +1 is Eq. 19 as printed.
  """
  valid = losses.valid_weights(batch)
  l_cls, _ = losses.classification_loss(outputs, batch, loss_config)
  mask = outputs['modality_mask']
  pooled = outputs['pooled_embeddings']
  l_con = losses.multimodal_info_nce(pooled, mask, valid, losses.cfg_get(loss_config, 'temperature', 0.1))
  # Reconstruct each present modality's pooled embedding from the fused one.
  err = jnp.mean((outputs['reconstructions'] - jax.lax.stop_gradient(pooled)) ** 2, -1)  # [B, M]
  l_rec = jnp.sum(err * mask * valid[:, None]) / jnp.maximum(jnp.sum(mask * valid[:, None]), 1.0)
  r_ent = losses.weighted_mean(losses.weight_entropy(outputs['modality_weights']), valid)
  total = (losses.cfg_get(loss_config, 'lambda1', 1.0) * l_cls
           + losses.cfg_get(loss_config, 'lambda2', 0.1) * l_con
           + losses.cfg_get(loss_config, 'lambda3', 0.1) * l_rec
           + losses.cfg_get(loss_config, 'lambda4', 0.01) * losses.cfg_get(loss_config, 'entropy_sign', -1.0) * r_ent)
  return total, {'ce': l_cls, 'L_con': l_con, 'L_rec': l_rec, 'R_ent': r_ent, 'total': total}
