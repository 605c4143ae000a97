"""Composable audio-video blocks (DESIGN.md §3), usable on their own in other models.

Video tensors are `[B, F, C, H, W]`, audio `[B, C, L]`, embeddings `[B, E]`. Blocks that use
the fused operators take `impl="fused"` (default) or `impl="reference"` (pure PyTorch).
`NormActConv` and the attention blocks recompute the normalised inputs of their convolutions and
projections in the backward instead of keeping them (`recompute`: default None, inputs of 8 MiB
or more; True: all; False: none; `set_recompute` sets a whole model). `cast_weights` stores
the weights of convolutions and linear layers in 16 bits (norm parameters stay float32).
"""
from mmattn.nn._ops import IMPLS, check_impl
from mmattn.nn.attention import (AudioSelfAttention, RSMultiModalAttention, TokenSelfAttention,
                                 VideoSelfAttention)
from mmattn.nn.conv import AudioConv, VideoConv
from mmattn.nn.dropout import Dropout, set_dropout_stream
from mmattn.nn.init import zero_module
from mmattn.nn.norm import GroupNormAct
from mmattn.nn.precision import cast_weights
from mmattn.nn.recompute import set_recompute
from mmattn.nn.resample import Downsample, Upsample
from mmattn.nn.resblock import AudioResBlock, MMResBlock, NormActConv, VideoResBlock
from mmattn.nn.sequential import CoupledSequential

__all__ = [
    "IMPLS", "check_impl", "Dropout", "GroupNormAct", "VideoConv", "AudioConv", "Downsample", "Upsample",
    "NormActConv", "VideoResBlock", "AudioResBlock", "MMResBlock", "TokenSelfAttention",
    "VideoSelfAttention", "AudioSelfAttention", "RSMultiModalAttention", "CoupledSequential",
    "zero_module", "set_recompute", "cast_weights", "set_dropout_stream",
]
