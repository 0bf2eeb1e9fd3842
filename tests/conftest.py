import os

# Tests run on the CPU even where a GPU is visible, with fp32 matmuls at full precision.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from qajax.host_memory import keep_freed_host_memory  # noqa: E402  (after the environment above)

keep_freed_host_memory()  # as the `qajax` command does: steps reuse freed host buffers instead of faulting them in
