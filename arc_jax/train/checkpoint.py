"""Training checkpoints: an array pytree and a JSON document per step, written with Orbax.

A checkpoint of step s holds two items:
- `arrays`: a pytree of arrays (LoRA params, optimizer state, RNG keys), saved with Orbax's
  standard handler and restored onto the shardings of an abstract target;
- `meta`: a JSON document of host-side state (data-iterator position, numpy RNG state, the
  collapse guard's state, a config snapshot). `save` adds `"step": s` to it.

What is guaranteed:
- `save` returns once the arrays are copied off the accelerator; the files are written in the
  background. `wait()` (and `close()`) block until they are on disk.
- A step is written to `<directory>/<s>.orbax-checkpoint-tmp...` and renamed to
  `<directory>/<s>` only once every file is written (an atomic rename on local filesystems;
  on Google Cloud Storage Orbax marks complete steps with a commit file instead). A process
  killed mid-write leaves only the temporary directory, which the next `Checkpointer` on the
  directory deletes; the last complete step stays the latest one. Old steps beyond
  `max_to_keep` are deleted only after the new one is complete.
- `restore()` without a step takes the newest step that restores. Newer step directories that
  cannot be read (damaged by something outside this code) are then renamed to `<s>.unreadable`
  with a warning, so that saves can follow; if no step restores, the error lists every failure.
- Arrays with a non-finite floating value are refused at `save`, so a NaN never reaches a
  checkpoint; `meta` must survive a JSON round trip unchanged (tuples, for instance, do not).
- Every array's fingerprint (a 32-bit weighted sum of its words, which any change of one word
  alters) is saved in `meta` and checked at restore: a step whose files were changed, say a
  flipped byte, does not restore, and `restore()` falls back to an older step as above.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from arc_jax.errors import UserError

UNREADABLE_SUFFIX = ".unreadable"


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be saved or restored (names the directory, step and field)."""


FINGERPRINTS = "array_fingerprints"  # the meta key holding them


@jax.jit
def _summaries(leaves: list) -> tuple[list, list]:
    """Per leaf: whether all its values are finite, and a 32-bit fingerprint of its bits
    (sum of word_i * odd_i mod 2^32, so any change of one word changes it). One program for the
    whole state, compiled on the first save."""
    finite, prints = [], []
    for leaf in leaves:
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        finite.append(jnp.all(jnp.isfinite(leaf)) if jnp.issubdtype(leaf.dtype, jnp.inexact)
                      else jnp.bool_(True))
        if leaf.dtype == jnp.bool_:
            leaf = leaf.astype(jnp.uint8)
        words = jax.lax.bitcast_convert_type(leaf, jnp.dtype(f"uint{8 * leaf.dtype.itemsize}"))
        words = words.astype(jnp.uint32).reshape(-1)
        odd = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2654435761) | jnp.uint32(1)
        prints.append(jnp.sum(words * odd, dtype=jnp.uint32))
    return finite, prints


def summarise(arrays: Any, what: str) -> dict[str, int]:
    """The fingerprint of each leaf of `arrays` by its path; raises CheckpointError naming the
    first floating leaf with a NaN or inf."""
    leaves = jax.tree_util.tree_flatten_with_path(arrays)[0]
    finite, prints = jax.device_get(_summaries([leaf for _, leaf in leaves]))
    for (path, _), ok in zip(leaves, finite):
        if not ok:
            raise CheckpointError(f"{what}: array {jax.tree_util.keystr(path)} has a NaN or inf "
                                  "value; non-finite state is never checkpointed")
    return {jax.tree_util.keystr(path): int(p) for (path, _), p in zip(leaves, prints)}


