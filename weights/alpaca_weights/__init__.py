"""The weights fill: download, verify, recover and convert model weights into a shared cache.

Run by the fill Job as `alpaca-weights fill ...`. Imports nothing from the rest of the
operator; heavy optional libraries (torch, safetensors, fsspec providers, huggingface_hub,
requests) are imported inside the functions that need them.
"""
