"""Kubernetes resource quantities as exact numbers, so two spellings of one amount compare equal.

Who calls it: the operator shell's drift check (``shell.drift``). The API server stores a
quantity in its canonical spelling, not as applied: ``0.5`` comes back as ``500m``, ``1024Mi`` as
``1Gi``, the integer ``1`` as the string ``"1"``. Comparing the strings would see drift after
every apply; comparing the parsed amounts sees only real edits. Pure: no I/O.
"""

from __future__ import annotations

import re
from fractions import Fraction

_SUFFIXES: dict[str, Fraction] = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
    "Pi": Fraction(2**50),
    "Ei": Fraction(2**60),
}
# sign, digits with an optional fraction, then a decimal exponent (e3/E3) or a suffix: "1E" is
# one exa, "1E3" a thousand, as in Kubernetes' own parser.
_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:[eE](?P<exponent>[+-]?[0-9]+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)$"
)


def parse_quantity(value: object) -> Fraction | None:
    """The amount a quantity stands for, exactly; None when ``value`` is not a quantity."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Fraction(value)
    if not isinstance(value, str):
        return None
    match = _QUANTITY.match(value.strip())
    if match is None:
        return None
    number = Fraction(match["number"])
    if match["exponent"] is not None:
        return number * Fraction(10) ** int(match["exponent"])
    return number * _SUFFIXES[match["suffix"] or ""]


def equal_quantities(a: object, b: object) -> bool:
    """True when ``a`` and ``b`` are the same amount, however each is spelled."""
    if a == b:
        return True
    parsed_a, parsed_b = parse_quantity(a), parse_quantity(b)
    return parsed_a is not None and parsed_a == parsed_b
