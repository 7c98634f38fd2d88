"""Small fragments vs a serial peer: the cyclic water octamer, GFN2-xTB, NoCP MBE(3) (92 fragments).

Whole-process wall times (fresh processes, each tool started as a user starts it), rounds interleaved:

  fragment (calc run)     Fragme∩t 0.5.0 (pip ``fragment-qc``, libxtb in-process, fragments one after
                          another), ``fragment calc run`` on a project made by ``fragment init`` (untimed)
  fragment (init + run)   the same with ``fragment init strategy.yaml`` (reads the xyz and strategy) counted
  sequential (xtb)        QCManyBody's sequential computer, QCEngine's ``xtb`` harness, one script, one
                          core per fragment like Fragme∩t (QCENGINE_NCORES=1, OMP_NUM_THREADS=1: with its
                          default of every core, QCEngine sets OMP_NUM_THREADS=2 while xtb's OpenMP
                          runtime loads, and 2 spinning threads per 1-ms fragment took 0.7 s each on the
                          busy machine)
  qcmb-async run (tblite) ``python -m qcmb_async run octamer.xyz --fragments molecules --program tblite ...``
  qcmb-async run (xtb)    the same with QCEngine's ``xtb`` harness
  qcmb-async --version    the CLI's import floor (no run)

Our runs use every default: ``executor="auto"``, the result store on (a fresh store file per run, so
nothing is reused). Every tool gets SCC accuracy 0.01 (Fragme∩t's default for libxtb). The MBE(3)
total energies of the rows that run libxtb must agree with Fragme∩t's to 1e-9 Eh (exit 1 if not);
tblite, another implementation of GFN2-xTB, is reported with its difference.

Fragme∩t is installed into its own virtual environment under ``--cache`` (``python -m venv``, then
``pip install fragment-qc==0.5.0 xtb``) the first time. Targets (reported, never asserted): our
``qcmb-async run`` median <= 0.5x Fragme∩t's serial ``calc run``; min and max within 20 % of the median.

With ``--why``, also one ``qcmb_async.run`` per (program, executor) in one process: import time, run
time, makespan (first fragment start to last end), start-up and shutdown (run - makespan: worker
processes starting), the chemistry (sum of fragment walls), the median gap between a worker's
consecutive fragments (the hand-off), CPU seconds.

    python scripts/bench_peer.py [--repeats 3] [--cache ~/.cache/qcmb-async-bench] [--rows ...] [--why]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
XYZ = HERE / "data" / "water-octamer.xyz"
OUT = HERE / "results" / "bench-peer.json"
FRAGMENT_QC = "fragment-qc==0.5.0"
ACCURACY = 0.01  # Fragme∩t's LibxTB default (atomdriver.drivers.libxtb.LibxTB.Options.accuracy)
ENERGY_LIMIT = 1e-9
TARGET_RATIO = 0.5
TARGET_SPREAD = 0.20

STRATEGY = """\
fragmenters:
  - name: water
    type: WaterFragmenter
  - name: mbe
    type: FullFragmenter
drivers:
  - name: gfn2
    type: LibxTB
    options:
      accuracy: {accuracy}
systems:
  - name: w8
    source: octamer.xyz
calculations:
  - name: mbe3
    systems: [w8]
    steps: [water, mbe(3), gfn2]
"""
CALC = "w8--mbe3"

FRAGMENT_ENERGY = """\
from fragment.project import FragmentProject
p = FragmentProject(base_path=".")
with p:
    print(repr(float(p.get_calculation({calc!r}).properties["total_energy"])))
"""

SEQUENTIAL = """\
import sys
import numpy as np
from qcelemental import constants
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput
from qcmanybody.v2 import ManyBodyComputer

lines = open(sys.argv[1]).read().split("\\n")
atoms = [line.split() for line in lines[2:2 + int(lines[0])]]
mol = Molecule(symbols=[a[0] for a in atoms],
               geometry=np.array([[float(x) for x in a[1:4]] for a in atoms]) / constants.bohr2angstroms,
               fragments=[list(range(i, i + 3)) for i in range(0, len(atoms), 3)])  # the file lists O, H, H
