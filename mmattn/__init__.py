"""mmattn: fused random-shift multi-modal attention (RS-MMA) and GroupNorm(+FiLM+SiLU) operators."""
from mmattn.functional import group_norm_act, rs_attention

__all__ = ["rs_attention", "group_norm_act"]
