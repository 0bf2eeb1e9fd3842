import os

# Tests run on the CPU even where a GPU is visible, with fp32 matmuls at full precision.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# Not keep_freed_host_memory(): the tests are compile-bound, and its single malloc arena made XLA's
# multi-threaded compiles ~15% slower (the suite ~20%); it pays off only over many steps.