spec = {"program": "xtb", "model": {"method": "gfn2-xtb"}, "driver": "energy",
        "keywords": {"accuracy": float(sys.argv[2])}}
inp = ManyBodyInput(molecule=mol, specification={"driver": "energy", "specification": {"(auto)": spec},
                                                 "keywords": {"bsse_type": ["nocp"], "max_nbody": 3}})
res = ManyBodyComputer.from_manybodyinput(inp)
print(repr(float(res.properties.nocp_corrected_total_energy)))
"""


WHY = """\
import json, sys, time
t0 = time.perf_counter()
import qcmb_async
from qcmb_async._core.xyz import xyz_input
program, executor, xyz, accuracy = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
inp = xyz_input(xyz, method="gfn2-xtb", program=program, bsse=["nocp"], max_nbody=3,
                keywords={"accuracy": accuracy}, fragments="molecules")
t1 = time.perf_counter()
res = qcmb_async.run(inp, store=None, executor=executor, ncores=2)
t2 = time.perf_counter()
rec = res.extras["qcmb_async"]
frags = [f for f in rec["fragments"] if f.get("start") and f.get("end")]
by_worker = {}
for f in sorted(frags, key=lambda f: f["start"]):
    by_worker.setdefault(f.get("worker"), []).append(f)
gaps = sorted(b["start"] - a["end"] for fs in by_worker.values() for a, b in zip(fs, fs[1:]))
print(json.dumps({"import": t1 - t0, "run": t2 - t1, "makespan": rec["finished"] - rec["started"],
                  "chemistry": sum(f["end"] - f["start"] for f in frags), "fragments": len(frags),
                  "median_gap": gaps[len(gaps) // 2] if gaps else 0.0}))
"""


def why(work: Path) -> list[dict[str, float | str]]:
    """One in-process run per (program, executor): where the time goes (import, run, makespan, chemistry)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    rows: list[dict[str, float | str]] = []
    for program in ("tblite", "xtb"):
        for executor in ("processes", "threads"):
            with ChildCpu() as cpu:
                _, out = run_timed([sys.executable, "-c", WHY, program, executor, str(XYZ), str(ACCURACY)],
                                   cwd=work, env=env)
            rows.append({"program": program, "executor": executor, "cpu": cpu.seconds,
                         **json.loads(out.strip().splitlines()[-1])})
    print(f"\nwhere the time goes (qcmb_async.run in one process, store off, 2 cores):\n"
          f"{'program':7s} {'executor':9s} {'import s':>8s} {'run s':>6s} {'makespan s':>10s} {'start-up s':>10s} "
          f"{'chemistry s':>11s} {'gap ms':>7s} {'CPU s':>6s}")
    for r in rows:
        startup = float(r["run"]) - float(r["makespan"])  # before the first and after the last fragment
        print(f"{r['program']:7s} {r['executor']:9s} {r['import']:8.2f} {r['run']:6.2f} {r['makespan']:10.2f} "
              f"{startup:10.2f} {r['chemistry']:11.2f} {1e3 * float(r['median_gap']):7.2f} {r['cpu']:6.2f}")
    return rows


def run_timed(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``cmd`` to completion: (wall s, stdout); raises on failure. CPU: wrap in :class:`ChildCpu`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}\n{out[-2000:]}")
    return wall, out


class ChildCpu:
    """CPU seconds (user + sys) of children reaped while it is entered."""

    def __enter__(self) -> ChildCpu:
        self.start = self._now()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = self._now() - self.start

    @staticmethod
    def _now() -> float:
        import resource

        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime


def fragment_venv(cache: Path) -> Path:
    """The venv holding Fragme∩t and xtb-python, made once: its ``bin`` directory."""
    venv = cache / "fragment-venv"
    bindir = venv / "bin"
    if not (bindir / "fragment").exists():
        print(f"installing {FRAGMENT_QC} and xtb into {venv} (once) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(bindir / "python"), "-m", "pip", "install", "-q", FRAGMENT_QC, "xtb"], check=True)
    return bindir


def fragment_project(bindir: Path, where: Path) -> tuple[float, float]:
    """A fresh Fragme∩t project in ``where``: ``fragment init`` (timed: wall s, CPU s)."""
    where.mkdir(parents=True)
    shutil.copy(XYZ, where / "octamer.xyz")
    (where / "strategy.yaml").write_text(STRATEGY.format(accuracy=ACCURACY))
    with ChildCpu() as cpu:
        wall, out = run_timed([str(bindir / "fragment"), "init", "strategy.yaml"], cwd=where)
    if CALC not in out:
        raise RuntimeError(f"fragment init did not add {CALC}:\n{out}")
    return wall, cpu.seconds


def fragment_energy(bindir: Path, where: Path) -> float:
    _, out = run_timed([str(bindir / "python"), "-c", FRAGMENT_ENERGY.format(calc=CALC)], cwd=where)
    return float(out.strip().splitlines()[-1])


def ours_command(program: str, store: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "qcmb_async", "run", str(XYZ), "--fragments", "molecules", "--program", program,
            "--method", "gfn2-xtb", "--bsse", "nocp", "--max-nbody", "3",
            "--keywords", json.dumps({"accuracy": ACCURACY}), "--store", str(store), "--output", str(output),
            "--quiet"]


def one_round(rows: list[str], bindir: Path | None, work: Path, k: int) -> dict[str, dict[str, float]]:
    """Every row once, in order: {row: {"wall", "cpu", "energy"}}."""
    env_ours = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    got: dict[str, dict[str, float]] = {}
    for row in rows:
        where = work / f"{row.replace(' ', '_').replace('(', '').replace(')', '')}-{k}"
        if row.startswith("fragment"):
            assert bindir is not None
            init_wall, init_cpu = fragment_project(bindir, where)
            with ChildCpu() as cpu:
                wall, _ = run_timed([str(bindir / "fragment"), "calc", "run", CALC], cwd=where)
            energy = fragment_energy(bindir, where)
            got["fragment (calc run)"] = {"wall": wall, "cpu": cpu.seconds, "energy": energy}
            got["fragment (init + run)"] = {"wall": init_wall + wall, "cpu": init_cpu + cpu.seconds, "energy": energy}
            continue
        where.mkdir(parents=True)
        if row == "sequential (xtb)":
            script = where / "sequential.py"
            script.write_text(SEQUENTIAL)
            with ChildCpu() as cpu:
                wall, out = run_timed([sys.executable, str(script), str(XYZ), str(ACCURACY)], cwd=where,
                                         env={**os.environ, "OMP_NUM_THREADS": "1", "QCENGINE_NCORES": "1"})
            got[row] = {"wall": wall, "cpu": cpu.seconds, "energy": float(out.strip().splitlines()[-1])}
        elif row.startswith("qcmb-async run"):
            program = row.split("(")[1].rstrip(")")
            output = where / "result.json"
            with ChildCpu() as cpu:
                wall, _ = run_timed(ours_command(program, where / "store.sqlite", output), cwd=where, env=env_ours)
            props = json.loads(output.read_text())["properties"]
            got[row] = {"wall": wall, "cpu": cpu.seconds, "energy": float(props["nocp_corrected_total_energy"])}
        elif row == "qcmb-async --version":
            with ChildCpu() as cpu:
                wall, _ = run_timed([sys.executable, "-m", "qcmb_async", "--version"], cwd=where, env=env_ours)
            got[row] = {"wall": wall, "cpu": cpu.seconds, "energy": float("nan")}
        else:
            raise ValueError(f"unknown row {row!r}")
    return got


def summary(values: list[float]) -> dict[str, float]:
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread": max(abs(min(values) - med), abs(max(values) - med)) / med if med else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "qcmb-async-bench")
    parser.add_argument("--rows", default="fragment,sequential (xtb),qcmb-async run (tblite),qcmb-async run (xtb),"
                                          "qcmb-async --version",
                        help="comma-separated rows ('fragment' gives both Fragme∩t rows)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--why", action="store_true",
                        help="also run qcmb_async.run in one process per (program, executor): where the time goes")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bindir = fragment_venv(args.cache) if "fragment" in rows else None
    # Byte-compile our package as pip does when it installs a wheel (Fragme∩t's venv has its .pyc files):
    # a source checkout run with PYTHONDONTWRITEBYTECODE set compiled every module in every fresh process.
    compileall.compile_dir(str(ROOT / "qcmb_async"), quiet=1)
    load_start = os.getloadavg()
    rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        for k in range(args.repeats):
            rounds.append(one_round(rows, bindir, Path(tmp), k))
            walls = ", ".join(f"{r} {v['wall']:.2f} s" for r, v in rounds[-1].items())
            print(f"round {k + 1}/{args.repeats}: {walls}", flush=True)
    names = list(rounds[0])
    table = {name: {"wall": summary([r[name]["wall"] for r in rounds]),
                    "cpu": summary([r[name]["cpu"] for r in rounds]),
                    "energies": [r[name]["energy"] for r in rounds]} for name in names}
    reference = table.get("fragment (calc run)", {}).get("energies", [None])[0]
    print(f"\nCyclic water octamer, GFN2-xTB (accuracy {ACCURACY}), NoCP MBE(3), 92 fragments; {args.repeats} fresh "
          f"processes per row; load average at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f}")
    print(f"{'row':26s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'spread':>7s} {'CPU s':>6s}  "
          f"{'MBE(3) energy (Eh)':>20s} {'- Fragme∩t':>10s}")
    ok = True
    for name in names:
        w, c, energies = table[name]["wall"], table[name]["cpu"], table[name]["energies"]
        energy = energies[0]
        diff = "" if reference is None or energy != energy else f"{max(abs(e - reference) for e in energies):.1e}"
        libxtb = "tblite" not in name
        if libxtb and reference is not None and energy == energy and \
                max(abs(e - reference) for e in energies) > ENERGY_LIMIT:
            ok = False
        shown = "" if energy != energy else f"{energy:.10f}"
        print(f"{name:26s} {w['median']:9.2f} {w['min']:7.2f} {w['max']:7.2f} {100 * w['spread']:6.0f}% "
              f"{c['median']:6.2f}  {shown:>20s} {diff:>10s}")
    peer = table.get("fragment (calc run)", {}).get("wall", {}).get("median")
    verdicts = []
    for name in names:
        if name.startswith("qcmb-async run") and peer:
            w = table[name]["wall"]
            ratio = w["median"] / peer
            verdicts.append({"row": name, "ratio_to_fragment": ratio, "spread": w["spread"],
                             "ratio_met": ratio <= TARGET_RATIO, "spread_met": w["spread"] <= TARGET_SPREAD})
            print(f"target {name}: median / Fragme∩t's calc run = {ratio:.2f} (<= {TARGET_RATIO}: "
                  f"{'met' if ratio <= TARGET_RATIO else 'MISSED'}); min/max within {100 * w['spread']:.0f}% of the "
                  f"median (<= {100 * TARGET_SPREAD:.0f}%: {'met' if w['spread'] <= TARGET_SPREAD else 'MISSED'})")
    if not ok:
        print(f"ENERGIES OF THE LIBXTB ROWS DISAGREE with Fragme∩t's by more than {ENERGY_LIMIT} Eh")
    breakdown: list[dict[str, float | str]] = []
    if args.why:
        with tempfile.TemporaryDirectory(prefix="bench-peer-why-") as tmp:
            breakdown = why(Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"workload": "cyclic water octamer GFN2-xTB NoCP MBE(3)", "accuracy": ACCURACY,
                                    "repeats": args.repeats, "load_start": load_start, "load_end": os.getloadavg(),
                                    "rounds": rounds, "table": table, "targets": verdicts, "why": breakdown}, indent=1))
    print(f"figures: {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
