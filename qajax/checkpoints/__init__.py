"""Models in and out of files: a config's model (pretrained or random, `factory`), qajax model checkpoints
and training workdirs (`saved`). Above `qajax.models`, which knows no files and no training."""
