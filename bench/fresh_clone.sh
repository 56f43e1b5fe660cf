#!/usr/bin/env bash
# The README's quick start on a clean clone in a fresh virtual environment, timed.
#
#   bash bench/fresh_clone.sh [WORKDIR]      (default: a new temporary folder)
#
# Clones this repository's HEAD, creates a venv, runs the README's install
# command and then its main command (the toy dissection), and prints the wall
# time of each step and of both together (target: under 10 minutes on a
# 2-core CPU). pip's cache is used as it is on the machine.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
clone="$work/jaxdissect"
git clone -q "$repo" "$clone"
python3 -m venv "$work/venv"
source "$work/venv/bin/activate"
cd "$clone"

install=$(sed -n 's/^\(pip install [^#]*\)#.*1\. install.*/\1/p' README.md)
main=$(sed -n 's/^\(python main.py [^#]*\)#.*2\. dissect.*/\1/p' README.md)
[ -n "$install" ] && [ -n "$main" ] || { echo "error: README quick start commands not found" >&2; exit 1; }

seconds() { date +%s.%N; }
t0=$(seconds)
echo "\$ $install"; eval "$install" > "$work/install.log" 2>&1 || { tail -20 "$work/install.log"; exit 1; }
t1=$(seconds)
echo "\$ $main"; eval "$main"
t2=$(seconds)
test -s runs/toy/report.html || { echo "error: no runs/toy/report.html" >&2; exit 1; }
python - "$t0" "$t1" "$t2" <<'EOF'
import sys
t0, t1, t2 = map(float, sys.argv[1:])
print(f"install {t1 - t0:.0f} s, main command {t2 - t1:.0f} s, "
      f"together {(t2 - t0) / 60:.1f} min (target < 10 min); report: runs/toy/report.html")
EOF
