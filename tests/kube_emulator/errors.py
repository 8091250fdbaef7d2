"""The API server's error answers, in the shapes clients see: a `Status` body with the real reason and
message (`k8s.io/apimachinery/pkg/api/errors`), field errors formatted like
`k8s.io/apimachinery/pkg/util/validation/field` (`ErrorBody`), several of them aggregated as `[a, b]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

OMIT = object()  # field.OmitValueType: the error shows no value ("Invalid value: message")

# field.ErrorType.String(), and whether ErrorBody prints the bad value after it.
_SHOWS_VALUE = {
    "Invalid value": True,
    "Unsupported value": True,
    "Duplicate value": True,
    "Not found": True,
    "Too many": True,
    "Required value": False,
    "Forbidden": False,
    "Too long": False,
    "Internal error": False,
}


class GoRepr(str):
    """A bad value that Go prints as a struct or map (`map[string]string{...}`), not as a quoted string."""


def go_value(value: Any) -> str:
    """How ErrorBody prints a bad value: %v for numbers and bools, %q for strings, "null" for nil."""
    if isinstance(value, GoRepr):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[]interface {}{" + ", ".join(go_value(v) for v in value) + "}"
    return (
        "map[string]interface {}{"
        + ", ".join(f"{json.dumps(k)}:{go_value(v)}" for k, v in sorted(value.items()))
        + "}"
    )


def go_number(value: float) -> str:
    """%v of a float64 limit (`minimum: 1` prints 1, not 1.0)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@dataclass(frozen=True)
class FieldError:
    """One `field.Error`: `<field>: <type>[: <value>][: <detail>]`."""

    type: str
    field: str
    value: Any = OMIT
    detail: str = ""

    def body(self) -> str:
        text = self.type
        if _SHOWS_VALUE[self.type] and self.value is not OMIT:
            text = f"{self.type}: {go_value(self.value)}"
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field or '<nil>'}: {self.body()}"


def invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError("Invalid value", path, value, detail)


def required(path: str, detail: str = "") -> FieldError:
    return FieldError("Required value", path, OMIT, detail)


def forbidden(path: str, detail: str) -> FieldError:
    return FieldError("Forbidden", path, OMIT, detail)


def not_supported(path: str, value: Any, supported: list[str]) -> FieldError:
    detail = "supported values: " + ", ".join(json.dumps(s) for s in supported) if supported else ""
    return FieldError("Unsupported value", path, value, detail)


def too_many(path: str, actual: int, most: int) -> FieldError:
    return FieldError("Too many", path, actual, f"must have at most {most} items")


def too_long(path: str, most: int, *, crd_schema: bool = False) -> FieldError:
    # field.TooLongMaxLength (CRD schema maxLength) words it differently from field.TooLong.
    detail = f"may not be longer than {most}" if crd_schema else f"must have at most {most} bytes"
    return FieldError("Too long", path, OMIT, detail)


def aggregate(errors: list[Any]) -> str:
    """utilerrors.NewAggregate(...).Error(): one message as is, several as `[a, b]` (duplicates once)."""
    messages: list[str] = []
    for err in errors:
        if str(err) not in messages:
            messages.append(str(err))
    return messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"


@dataclass
class APIError(Exception):
    """An answer other than 2xx: HTTP status, Status.reason, Status.message, optional details."""

    status: int
    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(f"{self.status} {self.reason}: {self.message}")

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.status,
        }
        if self.details:
            out["details"] = self.details
        return out


def qualified(plural_or_kind: str, group: str) -> str:
    """`widgets.conf.example.io`, `deployments.apps`, `configmaps` (schema.GroupResource.String())."""
    return f"{plural_or_kind}.{group}" if group else plural_or_kind


def not_found(plural: str, group: str, name: str) -> APIError:
    return APIError(
        404,
        "NotFound",
        f'{qualified(plural, group)} "{name}" not found',
        {"name": name, "group": group, "kind": plural},
    )


def already_exists(plural: str, group: str, name: str) -> APIError:
    return APIError(
        409,
        "AlreadyExists",
        f'{qualified(plural, group)} "{name}" already exists',
        {"name": name, "group": group, "kind": plural},
    )


def conflict(plural: str, group: str, name: str, why: str) -> APIError:
    message = f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": {why}'
    return APIError(409, "Conflict", message, {"name": name, "group": group, "kind": plural})


STALE = "the object has been modified; please apply your changes to the latest version and try again"


def unprocessable(qualified_kind: str, name: str, errors: list[Any]) -> APIError:
    """errors.NewInvalid: `Widget.conf.example.io "w2" is invalid: spec: Invalid value: size too big`
    (`errors` are FieldErrors or their text)."""
    message = f'{qualified_kind} "{name}" is invalid: {aggregate(errors)}'
    kind, _, group = qualified_kind.partition(".")
    causes = []
    for err in errors:
        where, _, body = str(err).partition(": ")
        causes.append(
            {
                "reason": "Field" + body.split(":")[0].replace(" value", "Value").replace(" ", ""),
                "message": body,
                "field": where,
            }
        )
    return APIError(422, "Invalid", message, {"name": name, "group": group, "kind": kind, "causes": causes})


def bad_request(message: str) -> APIError:
    return APIError(400, "BadRequest", message)


def forbidden_error(message: str) -> APIError:
    return APIError(403, "Forbidden", message)


def method_not_allowed(
    message: str = "the server does not allow this method on the requested resource",
) -> APIError:
    return APIError(405, "MethodNotAllowed", message)


def unsupported_media_type(ctype: str, accepted: list[str]) -> APIError:
    message = (
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(accepted)}"
    )
    return APIError(415, "UnsupportedMediaType", message)
