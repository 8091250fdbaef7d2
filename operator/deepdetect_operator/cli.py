"""`deepdetect-operator`: run the operator, print its CRD, or render a CR offline.

`render -f CR.yaml` prints exactly the children the operator would apply (through the same pure
`render.py`), so a spec can be reviewed, diffed or validated without a cluster. `crd` prints the generated
CRD (`make crds`). `run` starts the kopf operator from `runtime.py`, imported only for that command, so
`render` and `crd` work without kopf's runtime dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from deepdetect_operator import __version__, render
from deepdetect_operator.api import API_VERSION, DEFAULT_SERVER_IMAGE, KIND, jobs_need_redis, parse_spec

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
EXIT_INVALID = 2


class InvalidResource(Exception):
    """A CR the operator would refuse; the message is one line, field paths included."""


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's config.yaml) as `|` blocks, so the output reads like a file."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


def dump_documents(docs: Sequence[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_BlockDumper, sort_keys=False, width=110, explicit_start=True)


def flatten_validation_error(err: ValidationError, prefix: str = "spec") -> str:
    """pydantic errors -> 'spec.a.b: message; spec.c: message' (camelCase paths, as in the CR)."""
    parts = []
    for item in err.errors():
        path = ".".join([prefix, *(str(p) for p in item["loc"])])
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{path}: {message}")
    return "; ".join(parts)


def _load_documents(path: str) -> list[Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise InvalidResource(f"not valid YAML: {' '.join(str(exc).split())}") from exc


def render_inputs(
    obj: Any, *, image: str, digest: str, namespace: str, service_monitor: bool
) -> render.RenderInputs:
    """A CR mapping -> RenderInputs, or InvalidResource with a one-line reason."""
    if not isinstance(obj, dict):
        raise InvalidResource("expected a mapping")
    if obj.get("apiVersion") != API_VERSION or obj.get("kind") != KIND:
        raise InvalidResource(f"expected apiVersion {API_VERSION} and kind {KIND}")
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise InvalidResource("metadata.name: required")
    if not isinstance(obj.get("spec"), dict):
        raise InvalidResource("spec: required")
    try:
        spec = parse_spec(obj["spec"])
    except ValidationError as exc:
        raise InvalidResource(f"{name}: {flatten_validation_error(exc)}") from exc
    refusal = jobs_need_redis(spec)
    if refusal is not None:  # the operator refuses it too (Degraded, JobsNeedRedis)
        raise InvalidResource(f"{name}: {refusal}")
    return render.RenderInputs(
        name=name,
        namespace=meta.get("namespace") or namespace,
        uid=meta.get("uid") or PLACEHOLDER_UID,
        spec=spec,
        default_image=image,
        checkpoint_digest=digest,
        service_monitor_available=service_monitor,
    )


def _secret_note(inp: render.RenderInputs) -> str:
    if inp.spec.auth.mode != "apiKey":
        return ""
    secret = render.api_key_secret_name(inp.name, inp.spec)
    if inp.spec.auth.secret_name:
        return f"# Pods read the API key from your Secret {secret!r} (key {render.API_KEY_KEY!r}).\n"
    return (
        f"# Secret {secret!r} (key {render.API_KEY_KEY!r}) is not shown: the operator generates a\n"
        "# random key at reconcile time, creates it once and never overwrites it.\n"
    )


def _iter_render(args: argparse.Namespace) -> Iterator[str]:
    for obj in _load_documents(args.filename):
        inp = render_inputs(
            obj,
            image=args.image,
            digest=args.digest,
            namespace=args.namespace,
            service_monitor=args.service_monitor,
        )
        yield _secret_note(inp) + dump_documents(render.render_children(inp))


def cmd_render(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        chunks = list(_iter_render(args))  # validate every document before printing any
    except (InvalidResource, OSError) as exc:
        print(f"error: {args.filename}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if not chunks:
        print(f"error: {args.filename}: no {KIND} in it", file=sys.stderr)
        return EXIT_INVALID
    out.write("".join(chunks))
    return 0


def cmd_crd(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    from deepdetect_operator.crd import crd_yaml

    out.write(crd_yaml())
    return 0


def _add_render(sub: Any) -> None:
    p = sub.add_parser("render", help="print the children a DeepDetectService would get (offline)")
    p.add_argument("-f", "--filename", required=True, help="CR YAML file (one or more documents; - = stdin)")
    p.add_argument("--image", default=DEFAULT_SERVER_IMAGE, help="default server image (spec.image wins)")
    p.add_argument("--digest", default="", help="resolved checkpoint digest, e.g. sha256:<hex>")
    p.add_argument("-n", "--namespace", default="default", help="namespace when the CR has none")
    p.add_argument(
        "--service-monitor",
        action="store_true",
        help="assume the ServiceMonitor CRD exists (render it when spec.monitoring.serviceMonitor)",
    )
    p.set_defaults(func=cmd_render)


def _add_run(sub: Any, with_runtime: bool) -> None:
    p = sub.add_parser("run", help="run the operator (kopf)")
    if not with_runtime:
        return
    runtime = importlib.import_module("deepdetect_operator.runtime")  # heavy (kopf): only for `run`
    runtime.add_arguments(p)
    p.set_defaults(func=runtime.run)


def build_parser(with_runtime: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepdetect-operator", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub, with_runtime)
    _add_render(sub)
    crd = sub.add_parser("crd", help="print the CustomResourceDefinition (generated from api.py)")
    crd.set_defaults(func=cmd_crd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(with_runtime=args_list[:1] == ["run"])
    except ModuleNotFoundError as exc:
        print(f"error: cannot start the operator: {exc}", file=sys.stderr)
        return 1
    args = parser.parse_args(args_list)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
