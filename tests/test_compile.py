"""torch.compile(fullgraph=True) of a module that uses both fused operators."""
import torch

import mmattn


class TinyCoupledBlock(torch.nn.Module):
    """Norm+SiLU per modality, then RS-MMA between them (both ops in one graph)."""

    def __init__(self, channels: int = 16, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.weight = torch.nn.Parameter(torch.randn(channels))
        self.proj_v = torch.nn.Linear(channels, 3 * channels)
        self.proj_a = torch.nn.Linear(channels, 3 * channels)

    def split(self, tokens):  # [B, N, 3C] -> 3 x [B, H, N, D]
        b, n, _ = tokens.shape
        return tokens.view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, video, audio, emb_scale):  # video [B, F, C, P], audio [B, C, L]
        b, f, c, p = video.shape
        video = mmattn.group_norm_act(video, 4, self.weight, scale=emb_scale, channel_dim=2)
        audio = mmattn.group_norm_act(audio, 4, self.weight)
        qv, kv, vv = self.split(self.proj_v(video.transpose(2, 3).reshape(b, f * p, c)))
        qa, ka, va = self.split(self.proj_a(audio.transpose(1, 2)))
        out_v, out_a = mmattn.rs_attention(qv, kv, vv, qa, ka, va, frames=f, window=2, shift=1)
        return out_v.sum() + out_a.sum()


def test_compile_fullgraph_forward_and_backward():
    block = TinyCoupledBlock()
    inputs = (torch.randn(2, 4, 16, 6), torch.randn(2, 16, 20), torch.randn(2, 16))
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    eager_out = block(*inputs)
    eager_grads = torch.autograd.grad(eager_out, list(block.parameters()))
    out = compiled(*inputs)
    grads = torch.autograd.grad(out, list(block.parameters()))
    torch.testing.assert_close(out, eager_out)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)
