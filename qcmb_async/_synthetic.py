"""A made-up many-body expansion of solutes in a mixed solvent, for the simulator at any scale.

Fragment sizes follow the molecules, costs a power law of size with noise; nothing is computed.
Public through :func:`qcmb_async.simulate.synthetic_workload`, which wraps the parts in a ``Workload``.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ._core.plan import Fragment

#: Molecules the synthetic workload knows: name -> (hydrogen atoms, heavier atoms).
MOLECULES: dict[str, tuple[int, int]] = {
    "water": (2, 1),
    "methanol": (4, 2),
    "ammonia": (3, 1),
    "benzene": (6, 6),
    "phenol": (6, 7),
}

#: Default solvent mixture of the synthetic workload: name -> share of the solvent molecules.
SOLVENT: dict[str, float] = {"water": 0.90, "methanol": 0.06, "ammonia": 0.04}


def synthetic_parts(
    n_fragments: int = 100_000,
    *,
    max_nbody: int = 3,
    n_monomers: int | None = None,
    solutes: Sequence[str] = ("phenol",),
    solvent: Mapping[str, float] | None = None,
    seed: int = 0,
    program: str = "nwchem",
    exponent: float = 3.5,
    seconds_per_unit: float = 2.0e-6,
    startup: float = 0.3,
    noise: float = 0.15,
) -> dict[str, Any]:
    """A made-up MBE(``max_nbody``) of solutes in a mixed solvent, NoCP, with exactly ``n_fragments``.

    Fragment 1.. are the ``solutes`` (default one phenol), the rest solvent molecules drawn
    from ``solvent`` (default 90 % water, 6 % methanol, 4 % ammonia), all scattered in a box at
    liquid density. Every fragment below ``max_nbody`` is kept; the ``max_nbody`` level is
    screened by distance (the most compact n-mers first) until the plan has ``n_fragments``
    fragments. Sizes are 6-31G basis functions (2 per H, 9 per C/N/O); a fragment takes
    ``startup + seconds_per_unit * size ** exponent`` seconds on one core, times log-normal
    noise (sigma ``noise``). With the defaults a water monomer takes 0.32 s, a water trimer
    1.0 s and phenol with two waters 21 s. Deterministic for a given ``seed``.
    """
    rng = random.Random(seed)
    mix = dict(SOLVENT if solvent is None else solvent)
    unknown = [m for m in [*solutes, *mix] if m not in MOLECULES]
    if unknown:
        raise ValueError(f"unknown molecule(s) {unknown}; known: {sorted(MOLECULES)}")
    if n_monomers is None:
        n_monomers = max_nbody
        while sum(math.comb(n_monomers, k) for k in range(1, max_nbody + 1)) < n_fragments:
            n_monomers += 1
        # Room for screening: the top level keeps only the most compact n-mers.
        n_monomers = max(max_nbody, int(n_monomers * 1.15) + 1)
    below = sum(math.comb(n_monomers, k) for k in range(1, max_nbody))
    if below > n_fragments:
        raise ValueError(f"{n_monomers} monomers already give {below} fragments below level {max_nbody}")
    names = list(solutes)
    kinds, weights = list(mix), list(mix.values())
    names += rng.choices(kinds, weights=weights, k=n_monomers - len(names))
    sizes = [2.0 * MOLECULES[n][0] + 9.0 * MOLECULES[n][1] for n in names]
    # Centres in a cube at ~1 molecule per 30 A^3 (liquid water).
    side = (30.0 * n_monomers) ** (1 / 3)
    pos = [(rng.uniform(0, side), rng.uniform(0, side), rng.uniform(0, side)) for _ in range(n_monomers)]
    combos: list[tuple[int, ...]] = []
    for k in range(1, max_nbody):
        combos.extend(itertools.combinations(range(n_monomers), k))
    need = n_fragments - len(combos)
    top = sorted(itertools.combinations(range(n_monomers), max_nbody),
                 key=lambda c: max(math.dist(pos[i], pos[j]) for i, j in itertools.combinations(c, 2)))[:need]
    combos.extend(sorted(top))
    if len(combos) != n_fragments:
        raise ValueError(f"cannot make {n_fragments} fragments from {n_monomers} monomers")
    frags: list[Fragment] = []
    durations: dict[str, float] = {}
    group = f"{program}:(auto)"
    for combo in combos:
        real = tuple(i + 1 for i in combo)
        size = sum(sizes[i] for i in combo)
        label = json.dumps(["(auto)", list(real), list(real)])
        frags.append(Fragment(label, len(real), "(auto)", program, real, real, size, size ** exponent, group))
        durations[label] = (startup + seconds_per_unit * size ** exponent) * math.exp(rng.gauss(0.0, noise))
    counts = {n: names.count(n) for n in dict.fromkeys(names)}
    what = ", ".join(f"{c} {n}" for n, c in counts.items())
    return {"fragments": frags, "durations": durations,
            "name": f"synthetic MBE({max_nbody}) NoCP of {n_monomers} molecules ({what})",
            "source": f"cost law ({startup} + {seconds_per_unit:g} * size^{exponent}) * lognormal({noise}), "
                      f"seed {seed}"}
