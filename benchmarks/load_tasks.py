"""Prints the time to load and validate each bundled ARC dataset (best of 3 runs)."""

import time

from arc_jax.data import BUNDLED_DATASETS, load_tasks


def main() -> None:
    for name in BUNDLED_DATASETS:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            tasks = load_tasks(name)
            times.append(time.perf_counter() - start)
        grids = sum(2 * (len(t.train) + len(t.test)) for t in tasks.values())
        print(f"{name:22s} {len(tasks):5d} tasks {grids:6d} grids {min(times) * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
