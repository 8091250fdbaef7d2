"""Resource quantities in the form the API server stores them, so what we apply is what we read back.

The API server parses every quantity and writes it back canonical (`k8s.io/apimachinery/pkg/api/resource`,
CanonicalizeBytes; ResourceList values rounded up to milli units): `cpu: "0.5"` comes back `500m`,
`memory: 1024Mi` comes back `1Gi`. Rendering the canonical form keeps the desired-vs-live comparison
honest; rendering the user's spelling would re-apply the same Deployment on every resync.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction

_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([a-zA-Z]*)$")


def canonical(text: str) -> str:
    """The canonical form of a ResourceList quantity (DecimalSI or BinarySI), e.g. "0.5" -> "500m"."""
    match = _QUANTITY.match(text.strip())
    if not match or match.group(2) not in {**_DECIMAL, **_BINARY}:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    number, suffix = match.groups()
    binary = suffix in _BINARY
    value = Fraction(Decimal(number)) * (2 ** _BINARY[suffix] if binary else Fraction(10) ** _DECIMAL[suffix])
    value = Fraction(math.ceil(value * 1000), 1000)  # SetDefaults_ResourceList: RoundUp(-3)
    if value == 0:
        return "0"
    if binary and value >= 1024 and value.denominator == 1:
        mantissa, exponent = int(value), 0
        while mantissa % 1024 == 0 and exponent < 60:
            mantissa, exponent = mantissa // 1024, exponent + 10
        return f"{mantissa}{next((s for s, e in _BINARY.items() if e == exponent), '')}"
    exponent = 0
    while value.denominator != 1:
        value, exponent = value * 10, exponent - 1
    mantissa = int(value)
    while mantissa % 10 == 0:
        mantissa, exponent = mantissa // 10, exponent + 1
    shift = exponent % 3  # exponents are multiples of three; the mantissa grows instead
    mantissa, exponent = mantissa * 10**shift, exponent - shift
    suffix = next((s for s, e in _DECIMAL.items() if e == exponent), None)
    return f"{mantissa}{suffix}" if suffix is not None else f"{mantissa}e{exponent}"
