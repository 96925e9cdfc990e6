"""minitx.nn: modules (Linear, Embedding, LayerNorm, RMSNorm, ...) and `functional`."""
from minitx.nn import functional
from minitx.nn.modules import (GELU, Dropout, Embedding, LayerNorm, Linear, Module, ModuleList,
                               Parameter, RMSNorm)

__all__ = ["functional", "Module", "ModuleList", "Parameter", "Linear", "Embedding",
           "LayerNorm", "RMSNorm", "Dropout", "GELU"]
