#!/usr/bin/env bash
# Make the separate venv of peer influence libraries used by benchmarks/bench_peers.py.
#
#   bash benchmarks/peers/setup.sh [VENV]        (default VENV: ../peers-venv beside the repo)
#
# As ../shared/PEERS.md says: CPU torch 2.13.0 first (the wheel on local disk), then the peers
# with torch pinned by a constraints file. The peers never go into the project's .venv: pyDVL pins
# numpy<2 and kronfluence's dependencies would pull a CUDA torch. The peer stage of the benchmark
# imports only torch and the peers, so hf_pairdots is not installed here.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${1:-$here/../../../peers-venv}"
python3 -m venv "$venv"
pip="$venv/bin/pip"
"$pip" install torch==2.13.0
constraints="$venv/constraints.txt"
printf 'torch==2.13.0\n' > "$constraints"
"$pip" install -c "$constraints" captum==0.9.0 dattri==0.3.0
"$pip" install -c "$constraints" "pydvl[influence]==0.10.0"            # downgrades numpy to 1.26.4
"$pip" install -c "$constraints" --no-deps kronfluence==1.0.1          # never without --no-deps
"$pip" install -c "$constraints" "accelerate>=0.31.0" "einops>=0.8.0" "einconv>=0.1.0" "opt-einsum>=3.3.0" \
    "safetensors>=0.4.2" "tqdm>=4.66.4" scipy
"$venv/bin/python" -c "import captum, dattri, pydvl, kronfluence, torch; print('peers venv ok, torch', torch.__version__)"
