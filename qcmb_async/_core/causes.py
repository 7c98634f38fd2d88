"""The program's own error line(s) out of a QCEngine failure message.

QCEngine's message for a failed subprocess program (NWChem, MOPAC, ...) is
``INPUT: <deck> STDOUT: <output> STDERR: <stderr> TRACEBACK: <python traceback>``; for NWChem
the deck and its echo fill the first kilobytes, so a cut-off message shows only the input.
In-process programs (PySCF) and Psi4's JSON mode return a Python traceback whose last
exception line is the cause. :func:`extract_cause` finds those lines; the full message is
kept elsewhere (store, ``FragmentError.error_message``, ``--debug``).

The lowest layer of the package: it imports nothing of qcmb_async (``errors.py`` imports it, for
``FragmentError.cause``), which tests/test_architecture.py checks.
"""

from __future__ import annotations

import re

CAUSE_LIMIT = 500
"""Characters of extracted cause kept in a one-line message."""

_SECTION = re.compile(r"(?:^|(?<=: ))(INPUT|STDOUT|STDERR|TRACEBACK):[ \t]*$", re.M)
_QCENGINE_PREFIX = re.compile(r"^QCEngine [\w ]*Error:\s*")
# Words that mark a program's diagnostic line (NWChem, MOPAC, Open MPI, Fortran runtimes, shells).
_ERRORISH = re.compile(
    r"error|fail|abort|fatal|could not|cannot|can't|unable|not found|non-existing|does not exist|no such|"
    r"insufficient|exceed|too many|too large|out of memory|not enough|killed|segmentation|illegal|"
    r"unrecognized|unknown|invalid|not converge|signal|\bfault\b|\bin error\b|not spanned|impossible",
    re.I,
)
# Boilerplate that matches the words above but says nothing about this failure.
_NOISE = re.compile(
    r"MPI_ABORT was invoked|invoking MPI_ABORT|kill all MPI processes|with errorcode|For more information see|"
    r"For further details see|may or may not see output|^-+$|^=+$|^\s*$|"
    r"^[\w .()-]+ = \S+$",  # settings printed as "hardfail = no"
    re.I,
)
_PY_EXC = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|NotFound|Failure|Warning)\b.*?:?")
_MPI_PREFIX = re.compile(r"^(?:\[\d+\]\s*)?(?:ARMCI Error:\s*)?(?:\d+:)?")
_TRACEBACK_HEAD = "Traceback (most recent call last):"
# MOPAC (v22) ends every run, failed or not, with a starred box listing its error and termination
# messages: the box's header is the robust marker (its banner and keyword echo are upper case too).
_MOPAC_BOX = re.compile(r"Error and normal termination messages reported in this calculation\s*\*(.*?)"
                        r"(?:\*{20,}|TOTAL JOB TIME|== MOPAC DONE ==|$)", re.S)
_MOPAC_BANNER = re.compile(r"\*\*\s+MOPAC v?\d")
_MOPAC_NORMAL = re.compile(r"^(?:JOB ENDED NORMALLY|COMPUTATION TIME|.*CALCULATION DONE)", re.I)
_MAX_LINES = 4


def _sections(message: str) -> dict[str, str]:
    """``{"INPUT": ..., "STDOUT": ..., ...}`` of a QCEngine subprocess failure; ``{}`` for other messages."""
    marks = list(_SECTION.finditer(message))
    if not marks:
        return {}
    out: dict[str, str] = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(message)
        out.setdefault(m.group(1), message[m.end():end])
    return out


def _squash(line: str) -> str:
    return " ".join(line.split())


def python_exception(text: str) -> str:
    """The final exception line (with its continuation lines) of the last traceback in ``text``, or ``""``."""
    at = text.rfind(_TRACEBACK_HEAD)
    if at < 0:
        return ""
    lines = text[at:].splitlines()[1:]
    for i, line in enumerate(lines):
        if line and not line[0].isspace() and _PY_EXC.match(line):
            tail = [line]
            for more in lines[i + 1:]:  # e.g. Psi4's BasisSetNotFound lists what it searched
                if not more.strip() or more.startswith(("Traceback", "During handling", "The above exception")):
                    break
                tail.append(more)
            return _squash(" ".join(tail))
    return ""


