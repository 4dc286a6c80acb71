"""GRPO training: advantages, the clipped policy loss and its metrics (`arc_jax.train.grpo`)."""
