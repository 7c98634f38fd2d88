#!/usr/bin/env bash
# The package as a user gets it: build the sdist and the wheel, check their metadata, install the
# wheel with its [pyscf] extra (from the package index) into a fresh virtual environment outside the
# checkout, and run from there what a new user runs first: --version, plan, the README example and a
# small `qcmb-async run` whose energy is checked against PySCF called directly.
# Called by `make test`; about a minute here (the install is most of it). Usage: scripts/check_wheel.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/qcmb-wheel.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
t0=$SECONDS
say() { printf 'check_wheel [%3ds]: %s\n' "$((SECONDS - t0))" "$*"; }

say "building sdist and wheel"
"$PYTHON" -m build --outdir "$tmp/dist" "$repo" > "$tmp/build.log" 2>&1 || { cat "$tmp/build.log"; exit 1; }
wheel=("$tmp"/dist/qcmb_async-*-py3-none-any.whl)
sdist=("$tmp"/dist/qcmb_async-*.tar.gz)
"$PYTHON" -m twine check --strict "${wheel[0]}" "${sdist[0]}"

say "fresh virtual environment with ${wheel[0]##*/}[pyscf]"
"$PYTHON" -m venv "$tmp/venv"
# No PYTHONPATH: the checkout must not be importable from here; the store goes to a private cache.
run_clean() { env -u PYTHONPATH -u VIRTUAL_ENV PATH="$tmp/venv/bin:$PATH" XDG_CACHE_HOME="$tmp/cache" "$@"; }
run_clean "$tmp/venv/bin/python" -m pip install -q --no-compile "${wheel[0]}[pyscf]" 2> >(grep -v "^WARNING: Location" >&2)

mkdir "$tmp/work" && cd "$tmp/work"
where="$(run_clean python -c 'import qcmb_async; print(qcmb_async.__file__)')"
[[ "$where" == "$tmp/venv/"* ]] || { echo "qcmb_async imported from $where, not the venv" >&2; exit 1; }

say "qcmb-async --version"
run_clean qcmb-async --version | tee version.txt
want="$(run_clean python -c 'import importlib.metadata as m; print(m.version("qcmb_async"))')"
[[ "$(head -1 version.txt)" == "qcmb-async $want" ]] || { echo "--version does not say $want" >&2; exit 1; }
grep -Eq '^  pyscf +[0-9]' version.txt || { echo "--version does not find pyscf" >&2; exit 1; }

cat > water.xyz <<'EOF'
6
water dimer
O 0.000 0.000 0.000
H 0.758 0.000 0.504
H -0.758 0.000 0.504
--
O 0.000 0.000 2.900
H 0.758 0.000 3.404
H -0.758 0.000 3.404
EOF

say "qcmb-async plan water.xyz --program pyscf --method hf --basis sto-3g --bsse cp"
run_clean qcmb-async plan water.xyz --program pyscf --method hf --basis sto-3g --bsse cp | tee plan.txt
grep -q "nothing was computed" plan.txt && grep -q "^predicted: " plan.txt \
  || { echo "plan printed no plan or no prediction" >&2; exit 1; }

say "README example (scripts/example.py, copied out of the checkout)"
cp "$repo/scripts/example.py" .
run_clean python example.py

say "qcmb-async run water.xyz (no-CP, HF/STO-3G) against PySCF directly"
run_clean qcmb-async run water.xyz --program pyscf --method hf --basis sto-3g --bsse nocp -o result.json -q
run_clean python - <<'EOF'
import json

from pyscf import gto, scf

atoms = [x for x in open("water.xyz").read().splitlines()[2:] if x.strip() != "--"]


def hf(lines):
    return scf.RHF(gto.M(atom="\n".join(lines), basis="sto-3g", verbose=0)).run().e_tot


expected = hf(atoms) - hf(atoms[:3]) - hf(atoms[3:])
got = json.load(open("result.json"))["return_result"]
assert abs(got - expected) < 1e-7, (got, expected)
print(f"interaction energy {got:.10f} Eh = PySCF directly {expected:.10f} Eh")
EOF
say "ok"