def mopac_messages(text: str) -> list[str]:
    """MOPAC's own error lines: the entries of its "Error and normal termination messages" box.

    Output cut off before that box: its diagnostic lines (never the starred banner and keyword echo).
    ``[]`` when ``text`` is not MOPAC output or the box holds only "JOB ENDED NORMALLY".
    """
    m = _MOPAC_BOX.search(text)
    if not m:
        if _MOPAC_BANNER.search(text):  # output cut off before the box: its diagnostic lines, not the banner
            return _diagnostics("\n".join(x for x in text.splitlines() if not x.strip().startswith("*")), set())
        return []
    # Each box line is "* MESSAGE   *"; split on the stars so a squashed (one-line) message works too.
    entries = (_squash(x) for x in re.split(r"(?:^|\s)\*+(?=\s|$)", m.group(1)))
    return [e for e in dict.fromkeys(entries) if e and not _MOPAC_NORMAL.match(e)]


def _same(a: str, b: str) -> bool:
    """One diagnostic repeated (NWChem prints its error to stdout, then via ARMCI to stderr)."""
    ka, kb = (re.sub(r"[\s:]*\d*[\s:]*$", "", x) for x in (a, b))
    return ka in kb or kb in ka


def _diagnostics(text: str, deck: set[str]) -> list[str]:
    """Lines of program output that look like diagnostics, echoed input lines excluded."""
    found: list[str] = []
    lines = text.splitlines()
    for i, raw in enumerate(lines):
        line = _squash(raw)
        if not line or line in deck or _NOISE.search(line) or not _ERRORISH.search(line):
            continue
        if line.endswith(":"):  # "Attempting to read a basis set from a non-existing file:" + the file
            nxt = next((_squash(x) for x in lines[i + 1:i + 3] if x.strip()), "")
            if nxt and not _NOISE.search(nxt):
                line = f"{line} {nxt}"
        # "[0] ARMCI Error: 0:bas_tag_lib: failed ..." repeats what stdout said; keep the first wording.
        core = _MPI_PREFIX.sub("", line)
        if any(_same(core, f) for f in found):
            continue
        found.append(core)
    return found


#: Error types qcmb_async itself writes; their first line is the cause (the rest is context).
OWN_ERRORS = frozenset({"ProgramKilled", "WorkerDied", "TimeoutError", "CancelledError"})


def extract_cause(message: str | None, limit: int = CAUSE_LIMIT, error_type: str | None = None) -> str:
    """The program's actual error line(s) from a QCEngine error message, on one line.

    ``error_type`` one of :data:`OWN_ERRORS`: the message's first line (qcmb_async's own words,
    e.g. "program nwchem (pid 12) was killed by SIGKILL").

    MOPAC output: the entries of its "Error and normal termination messages" box.
    Subprocess failures: diagnostic lines of STDERR and STDOUT (never the echoed input), else
    the traceback's exception line. Python tracebacks: the final exception line. Anything else:
    the message itself. Always at most ``limit`` characters; ``""`` for an empty message.
    """
    text = _QCENGINE_PREFIX.sub("", str(message or "")).strip()
    if not text:
        return ""
    if error_type in OWN_ERRORS:
        first = _squash(text.splitlines()[0])
        return first if len(first) <= limit else first[:limit] + " ..."
    parts = _sections(text)
    mopac = mopac_messages(text)
    if mopac:
        cause = " | ".join(mopac[:_MAX_LINES])
    elif parts:
        deck = {_squash(x) for x in parts.get("INPUT", "").splitlines() if x.strip()}
        stdout, stderr = parts.get("STDOUT", ""), parts.get("STDERR", "")
        # Output order: stdout's diagnostics first (the program's own words), then stderr's new ones.
        ordered = _diagnostics(stdout, deck)
        ordered += [x for x in _diagnostics(stderr, deck) if not any(_same(x, o) for o in ordered)]
        cause = " | ".join(ordered[:_MAX_LINES])
        if not cause:
            cause = python_exception(parts.get("TRACEBACK", ""))
        if not cause:
            tail = [_squash(x) for x in (parts.get("STDERR", "") or stdout).splitlines() if x.strip()]
            cause = " | ".join(tail[-2:])
    else:
        cause = python_exception(text) or _squash(text)
    if not cause:
        cause = _squash(text)
    return cause if len(cause) <= limit else cause[:limit] + " ..."
