#!/bin/sh
# The quality-per-compute sweep on robosuite's Panda (embedded robosuite model), as run on the shared 2-core
# CPU beside a training run (one planning thread): reach on every budget but 800 x 10, push on the cheapest budget. Each command adds its cells to the one table (--resume).
set -e
sweep() { .venv/bin/jepa-planner eval-sweep --env robosuite --seed 1 --threads 1 --out docs/quality_per_compute_robosuite --resume "$@"; }
sweep --tasks reach --budgets 64x2h2 --episodes 10
sweep --tasks reach --budgets 400x10h2 --planners cold-cem --episodes 10
sweep --tasks reach --budgets 128x4h2 256x5h2 --episodes 10
sweep --tasks push --budgets 64x2h2 --episodes 5
# Not run yet (the CPU went to a lift evaluation): push's reference cell, and 800 x 10 at horizon 1.
# sweep --tasks push --budgets 400x10h2 --planners cold-cem --episodes 5
# sweep --tasks reach --budgets 800x10h1 --planners cold-cem --episodes 10
