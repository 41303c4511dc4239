"""Trained models where people use them: transformers folders, ONNX files, safetensors.

    python ray_jobs/export.py --checkpoint run/model.pth --encoder vits --format hf --output out/hf

Modules: ``hf`` (the key mapping to ``DepthAnythingForDepthEstimation``,
config and image processor), ``onnx_file`` (a size-branch-free forward and
the ONNX export), ``safetensors_file`` (the released layout),
``model_card`` (the run's records and ``README.md``), ``job`` (settings,
input checks, the export itself).

The packages these need (transformers, onnx, onnxscript, onnxruntime,
safetensors) are the optional ``export`` extra, imported only inside these
functions: the training and labelling jobs never load them.
"""
