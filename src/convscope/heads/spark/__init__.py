"""SparK sparse masked modelling for the zoo's hierarchical ConvNets: `sparsify` (the encoder made sparse in
place), `SparK` (the pretraining model: loss, reconstruction, encoder weights), the families it serves."""
from .model import (
    SPARK_SERVED,
    SPARK_UNSUPPORTED,
    LightDecoder,
    SparK,
    spark_families,
    spark_loss,
    spark_smallest,
)
from .sparse import REFUSED, WRAPPERS, SparseMask, SparseModule, dense_key_map, sparsify

__all__ = ["REFUSED", "SPARK_SERVED", "SPARK_UNSUPPORTED", "WRAPPERS", "LightDecoder", "SparK", "SparseMask",
           "SparseModule", "dense_key_map", "spark_families", "spark_loss", "spark_smallest", "sparsify"]
