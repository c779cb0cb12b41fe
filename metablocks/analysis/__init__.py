"""Model analysis: parameter counts and MACs (fvcore plus handles for attention, einsum and matmul), per stage."""
from metablocks.analysis.macs import HANDLES, MacReport, count_macs, einsum_macs
from metablocks.analysis.params import count_params, params_by_stage, parts
from metablocks.analysis.units import human

__all__ = ["HANDLES", "MacReport", "count_macs", "count_params", "einsum_macs", "human", "params_by_stage", "parts"]
