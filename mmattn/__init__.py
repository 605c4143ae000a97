"""mmattn: fused random-shift multi-modal attention (RS-MMA) and GroupNorm(+FiLM+SiLU) operators,
and a dropout (CPU and CUDA) whose mask is recomputed rather than stored."""
from mmattn.cpu_cache import cpu_cache_stats, empty_cpu_cache, set_cpu_cache_limit
from mmattn.functional import dropout, group_norm_act, rs_attention

__all__ = ["rs_attention", "group_norm_act", "dropout", "cpu_cache_stats", "set_cpu_cache_limit",
           "empty_cpu_cache"]
