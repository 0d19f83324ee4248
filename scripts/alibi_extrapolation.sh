#!/usr/bin/env bash
# Train a small BLOOM (ALiBi) model from scratch on five Austen novels plus passkey prompts
# (about 9 minutes on 2 CPU cores), then evaluate none, pi, ntk and dynamic_ntk on passkey and
# held-out long-range perplexity at 1x-8x its 256-token window with lmeval-ctx sweep (about 5
# minutes), and write the leaderboard and plots with lmeval-ctx report. Sets itself up
# in .venv-demo. Data: benchmarks/data/austen-novels.jsonl.gz, shipped with the repository
# (DATA=... to override). Model and runs: runs/alibi_extrapolation/ (git-ignored); table:
# benchmarks/alibi_extrapolation_result.json. Extra arguments go to benchmarks/alibi_extrapolation.py
# (e.g. --passkey-samples 10); --help prints its options without setting anything up.
#
# `bash scripts/alibi_extrapolation.sh seeds --seeds 0,1,2,3,4` trains and evaluates the recipe once per
# seed instead (about 15 minutes each on 2 cores) and pools the seeds
# (benchmarks/alibi_extrapolation_seeds.py; its table: benchmarks/alibi_extrapolation_seeds_result.json).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  -h|--help) exec python3 benchmarks/alibi_extrapolation.py --help ;;  # its options need only the standard library
  seeds) case "${2:-}" in -h|--help) exec python3 benchmarks/alibi_extrapolation_seeds.py --help ;; esac ;;
esac
VENV="${VENV:-.venv-demo}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
pip install -q torch==2.13.0
pip install -q .
if [ "${1:-}" = seeds ]; then
  shift
  exec python benchmarks/alibi_extrapolation_seeds.py "$@"   # recipe options after --, e.g. -- --data FILE
fi
python benchmarks/alibi_extrapolation.py all --data "${DATA:-benchmarks/data/austen-novels.jsonl.gz}" "$@"
