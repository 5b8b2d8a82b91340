"""The family's reduction identities hold numerically (float64, independent code paths)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shardwright.kernels import linear as L

from .test_linear_chunk import rel_rms

B, T, H, K, V = 2, 70, 2, 16, 24


def _inputs(seed: int = 0, normalise_k: bool = True):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    k = randn(B, T, H, K)
    k = F.normalize(k, dim=-1) if normalise_k else k * 0.7
    return randn(B, T, H, K), k, randn(B, T, H, V), F.logsigmoid(randn(B, T, H) + 2), torch.sigmoid(randn(B, T, H))


def _same(a, b, tol=1e-12):
    (oa, sa), (ob, sb) = a, b
    assert rel_rms(oa, ob) < tol and rel_rms(sa, sb) < tol, (rel_rms(oa, ob), rel_rms(sa, sb))


def test_gdn2_with_equal_scalar_gates_is_kda():
    q, k, v, _, beta = _inputs()
    g = F.logsigmoid(torch.randn(B, T, H, K, dtype=torch.float64) + 2)
    erase = beta[..., None].expand(B, T, H, K)
    write = beta[..., None].expand(B, T, H, V)
    _same(L.recurrent_gdn2(q, k, v, g, erase, write, output_final_state=True),
          L.recurrent_kda(q, k, v, g, beta, output_final_state=True))
    _same(L.chunk_gdn2(q, k, v, g, erase, write, output_final_state=True, chunk_size=32),
          L.recurrent_kda(q, k, v, g, beta, output_final_state=True))


def test_kda_with_equal_channel_decay_is_gdn():
    q, k, v, g, beta = _inputs()
    g_k = g[..., None].expand(B, T, H, K)
    _same(L.chunk_kda(q, k, v, g_k, beta, output_final_state=True),
          L.recurrent_gated_delta_rule(q, k, v, g, beta, output_final_state=True))


def test_gdn2_with_scalar_decay_and_gates_is_gdn():
    q, k, v, g, beta = _inputs()
    _same(L.chunk_gdn2(q, k, v, g[..., None].expand(B, T, H, K), beta[..., None].expand(B, T, H, K),
                       beta[..., None].expand(B, T, H, V), output_final_state=True),
          L.recurrent_gated_delta_rule(q, k, v, g, beta, output_final_state=True))


def test_kla_is_gdn_on_rescaled_keys_and_values():
    """KLA(k, v, eta) == GDN(k/||k||, v/||k||, beta' = eta ||k||^2 / (||k||^2 + eps))."""
    q, k, v, g, eta = _inputs(normalise_k=False)
    eps = 1e-3  # large enough that dropping it would show
    norm2 = k.pow(2).sum(-1)
    n = norm2.sqrt()[..., None]
    _same(L.chunk_kla(q, k, v, g, eta, eps=eps, output_final_state=True),
          L.recurrent_gated_delta_rule(q, k / n, v / n, g, eta * norm2 / (norm2 + eps), output_final_state=True))


def kla_vs_gdn_on_unit_keys(eps: float = 1e-6, seed: int = 0) -> dict:
    """Relative RMS difference between KLA(eta) and GDN(beta = eta) (float64, T = 70):
    on L2-normalised keys, and on keys of norm ~2.8 for contrast (docs/kernels-linear.md)."""
    out = {}
    for label, unit in (("unit keys", True), ("raw keys", False)):
        q, k, v, g, eta = _inputs(seed, normalise_k=unit)
        o_kla, s_kla = L.chunk_kla(q, k, v, g, eta, eps=eps, output_final_state=True)
        o_gdn, s_gdn = L.chunk_gated_delta_rule(q, k, v, g, eta, output_final_state=True)
        out[label] = (rel_rms(o_kla, o_gdn), rel_rms(s_kla, s_gdn))
    return out


def test_kla_changes_little_on_unit_keys():
    eps = 1e-6
    k = F.normalize(torch.randn(B, T, H, K, dtype=torch.float64), dim=-1)
    eta = torch.rand(B, T, H, dtype=torch.float64)
    assert torch.allclose(L.kla_beta(k, eta, eps), eta / (1 + eps), rtol=1e-14)
    diff = kla_vs_gdn_on_unit_keys(eps)
    o_unit, s_unit = diff["unit keys"]
    assert o_unit < 10 * eps and s_unit < 10 * eps  # only the eps/(1+eps) step change
    assert diff["raw keys"][0] > 1e-2  # un-normalised keys: KLA is a different model