def check_json_round_trip(meta: dict, what: str) -> None:
    """Raise CheckpointError unless `meta` comes back unchanged from JSON (names the fields)."""
    try:
        loaded = json.loads(json.dumps(meta, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what}: meta is not JSON-serialisable: {e}") from e
    changed = sorted(repr(k) for k in meta
                     if not isinstance(k, str) or k not in loaded or loaded[k] != meta[k])
    if changed:
        raise CheckpointError(f"{what}: meta fields {', '.join(changed)} do not survive a JSON "
                              "round trip unchanged (use str keys, lists, plain numbers)")


class Checkpointer:
    """Asynchronous Orbax checkpoints of (arrays, meta) in one directory, newest `max_to_keep` kept.

    Usable as a context manager; `close()` waits for the pending save.
    """

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3,
                 async_save: bool = True):
        if max_to_keep is not None and max_to_keep < 1:
            raise CheckpointError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
        directory = os.fspath(directory)
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True, create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def all_steps(self) -> list[int]:
        """The complete steps on disk (and a pending save's), oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self, *, at_most: int | None = None) -> int | None:
        """The newest step, or the newest step <= at_most; None if there is none."""
        steps = [s for s in self.all_steps() if at_most is None or s <= at_most]
        return steps[-1] if steps else None

    def save(self, step: int, arrays: Any, meta: dict) -> None:
        """Start writing step `step`; returns once the arrays are copied to host memory.

        `step` must be after every saved step (roll back with `delete_after` first).
        """
        what = f"checkpoint step {step} in {self.directory}"
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise CheckpointError(f"{what}: step must be a non-negative int")
        latest = self.latest_step()
        if latest is not None and step <= latest:
            raise CheckpointError(f"{what}: step is not after the latest saved step {latest}; "
                                  "call delete_after() to roll back first")
        if meta.get("step", step) != step:
            raise CheckpointError(f"{what}: meta['step'] is {meta['step']}")
        meta = {**meta, "step": int(step)}
        check_json_round_trip(meta, what)
        meta[FINGERPRINTS] = summarise(arrays, what)
        self._manager.save(int(step), args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)))

    def wait(self) -> None:
        """Block until the pending save is on disk; re-raises its error, if any."""
        self._manager.wait_until_finished()

    def restore(self, step: int | None = None, abstract_arrays: Any = None) -> tuple[Any, dict]:
        """(arrays, meta) of `step`, or of the newest step that restores if step is None.

        abstract_arrays: the target pytree, e.g. of `jax.ShapeDtypeStruct` with shardings; the
          arrays are restored onto those shardings. None restores as saved (single host only).
        meta["step"] is the step restored.
        """
        self.wait()
        if step is not None:
            if step not in self.all_steps():
                raise CheckpointError(f"checkpoint step {step} not in {self.directory} "
                                      f"(steps: {self.all_steps()})")
            return self._restore_step(step, abstract_arrays)
        failures = []
        for candidate in reversed(self.all_steps()):
            try:
                restored = self._restore_step(candidate, abstract_arrays)
            except Exception as e:  # noqa: BLE001 - any unreadable step falls back to an older one
                failures.append(f"step {candidate}: {type(e).__name__}: {e}")
                continue
            if failures:
                self._set_aside_unreadable(candidate, failures)
            return restored
        if failures:
            raise CheckpointError(f"no checkpoint in {self.directory} restores:\n"
                                  + "\n".join(failures))
        raise CheckpointError(f"no checkpoint in {self.directory}")

    def delete_after(self, step: int) -> list[int]:
        """Delete every step after `step` (a rollback); returns the deleted steps."""
        self.wait()
        deleted = [s for s in self.all_steps() if s > step]
        for s in deleted:
            self._manager.delete(s)
        return deleted

    def close(self) -> None:
        """Wait for the pending save and release Orbax's threads."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _restore_step(self, step: int, abstract_arrays: Any) -> tuple[Any, dict]:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(abstract_arrays), meta=ocp.args.JsonRestore()))
        meta = restored["meta"]
        what = f"checkpoint step {step} in {self.directory}"
        if not isinstance(meta, dict) or meta.get("step") != step:
            raise CheckpointError(f"{what}: meta['step'] is "
                                  f"{meta.get('step') if isinstance(meta, dict) else meta!r}")
        expected = meta.pop(FINGERPRINTS, None)
        if expected is not None:  # checkpoints written before fingerprints restore unchecked
            found = summarise(restored["arrays"], what)
            changed = sorted(k for k in set(expected) | set(found) if expected.get(k) != found.get(k))
            if changed:
                raise CheckpointError(f"{what}: arrays {', '.join(changed)} differ from what was "
                                      "saved (the files were damaged)")
        return restored["arrays"], meta

    def _set_aside_unreadable(self, restored_step: int, failures: list[str]) -> None:
        """Rename the unreadable steps newer than `restored_step` so later saves can follow it."""
        for step in self.all_steps():
            if step > restored_step:
                path = epath.Path(self.directory) / str(step)
                path.rename(path.with_name(path.name + UNREADABLE_SUFFIX))
        self._manager.reload()
        logging.warning("Restored checkpoint step %d of %s; newer steps did not restore and were "
                        "renamed with suffix %r:\n%s", restored_step, self.directory,
                        UNREADABLE_SUFFIX, "\n".join(failures))
