#!/usr/bin/env bash
# The LAIN evidence of docs/results/lain_findings.md, rerun with the project's interval method
# (bootstrap over users and seeds, paper length groups, Benjamini-Hochberg per page).
# One command: bash bench/lain_evidence.sh [OUT]   (default OUT: runs/evidence; resumable: a run
# with its metrics.json is never trained again, so kill it and start it again at will).
# Order: what the findings page needs most first. 2 runs at a time, 1 thread each (2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/evidence}
S5=2024,2025,2026,2027,2028
S3=2024,2025,2026
E="--set train.epochs=3 --jobs 2 --threads 1"
X=".venv/bin/python -m seqctr experiment"
for data in ml100k mlls; do
  $X compare --backbones din,twin --config-dir $data --seeds $S5 $E --out $OUT/$data/compare-din-twin
  $X compare --backbones sim,sdim --config-dir $data --seeds $S3 $E --out $OUT/$data/compare-sim-sdim
done
for data in ml100k mlls; do
  lengths=50,200; [ $data = mlls ] && lengths=50,200,1000
  $X maxlen --backbones din,twin --config-dir $data --lengths $lengths --seeds $S3 $E --out $OUT/$data/maxlen
  $X ablation --backbone twin --config-dir $data --seeds $S3 $E --out $OUT/$data/ablation-twin
done
for data in ml100k mlls; do
  $X compare --backbones dien --config-dir $data --seeds $S3 --set train.epochs=1 --jobs 2 --threads 1 \
     --out $OUT/$data/compare-dien
done
