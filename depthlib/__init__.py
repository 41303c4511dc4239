"""depthlib: the library behind the Depth Anything V2 training system on Ray.

Modules: ``models`` (DINOv2 + DPT, released checkpoints), ``losses``,
``metrics``, ``transforms``/``inference`` (the released preprocessing),
``storage`` (local and S3 URIs), ``shards`` (the Parquet label format),
``synthetic`` (procedural scenes with exact depth), ``pseudo_label`` (the
Ray Data labelling pipeline).
"""

__version__ = "0.1.0"
