"""arc_jax: GRPO fine-tuning of the BARC induction model on ARC, in JAX/Flax."""

__version__ = "0.1.0"
