"""A fragment's result as the coordinator needs it: built where the fragment ran, sent back small.

An ``AtomicResult`` is mostly the program's output text (22 of 28 KB for a MOPAC water hexamer);
assembly needs only its ``return_*`` properties, and the result store only its JSON. Executors whose
results cross a process boundary (Dask) may return a :class:`CompactResult` when the job says the
scheduler takes one (:attr:`~qcmb_async._core.contract.FragmentJob.compact`): the coordinator then
neither unpickles nor validates the full model, and the store writes the JSON the worker made from
the very ``AtomicResult`` QCEngine returned, the same text the coordinator would have written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PROPERTIES = ("energy", "gradient", "hessian")


def component_properties(result: Any, driver: str) -> dict[str, Any]:
    """The ``return_<p>`` values QCManyBody's own loop collects from one ``AtomicResult``.

    MOPAC's harness leaves ``properties.return_gradient`` empty but puts the gradient in
    ``return_result``; the driver's quantity is taken from there when the property is missing.
    Returns ``{"energy": float, "gradient": array, "hessian": array}`` (those present; Eh, Eh/bohr...).
    """
    props: dict[str, Any] = {}
    for p in PROPERTIES:
        value = getattr(result.properties, f"return_{p}", None)
        if value is not None:
            props[p] = value
    if driver in PROPERTIES and driver not in props and result.return_result is not None:
        props[driver] = result.return_result
    if "energy" in props:
        props["energy"] = float(props["energy"])  # analyze() rejects ints
    return props


@dataclass(frozen=True)
class CompactResult:
    """What the coordinator keeps of a successful ``AtomicResult`` (picklable, small)."""

    properties: dict[str, Any]
    """:func:`component_properties` of the result: what assembly and energy screening read."""
    json: str | None = None
    """``AtomicResult.model_dump_json()``, when the result store keeps the result (else ``None``)."""

    @classmethod
    def of(cls, result: Any, *, with_json: bool) -> CompactResult:
        """The compact form of a QCSchema v2 ``AtomicResult`` (its own driver picks the properties)."""
        driver = result.input_data.specification.driver
        return cls(component_properties(result, str(getattr(driver, "value", driver))),
                   result.model_dump_json() if with_json else None)

    def model(self) -> Any:
        """The full ``AtomicResult`` again (needs :attr:`json`; raises ``ValueError`` without it)."""
        from qcelemental.models.v2 import AtomicResult

        if self.json is None:
            raise ValueError("this CompactResult was built without the result's JSON")
        return AtomicResult.model_validate_json(self.json)
