"""mmattn: fused random-shift multi-modal attention (RS-MMA) and GroupNorm(+FiLM+SiLU) operators,
and a CPU dropout whose mask is recomputed rather than stored."""
from mmattn.functional import dropout, group_norm_act, rs_attention

__all__ = ["rs_attention", "group_norm_act", "dropout"]
