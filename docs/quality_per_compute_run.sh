#!/bin/sh
# The quality-per-compute sweep as run on the shared 2-core CPU (one planning thread): cells in order
# of importance for the claim, fewer episodes where a cell is expensive, each command adding its cells
# to the one table (--resume). On a faster machine one command does it all, e.g.
#   jepa-planner eval-sweep --episodes reach=20 push=10 --threads 1 --out docs/quality_per_compute
set -e
sweep() { .venv/bin/jepa-planner eval-sweep --seed 1 --threads 1 --out docs/quality_per_compute --resume "$@"; }
sweep --tasks reach --budgets 64x2h2 --episodes 6
sweep --tasks reach --budgets 400x10h2 --planners cold-cem --episodes 2
sweep --tasks reach --budgets 128x4h2 256x5h2:2 --episodes 3
sweep --tasks push --budgets 64x2h2 --episodes 2
sweep --tasks push --budgets 400x10h2 --planners cold-cem --episodes 1
sweep --tasks reach --budgets 400x10h2 --planners warm-cem warm-icem --episodes 1
sweep --tasks reach --budgets 800x10h1 --episodes 1
sweep --tasks push --budgets 128x4h2 --episodes 1
