"""The CUDA block path (flash for fp16/bf16, memory-efficient for fp32) matches SDPA."""

import pytest
import torch
import torch.nn.functional as F

from shardwright.kernels.attention.blocks import block_backward, block_forward

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_cuda_block_matches_sdpa(dtype, causal):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 4, 80, 64, device="cuda", dtype=dtype, generator=gen)
    k, v = (torch.randn(2, 2, 80, 64, device="cuda", dtype=dtype, generator=gen) for _ in "kv")
    dout = torch.randn_like(q)
    scale = 64**-0.5
    out, lse = block_forward(q, k, v, causal=causal, scale=scale)
    grads = block_backward(dout, q, k, v, out, lse, causal=causal, scale=scale)
    ref_in = [t.float().requires_grad_() for t in (q, k, v)]
    ref = F.scaled_dot_product_attention(*ref_in, is_causal=causal, enable_gqa=True)
    ref.backward(dout.float())
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for got, want in zip([out, *grads], [ref, *(t.grad for t in ref_in)]):
        torch.testing.assert_close(got.float(), want.detach(), atol=tol, rtol=0)
