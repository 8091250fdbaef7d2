"""resource.Quantity as the API server stores it: parsed, then written back in canonical form.

A real server never echoes `cpu: "0.5"` or `memory: 1024Mi`: it answers `500m` and `1Gi`
(`k8s.io/apimachinery/pkg/api/resource/quantity.go`, `CanonicalizeBytes`), and rounds ResourceList values up
to milli precision (`SetDefaults_ResourceList` in `pkg/apis/core/v1/defaults.go`). An operator that
compares what it sent with what it reads back must compare canonical forms.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction

_DECIMAL_SI = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY_SI = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_NUMBER = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")
_EXPONENT = re.compile(r"^[eE]([+-]?[0-9]+)$")


class QuantityError(ValueError):
    pass


def parse(text: str | int | float) -> tuple[Fraction, str]:
    """(exact value, format) where format is DecimalSI, BinarySI or DecimalExponent (from the suffix)."""
    raw = str(text).strip()
    match = _NUMBER.match(raw)
    if not match:
        raise QuantityError(
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    number, suffix = match.groups()
    value = Fraction(Decimal(number))
    if suffix in _BINARY_SI:
        return value * 2 ** _BINARY_SI[suffix], "BinarySI"
    if suffix in _DECIMAL_SI:
        return value * Fraction(10) ** _DECIMAL_SI[suffix], "DecimalSI"
    exponent = _EXPONENT.match(suffix)
    if exponent:
        return value * Fraction(10) ** int(exponent.group(1)), "DecimalExponent"
    raise QuantityError("unable to parse quantity's suffix")


def _decimal_mantissa(value: Fraction) -> tuple[int, int]:
    """value == mantissa * 10**exponent with an integer mantissa free of trailing zeros."""
    exponent = 0
    while value.denominator != 1:
        value *= 10
        exponent -= 1
    mantissa = int(value)
    while mantissa and mantissa % 10 == 0:
        mantissa //= 10
        exponent += 1
    return mantissa, exponent


def canonical(text: str | int | float, *, round_to_milli: bool = False) -> str:
    """The string a real API server stores for this quantity."""
    value, fmt = parse(text)
    if round_to_milli:  # RoundUp(-3): away from zero, to a whole number of milli-units
        scaled = value * 1000
        value = Fraction(math.ceil(scaled) if scaled > 0 else math.floor(scaled), 1000)
    if value == 0:
        return "0"
    if fmt == "BinarySI" and (-1024 < value < 1024 or value.denominator != 1):
        fmt = "DecimalSI"  # small or fractional: shown in decimal, never rounded
    if fmt == "BinarySI":
        mantissa, exponent = int(value), 0
        while mantissa % 1024 == 0 and exponent < 60:
            mantissa //= 1024
            exponent += 10
        suffix = next((s for s, e in _BINARY_SI.items() if e == exponent), "")
        return f"{mantissa}{suffix}"
    mantissa, exponent = _decimal_mantissa(value)
    shift = exponent % 3  # exponents are multiples of three, the mantissa grows instead
    mantissa, exponent = mantissa * 10**shift, exponent - shift
    if exponent == 0:
        return str(mantissa)
    if fmt == "DecimalSI":
        suffix = next((s for s, e in _DECIMAL_SI.items() if e == exponent), None)
        if suffix is not None:
            return f"{mantissa}{suffix}"
    return f"{mantissa}e{exponent}"
