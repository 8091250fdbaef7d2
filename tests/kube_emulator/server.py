"""The test API server: a kmock 0.8 `KubernetesEmulator` subclass that answers as kube-apiserver v1.36 does.

kmock gives the HTTP server, request recording, discovery data of the built-in kinds and the object
store; this class replaces the rest of its request handling with what a real API server does (each
behaviour is checked against a recorded real server in tests/k8s_conformance/cases.json):

- routing of every resource path, `/api/v1/namespaces` included; discovery from what is registered
  (built-ins, and the kinds of every CRD created through `apiextensions.k8s.io/v1`);
- one write pipeline for create, PUT, merge/JSON/strategic patches and server-side apply: unknown fields
  dropped (400 under `fieldValidation=Strict`, a `Warning` header otherwise), typed decoding of built-ins,
  `/status` isolation, server-set metadata, defaults (built-ins: defaults.py; custom kinds: structural
  defaults), canonical quantities, validation (422 with the real message), generation rules, field
  ownership in `managedFields` (ssa.py), no write at all when nothing changed;
- optimistic concurrency (a stale resourceVersion is a 409), namespaces that must exist (and stop
  accepting content while terminating), DELETE with preconditions, finalizers, and the garbage
  collector's and namespace controller's work done synchronously;
- watches from a resourceVersion, label/field selectors, pagination, `/scale` for kinds that have it.

What it still is not (tests/README.md): no controllers (a Deployment gets status only from `set_status`),
no admission webhooks, no RBAC, no API version conversion, garbage collection at once rather than
eventually.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import datetime
import itertools
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import aiohttp.web
import attrs
import kmock
import yaml
from apiserver_rules import crd_defaults, crd_errors
from kmock._internal import rendering

from kube_emulator import defaults, ssa
from kube_emulator.decoding import normalize_builtin, prune, type_errors
from kube_emulator.errors import (
    STALE,
    APIError,
    GoRepr,
    already_exists,
    bad_request,
    conflict,
    forbidden,
    forbidden_error,
    invalid,
    method_not_allowed,
    not_found,
    required,
    unprocessable,
    unsupported_media_type,
)
from kube_emulator.kinds import (
    RETURNS_DELETED,
    Kind,
    custom_errors,
    custom_kinds,
    prune_nulls,
    resource_info,
    structural_default,
)
from kube_emulator.patches import json_patch, merge_patch, strategic_merge_patch
from kube_emulator.schema import OBJECT_META, UNTYPED, Node, definitions
from kube_emulator.selectors import field_selector_errors, selected
from kube_emulator.validation import builtin_errors, meta_errors, selector_text
from kube_emulator.watch import Change, ChangeLog, Watcher

Obj = dict[str, Any]

APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
SERVER_VERSION = {
    "major": "1",
    "minor": "36",
    "gitVersion": "v1.36.2-kube-emulator",
    "platform": "linux/amd64",
}
CRDS = kmock.resource(group="apiextensions.k8s.io", version="v1", plural="customresourcedefinitions")
NAMESPACES = kmock.resource(group="", version="v1", plural="namespaces")
CRD_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"
NAMESPACE_FINALIZER = "kubernetes"

# Query parameters the API server parses with strconv.ParseInt: `timeoutSeconds=300.0` is a 400.
_INTEGER_PARAMS = ("timeoutSeconds", "limit", "gracePeriodSeconds")
_GO_INT = re.compile(r"^[+-]?[0-9]+$")


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def integer_param_error(params: Any) -> APIError | None:
    """The real server's 400 for an integer query parameter that is not a Go integer, else None."""
    for name in _INTEGER_PARAMS:
        value = params.get(name)
        if value is not None and not _GO_INT.match(str(value)):
            return bad_request(f'strconv.ParseInt: parsing "{value}": invalid syntax')
    return None


class Route(NamedTuple):
    group: str
    version: str
    namespace: str | None
    plural: str
    name: str | None
    subresource: str | None


def parse_route(path: str) -> Route | None:
    """A resource path (`/api/v1/namespaces/ns/configmaps/x/status`, `/api/v1/namespaces/ns`, ...)."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 3 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 4 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    name = rest[1] if len(rest) > 1 else None
    sub = "/".join(rest[2:]) or None
    return Route(group, version, namespace, rest[0], name, sub)


@dataclass
class Answer:
    """What the emulator answered to one recorded request."""

    request: rendering.Request
    status: int
    reason: str = ""
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    injected: bool = False


def _user_agent(request: rendering.Request) -> str:
    for key, value in request.headers.items():
        if key.lower() == "user-agent":
            return str(value)
    return ""


def _manager_from_agent(agent: str) -> str:
    """prefixFromUserAgent: `kopf/1.45.2` manages fields as `kopf`."""
    return "".join(ch for ch in agent.split("/")[0] if ch.isprintable())[:128]


def _ctype(request: rendering.Request) -> str:
    for key, value in request.headers.items():
        if key.lower() == "content-type":
            return str(value).split(";")[0].strip()
    return ""


_INVALID_BODY = object()


def _decode_body(body: bytes, ctype: str) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        if ctype != APPLY_PATCH:
            return _INVALID_BODY
    try:  # an applied configuration may be YAML (JSON, which clients mostly send, is YAML too)
        return yaml.load(body.decode(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.YAMLError, UnicodeDecodeError):
        return _INVALID_BODY


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator answering like a real API server (see the module docstring)."""

    _rv: int = attrs.field(default=1000, init=False)
    _faults: list[list[Any]] = attrs.field(factory=list, init=False)
    _custom: dict[kmock.resource, Kind] = attrs.field(factory=dict, init=False)
    _builtin: dict[kmock.resource, Kind] = attrs.field(factory=dict, init=False)
    _log: ChangeLog = attrs.field(factory=ChangeLog, init=False)
    _answers: list[Answer] = attrs.field(factory=list, init=False)
    _terminating: set[tuple[kmock.resource, str]] = attrs.field(factory=set, init=False)
    _addresses: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _in_controllers: bool = attrs.field(default=False, init=False)

    # ------------------------------------------------------------ helpers for tests

    @property
    def recorded(self) -> list[rendering.Request]:
        """Every request served so far, in order."""
        return list(self._requests)

    @property
    def answers(self) -> list[Answer]:
        """What each recorded request got (status, reason, message, Warning headers)."""
        return list(self._answers)

    def refused(self, user_agent: str, *, allowed: tuple[int, ...] = ()) -> list[Answer]:
        """Answers >= 400 to a client (User-Agent prefix), injected faults and `allowed` statuses aside."""
        return [
            a
            for a in self._answers
            if a.status >= 400
            and not a.injected
            and a.status not in allowed
            and _user_agent(a.request).startswith(user_agent)
        ]

    def warnings(self, user_agent: str) -> list[str]:
        """Warning headers sent to a client: e.g. the fields the server dropped from what it sent."""
        return [w for a in self._answers if _user_agent(a.request).startswith(user_agent) for w in a.warnings]

    def writes(self, since: int = 0, user_agent: str | None = None) -> list[rendering.Request]:
        """Mutating requests (POST/PUT/PATCH/DELETE) recorded after index `since`, optionally by client."""
        out = []
        for req in self._requests[since:]:
            if req.method.value not in ("POST", "PUT", "PATCH", "DELETE"):
                continue
            if user_agent and not _user_agent(req).startswith(user_agent):
                continue
            out.append(req)
        return out

    def stored(self, resource: str | kmock.resource, namespace: str | None, name: str) -> Obj | None:
        """The stored object (a deep copy) or None."""
        obj = self._objects._objects.get((kmock.resource(resource), namespace, name))
        if obj is None or obj.deleted:
            return None
        return copy.deepcopy(obj.raw)

    def list_objects(self, resource: str | kmock.resource, namespace: str | None = None) -> list[Obj]:
        res = kmock.resource(resource)
        return [
            copy.deepcopy(obj.raw)
            for (r, ns, _), obj in self._objects._objects.items()
            if r == res and not obj.deleted and (namespace is None or ns == namespace)
        ]

    async def set_status(
        self,
        resource: str | kmock.resource,
        namespace: str | None,
        name: str,
        status: Obj,
        *,
        manager: str = "kube-controller-manager",
    ) -> Obj:
        """What a controller does: a merge patch of /status (nulls delete)."""
        kind = self._kind_or_404(kmock.resource(resource))
        return self._patch(kind, namespace, name, {"status": status}, MERGE_PATCH, {}, manager, "status")[0]

    async def remove(self, resource: str | kmock.resource, namespace: str | None, name: str) -> None:
        """Delete as `kubectl delete` would (finalizers honoured, dependents collected)."""
        self._delete(self._kind_or_404(kmock.resource(resource)), namespace, name, {})

    async def edit(
        self,
        resource: str | kmock.resource,
        namespace: str | None,
        name: str,
        patch: Obj,
        *,
        manager: str = "kubectl-edit",
    ) -> Obj:
        """A merge patch on the main resource, as `kubectl edit/patch` would send."""
        kind = self._kind_or_404(kmock.resource(resource))
        return self._patch(kind, namespace, name, patch, MERGE_PATCH, {}, manager, None)[0]

    def install(self, manifest: Obj, *, manager: str = "kubectl", force: bool = False) -> Obj:
        """Server-side apply outside HTTP, through the same pipeline (`kubectl apply --server-side`)."""
        api_version, kind_name = manifest.get("apiVersion", ""), manifest.get("kind", "")
        kind = self._kind_by_gvk(api_version, kind_name)
        meta = manifest.get("metadata") or {}
        params = {"fieldManager": manager, "force": "true" if force else "false"}
        return self._patch(
            kind, meta.get("namespace"), meta["name"], manifest, APPLY_PATCH, params, manager, None
        )[0]

    def seed(self, resource: str | kmock.resource, namespace: str | None, obj: Obj) -> Obj:
        """Store an object as an older version of its schema accepted it: neither defaulted nor validated
        now (an API server never re-validates what it stored when a CRD becomes stricter)."""
        kind = self._kind_or_404(kmock.resource(resource))
        new = copy.deepcopy(obj)
        meta = new.setdefault("metadata", {})
        meta.update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now())
        if kind.generation:
            meta["generation"] = 1
        self._commit(kind, namespace, meta["name"], None, new)
        return copy.deepcopy(new)

    def create_namespace(self, name: str) -> Obj:
        kind = self._kind_or_404(NAMESPACES)
        return self._create(
            kind,
            None,
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
            {},
            "kubectl-create",
        )

    def fail_next(self, method: str, path: str, status: int = 500, times: int = 1) -> None:
        """Fault injection: the next `times` requests with this method and a path matching the regex `path`
        get `status` (a `Status` body), before any other processing."""
        self._faults.append([method.upper(), re.compile(path), status, times])

    # ------------------------------------------------------------ kinds

    def _kind(self, resource: kmock.resource) -> Kind | None:
        if resource in self._custom:
            return self._custom[resource]
        if resource in self._builtin:
            return self._builtin[resource]
        if resource not in self.resources:
            return None
        info = self.resources[resource]
        node = Node.builtin(resource.group or "", resource.version or "", info.kind or "") or UNTYPED
        kind = Kind(
            group=resource.group or "",
            version=resource.version or "",
            plural=resource.plural or "",
            kind=info.kind or "",
            namespaced=bool(info.namespaced),
            node=node,
            subresources=set(info.subresources),
        )
        self._builtin[resource] = kind
        return kind

    def _kind_or_404(self, resource: kmock.resource) -> Kind:
        kind = self._kind(resource)
        if kind is None:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        return kind

    def _kind_by_gvk(self, api_version: str, kind_name: str) -> Kind:
        group, _, version = api_version.rpartition("/")
        for res in list(self._custom) + list(self.resources):
            if (res.group or "") == group and res.version == version:
                kind = self._kind(res)
                if kind is not None and kind.kind == kind_name:
                    return kind
        raise APIError(404, "NotFound", f'no matches for kind "{kind_name}" in version "{api_version}"')

    # ------------------------------------------------------------ HTTP

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        body = await raw.read()
        route = parse_route(raw.path)
        ctype = (raw.headers.get("Content-Type") or "").split(";")[0].strip()
        data = _decode_body(body, ctype)
        resource = (
            None
            if route is None
            else kmock.resource(group=route.group, version=route.version, plural=route.plural)
        )
        request = rendering.Request(
            id=len(self._requests),
            raw_request=raw,
            url=raw.url,
            method=raw.method,
            params=dict(raw.query),
            headers=dict(raw.headers),
            cookies=dict(raw.cookies),
            body=body,
            text=body.decode(errors="replace"),
            data=None if data is _INVALID_BODY else data,
            resource=resource,
            namespace=route.namespace if route else None,
            name=route.name if route else None,
            subresource=route.subresource if route else None,
        )
        self._requests.append(request)
        answer = Answer(request, 200)
        self._answers.append(answer)
        try:
            fault = self._injected_fault(raw.method, raw.path)
            if fault is not None:
                answer.injected = True
                raise APIError(fault, "Injected", "injected by fail_next")
            bad = integer_param_error(raw.query)
            if bad is not None:
                raise bad
            if data is _INVALID_BODY:
                raise bad_request("couldn't get version/kind; json parse error: invalid character")
            response = await self._dispatch(raw, route, request, data, answer)
        except APIError as exc:
            answer.status, answer.reason, answer.message = exc.status, exc.reason, exc.message
            return aiohttp.web.json_response(exc.body(), status=exc.status)
        answer.status = response.status
        return response

    def _injected_fault(self, method: str, path: str) -> int | None:
        for fault in self._faults:
            want, pattern, status, times = fault
            if times > 0 and method.upper() == want and pattern.search(path):
                fault[3] -= 1
                return int(status)
        return None

    def _json(self, obj: Any, status: int, answer: Answer) -> aiohttp.web.Response:
        response = aiohttp.web.json_response(obj, status=status)
        for warning in answer.warnings:
            response.headers.add("Warning", f'299 - "{warning}"')
        return response

    async def _dispatch(
        self,
        raw: aiohttp.web.BaseRequest,
        route: Route | None,
        request: rendering.Request,
        data: Any,
        answer: Answer,
    ) -> aiohttp.web.StreamResponse:
        method, params = raw.method.upper(), dict(raw.query)
        if route is None:
            if method != "GET":
                raise method_not_allowed()
            return self._json(self._discovery(raw.path), 200, answer)
        kind = self._kind_or_404(
            kmock.resource(group=route.group, version=route.version, plural=route.plural)
        )
        namespace = route.namespace if kind.namespaced else None
        if kind.namespaced is False and route.namespace is not None:
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        manager = params.get("fieldManager") or _manager_from_agent(_user_agent(request))
        sub = route.subresource
        if sub not in (None, "status", "scale") or (sub and sub not in kind.subresources):
            raise APIError(404, "NotFound", "the server could not find the requested resource")
        if method == "GET" and params.get("watch") in ("true", "1"):
            return await self._watch(raw, kind, namespace, route.name, params)
        if method == "GET":
            if route.name is None:
                return self._json(self._list(kind, namespace, params), 200, answer)
            obj = self._get(kind, namespace, route.name)
            return self._json(self._scale_of(kind, obj) if sub == "scale" else obj, 200, answer)
        if method == "POST":
            if route.name is not None:
                raise method_not_allowed()
            return self._json(
                self._create(kind, namespace, data, params, manager, answer.warnings), 201, answer
            )
        if route.name is None:
            if method == "DELETE":
                return self._json(self._delete_collection(kind, namespace, params), 200, answer)
            raise method_not_allowed()
        if method == "PUT":
            if sub == "scale":
                return self._json(
                    self._write_scale(kind, namespace, route.name, data, None, manager), 200, answer
                )
            return self._json(
                self._update(kind, namespace, route.name, data, params, manager, sub, answer.warnings),
                200,
                answer,
            )
        if method == "PATCH":
            ctype = _ctype(request)
            if sub == "scale":
                return self._json(
                    self._write_scale(kind, namespace, route.name, data, ctype, manager), 200, answer
                )
            obj, created = self._patch(
                kind, namespace, route.name, data, ctype, params, manager, sub, answer.warnings
            )
            return self._json(obj, 201 if created else 200, answer)
        if method == "DELETE":
            return self._json(self._delete(kind, namespace, route.name, data or {}, params), 200, answer)
        raise method_not_allowed()

    # ------------------------------------------------------------ discovery

    def _served(self) -> list[tuple[kmock.resource, Kind]]:
        out = []
        for res in list(self.resources) + [r for r in self._custom if r not in self.resources]:
            kind = self._kind(res)
            if kind is not None:
                out.append((res, kind))
        return out

    def _discovery(self, path: str) -> Obj:
        parts = [p for p in path.split("/") if p]
        served = self._served()
        if parts == ["version"]:
            return dict(SERVER_VERSION)
        if parts == []:
            paths = {"/api", "/api/v1", "/apis", "/version"}
            paths |= {f"/apis/{k.group}" for _, k in served if k.group}
            paths |= {f"/apis/{k.group}/{k.version}" for _, k in served if k.group}
            return {"paths": sorted(paths)}
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        groups: dict[str, list[str]] = {}
        for _, k in served:
            if k.group and k.version not in groups.setdefault(k.group, []):
                groups[k.group].append(k.version)

        def group_doc(name: str) -> Obj:
            versions = [{"groupVersion": f"{name}/{v}", "version": v} for v in groups[name]]
            return {"name": name, "versions": versions, "preferredVersion": versions[0]}

        if parts == ["apis"]:
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [group_doc(g) for g in sorted(groups)],
            }
        if len(parts) == 2 and parts[0] == "apis":
            if parts[1] not in groups:
                raise APIError(404, "NotFound", "the server could not find the requested resource")
            return {"kind": "APIGroup", "apiVersion": "v1", **group_doc(parts[1])}
        if (len(parts) == 2 and parts[0] == "api") or (len(parts) == 3 and parts[0] == "apis"):
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            resources = []
            for res, k in served:
                if k.group != group or k.version != version:
                    continue
                info = self.resources.get(res)
                entry = {
                    "name": k.plural,
                    "singularName": (info.singular if info else None) or k.kind.lower(),
                    "namespaced": k.namespaced,
                    "kind": k.kind,
                    "verbs": sorted(info.verbs)
                    if info
                    else ["create", "delete", "get", "list", "patch", "update", "watch"],
                    "shortNames": sorted(info.shortnames) if info else [],
                    "categories": sorted(info.categories) if info else [],
                }
                resources.append(entry)
                for sub in sorted(k.subresources):
                    resources.append(
                        {
                            "name": f"{k.plural}/{sub}",
                            "singularName": "",
                            "namespaced": k.namespaced,
                            "kind": "Scale" if sub == "scale" else k.kind,
                            "verbs": ["get", "patch", "update"],
                        }
                    )
            if not resources:
                raise APIError(404, "NotFound", "the server could not find the requested resource")
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/{version}".lstrip("/"),
                "resources": resources,
            }
        raise APIError(404, "NotFound", "the server could not find the requested resource")

    # ------------------------------------------------------------ reads

    def _raw(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        obj = self._objects._objects.get((kind.resource, namespace, name))
        return None if obj is None or obj.deleted else obj.raw

    def _get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        obj = self._raw(kind, namespace, name)
        if obj is None:
            raise not_found(kind.plural, kind.group, name)
        return obj

    def _matching(self, kind: Kind, namespace: str | None, params: dict[str, str]) -> list[Obj]:
        fs = params.get("fieldSelector")
        if fs:
            problem = field_selector_errors(fs, kind.plural)
            if problem is not None:
                raise problem
        found = [
            (ns or "", name, obj.raw)
            for (res, ns, name), obj in self._objects._objects.items()
            if res == kind.resource and not obj.deleted and (namespace is None or ns == namespace)
        ]
        return [
            obj
            for _, _, obj in sorted(found, key=lambda t: (t[0], t[1]))
            if selected(obj, params.get("labelSelector"), fs, kind.plural)
        ]

    def _list(self, kind: Kind, namespace: str | None, params: dict[str, str]) -> Obj:
        items = self._matching(kind, namespace, params)
        start = 0
        if params.get("continue"):
            try:
                start = int(json.loads(base64.b64decode(params["continue"]))["start"])
            except (ValueError, KeyError, binascii.Error):
                raise bad_request("continue key is not valid: illegal base64 data at input byte 0") from None
        limit = int(params.get("limit") or 0)
        meta: Obj = {"resourceVersion": str(self._rv)}
        page = items[start:]
        if limit and len(page) > limit:
            page = page[:limit]
            token = {"rv": self._rv, "start": start + limit}
            meta["continue"] = base64.b64encode(json.dumps(token).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
        if not kind.custom:  # typed lists carry no apiVersion/kind per item
            page = [{k: v for k, v in item.items() if k not in ("apiVersion", "kind")} for item in page]
        return {
            "kind": kind.list_kind or f"{kind.kind}List",
            "apiVersion": kind.api_version,
            "metadata": meta,
            "items": page,
        }

    async def _watch(
        self,
        raw: aiohttp.web.BaseRequest,
        kind: Kind,
        namespace: str | None,
        name: str | None,
        params: dict[str, str],
    ) -> aiohttp.web.StreamResponse:
        fs = params.get("fieldSelector")
        if fs and field_selector_errors(fs, kind.plural):
            raise field_selector_errors(fs, kind.plural)  # type: ignore[misc]
        watcher = Watcher(kind.resource, namespace, name, params.get("labelSelector"), fs, kind.plural)
        since = params.get("resourceVersion") or "0"
        initial: list[Obj] | None
        if since == "0" or not _GO_INT.match(since):
            initial = [
                {"type": "ADDED", "object": obj}
                for obj in self._matching(kind, namespace, params)
                if watcher.matches(obj)
            ]
        else:
            initial = self._log.since(watcher, int(since))
        self._log.watchers.append(watcher)  # no await since the snapshot: nothing is missed
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        try:
            await response.prepare(raw)
            if initial is None:
                gone = APIError(410, "Expired", f"too old resource version: {since} ({self._rv})").body()
                await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
                return response
            for event in initial:
                await response.write(json.dumps(event).encode() + b"\n")
            timeout = float(params.get("timeoutSeconds") or 0) or None
            async with asyncio.timeout(timeout):
                while True:
                    event = await watcher.queue.get()
                    await response.write(json.dumps(event).encode() + b"\n")
        except (TimeoutError, ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        finally:
            self._log.watchers.remove(watcher)
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
            await response.write_eof()
        return response

    # ------------------------------------------------------------ writes

    def _create(
        self,
        kind: Kind,
        namespace: str | None,
        body: Any,
        params: dict[str, str],
        manager: str,
        warnings: list[str] | None = None,
    ) -> Obj:
        if not isinstance(body, dict):
            raise bad_request(f"Object 'Kind' is missing in '{json.dumps(body)}'")
        body = copy.deepcopy(body)
        if params.get("fieldValidation") == "Strict":  # the decoder runs before anything is looked up
            self._field_validation(kind, copy.deepcopy(body), params, None)
        meta = body.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if kind.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        name = meta.get("name")
        if not name:
            raise unprocessable(
                kind.qualified_kind, "", [required("metadata.name", "name or generateName is required")]
            )
        if self._raw(kind, namespace, name) is not None:
            raise already_exists(kind.plural, kind.group, name)
        self._admit_namespace(kind, namespace)
        obj = self._admit(
            kind,
            namespace,
            str(name),
            None,
            body,
            params=params,
            manager=manager,
            scope="main",
            warnings=warnings,
        )
        if params.get("dryRun") != "All":
            self._commit(kind, namespace, str(name), None, obj)
        return obj

    def _admit_namespace(self, kind: Kind, namespace: str | None) -> None:
        """NamespaceLifecycle admission: content only in a namespace that exists and is not terminating."""
        if not kind.namespaced or namespace is None:
            return
        ns = self._raw(self._kind_or_404(NAMESPACES), None, namespace)
        if ns is None:
            raise not_found("namespaces", "", namespace)
        if (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise forbidden_error(
                f"unable to create new content in namespace {namespace} because it is being terminated"
            )

    def _update(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        body: Any,
        params: dict[str, str],
        manager: str,
        sub: str | None,
        warnings: list[str] | None = None,
    ) -> Obj:
        if not isinstance(body, dict):
            raise bad_request(f"Object 'Kind' is missing in '{json.dumps(body)}'")
        existing = self._raw(kind, namespace, name)
        if existing is None:
            raise not_found(kind.plural, kind.group, name)
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        if meta.get("name") not in (None, name):
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        rv = meta.get("resourceVersion")
        if not rv and kind.custom:
            raise unprocessable(
                kind.qualified_kind,
                name,
                [invalid("metadata.resourceVersion", GoRepr("0x0"), "must be specified for an update")],
            )
        if rv and str(rv) != existing["metadata"]["resourceVersion"]:
            raise conflict(kind.plural, kind.group, name, STALE)
        return self._write(
            kind,
            namespace,
            name,
            existing,
            body,
            params=params,
            manager=manager,
            scope="status" if sub == "status" else "main",
            warnings=warnings,
        )

    def _patch(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        patch: Any,
        ctype: str,
        params: dict[str, str],
        manager: str,
        sub: str | None,
        warnings: list[str] | None = None,
    ) -> tuple[Obj, bool]:
        """A PATCH of any type; (the object, whether it was created by an apply)."""
        scope = "status" if sub == "status" else "main"
        existing = self._raw(kind, namespace, name)
        if ctype == APPLY_PATCH:
            return self._apply(kind, namespace, name, existing, patch, params, scope, warnings)
        if existing is None:
            raise not_found(kind.plural, kind.group, name)
        if ctype == MERGE_PATCH:
            patched = merge_patch(existing, patch)
        elif ctype == JSON_PATCH:
            patched = json_patch(existing, patch)
        elif ctype == STRATEGIC_PATCH and not kind.custom:
            patched = strategic_merge_patch(existing, patch, kind.node)
        else:
            accepted = [JSON_PATCH, MERGE_PATCH, APPLY_PATCH] + ([] if kind.custom else [STRATEGIC_PATCH])
            raise unsupported_media_type(ctype, accepted)
        if not isinstance(patched, dict):
            raise bad_request("the patch does not produce an object")
        rv = (patched.get("metadata") or {}).get("resourceVersion")
        if rv is not None and str(rv) != existing["metadata"]["resourceVersion"]:
            raise conflict(kind.plural, kind.group, name, STALE)
        return self._write(
            kind,
            namespace,
            name,
            existing,
            patched,
            params=params,
            manager=manager,
            scope=scope,
            warnings=warnings,
        ), False

    def _apply(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        existing: Obj | None,
        config: Any,
        params: dict[str, str],
        scope: str,
        warnings: list[str] | None,
    ) -> tuple[Obj, bool]:
        manager = params.get("fieldManager")
        if not manager:
            raise bad_request(
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required '
                "for apply patch"
            )
        if not isinstance(config, dict):
            raise bad_request("error decoding YAML: the applied configuration is not an object")
        config = copy.deepcopy(config)
        for key, want in (("apiVersion", kind.api_version), ("kind", kind.kind)):
            if not config.get(key):
                raise bad_request(f"{key} must be set" if key == "kind" else "apiVersion must be set")
            if config[key] != want:
                what = "API version" if key == "apiVersion" else "kind"
                given = config[key]
                raise bad_request(
                    f"the {what} in the data ({given}) does not match the expected {what} ({want})"
                )
        meta = config.setdefault("metadata", {})
        if meta.get("name") not in (None, name):
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        meta["name"] = name
        self._field_validation(kind, config, params, warnings)
        if existing is None and scope == "status":
            raise not_found(kind.plural, kind.group, name)
        rv = meta.get("resourceVersion")
        if existing is not None and rv and str(rv) != existing["metadata"]["resourceVersion"]:
            raise conflict(kind.plural, kind.group, name, STALE)
        if existing is None:
            self._admit_namespace(kind, namespace)
        ssa_scope = scope if kind.status_subresource else ""
        merged, managed = ssa.apply(
            existing,
            config,
            kind.node,
            manager=manager,
            force=params.get("force") == "true",
            scope=ssa_scope,
            now=_now(),
        )
        if existing is None:
            obj = self._admit(
                kind,
                namespace,
                name,
                None,
                merged,
                params=params,
                manager=manager,
                scope=scope,
                warnings=None,
                managed=managed,
            )
            if params.get("dryRun") != "All":
                self._commit(kind, namespace, name, None, obj)
            return obj, True
        return self._write(
            kind,
            namespace,
            name,
            existing,
            merged,
            params=params,
            manager=manager,
            scope=scope,
            warnings=None,
            managed=managed,
        ), False

    def _write(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        existing: Obj,
        candidate: Obj,
        *,
        params: dict[str, str],
        manager: str,
        scope: str,
        warnings: list[str] | None,
        managed: list[Obj] | None = None,
    ) -> Obj:
        new = self._admit(
            kind,
            namespace,
            name,
            existing,
            candidate,
            params=params,
            manager=manager,
            scope=scope,
            warnings=warnings,
            managed=managed,
        )
        if new == existing:
            return existing  # a real server writes nothing and sends no event
        if params.get("dryRun") == "All":
            return new
        self._commit(kind, namespace, name, existing, new)
        return new

    def _field_validation(
        self, kind: Kind, body: Obj, params: dict[str, str], warnings: list[str] | None
    ) -> None:
        """Unknown fields: dropped; `fieldValidation=Strict` refuses them, `Warn` (the default) warns."""
        unknown = prune(body, kind.node)
        if not unknown:
            return
        mode = params.get("fieldValidation") or "Warn"
        if mode == "Strict":
            fields = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise bad_request(
                f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
                f"strict decoding error: {fields}"
            )
        if mode == "Warn" and warnings is not None:
            warnings += [f'unknown field \\"{u}\\"' for u in unknown]

    def _admit(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        existing: Obj | None,
        candidate: Obj,
        *,
        params: dict[str, str],
        manager: str,
        scope: str,
        warnings: list[str] | None,
        managed: list[Obj] | None = None,
    ) -> Obj:
        """Everything between a client's intent and the stored object: decode, isolate, server metadata,
        defaults, validation, generation, managedFields."""
        candidate = copy.deepcopy(candidate)
        for key, want in (("apiVersion", kind.api_version), ("kind", kind.kind)):
            given = candidate.get(key)
            if given and given != want:
                what = "API version" if key == "apiVersion" else "kind"
                raise bad_request(
                    f"the {what} in the data ({given}) does not match the expected {what} ({want})"
                )
            candidate[key] = want
        if managed is None:
            self._field_validation(kind, candidate, params, warnings)
        if not kind.custom and kind.node is not UNTYPED:
            problems = type_errors(
                {k: v for k, v in candidate.items() if k != "metadata"}, kind.node, kind.kind
            )
            problems += self._secret_data_errors(kind, candidate)
            if problems:
                raise bad_request(
                    f'{kind.kind} in version "{kind.version}" cannot be handled as a {kind.kind}: '
                    f"{problems[0]}"
                )
        candidate = self._isolate(kind, existing, candidate, scope)
        meta = candidate.setdefault("metadata", {})
        self._server_metadata(kind, namespace, name, existing, meta)
        self._default(kind, existing, candidate)
        meta = candidate["metadata"]  # defaulting rebuilt it
        errors = self._validate(kind, existing, candidate, scope)
        if errors:
            raise unprocessable(kind.qualified_kind, name, errors)
        if kind.generation:
            old_generation = int(((existing or {}).get("metadata") or {}).get("generation") or 0)
            meta["generation"] = (
                1
                if existing is None
                else old_generation + (1 if self._generation_moves(kind, existing, candidate) else 0)
            )
        ssa_scope = scope if kind.status_subresource else ""
        meta["managedFields"] = (
            managed
            if managed is not None
            else ssa.update(existing, candidate, kind.node, manager=manager, scope=ssa_scope, now=_now())
        )
        if not meta["managedFields"]:
            meta.pop("managedFields")
        return candidate

    @staticmethod
    def _secret_data_errors(kind: Kind, obj: Obj) -> list[str]:
        if (kind.group, kind.kind) != ("", "Secret"):
            return []
        for value in (obj.get("data") or {}).values():
            try:
                base64.b64decode(str(value), validate=True)
            except (binascii.Error, ValueError):
                return ["illegal base64 data at input byte 0"]
        return []

    @staticmethod
    def _isolate(kind: Kind, existing: Obj | None, candidate: Obj, scope: str) -> Obj:
        """The status subresource: main writes never change status, /status writes change nothing else."""
        if not kind.status_subresource or (kind.group, kind.kind) == ("", "Namespace"):
            return candidate
        if scope == "status":
            assert existing is not None
            out = {k: copy.deepcopy(v) for k, v in existing.items() if k != "status"}
            out["metadata"] = {
                **out.get("metadata", {}),
                "managedFields": existing["metadata"].get("managedFields"),
            }
            if "status" in candidate:
                out["status"] = candidate["status"]
            return out
        out = {k: v for k, v in candidate.items() if k != "status"}
        if existing is not None and "status" in existing:
            out["status"] = copy.deepcopy(existing["status"])
        return out

    def _server_metadata(
        self, kind: Kind, namespace: str | None, name: str, existing: Obj | None, meta: Obj
    ) -> None:
        meta["name"] = name
        if kind.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if existing is None:
            for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion", "generation"):
                meta.pop(key, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            return
        old = existing["metadata"]
        for key in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
            "generateName",
        ):
            if key in old:
                meta[key] = old[key]
            else:
                meta.pop(key, None)
        if old.get("deletionTimestamp"):
            added = [f for f in meta.get("finalizers") or [] if f not in (old.get("finalizers") or [])]
            if added:
                raise unprocessable(
                    kind.qualified_kind,
                    name,
                    [
                        forbidden(
                            "metadata.finalizers",
                            "no new finalizers can be added if the object is being deleted, found new "
                            f"finalizers []string{{{', '.join(json.dumps(f) for f in added)}}}",
                        )
                    ],
                )

    def _default(self, kind: Kind, existing: Obj | None, obj: Obj) -> None:
        if kind.custom:
            assert kind.schema is not None
            prune_nulls(obj, kind.schema)
            structural_default(obj, kind.schema)
            obj["metadata"] = normalize_builtin(
                obj["metadata"], Node(definitions()[OBJECT_META], ref=OBJECT_META)
            )
            return
        if kind.node is UNTYPED:
            return
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else None
        if (kind.group, kind.kind) == ("", "Service") and existing is not None and spec is not None:
            old_spec = existing.get("spec") or {}  # patchAllocatedValues: what was allocated stays
            for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"):
                if key in old_spec and not spec.get(key):
                    spec[key] = copy.deepcopy(old_spec[key])
        normalized = normalize_builtin(obj, kind.node)
        obj.clear()
        obj.update(normalized)
        if existing is None and (kind.group, kind.kind) == ("", "Namespace"):
            obj.setdefault("spec", {})["finalizers"] = [NAMESPACE_FINALIZER]
            obj["status"] = {"phase": "Active"}
        if existing is None and (kind.group, kind.kind) == ("", "Pod"):
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
        if (kind.group, kind.kind) == ("apiextensions.k8s.io", "CustomResourceDefinition"):
            obj.update(crd_defaults(obj))
        defaults.apply_defaults(obj, kind.group, kind.kind, allocate=self._allocate)
        normalized = normalize_builtin(obj, kind.node)
        obj.clear()
        obj.update(normalized)

    def _allocate(self, what: str) -> Any:
        n = next(self._addresses)
        return f"10.96.{n // 250}.{n % 250 + 1}" if what == "ip" else 30000 + n % 2768

    def _validate(self, kind: Kind, existing: Obj | None, obj: Obj, scope: str) -> list[Any]:
        if kind.custom:
            return [str(e) for e in meta_errors(obj)] + custom_errors(
                kind, obj, existing, status_only=scope == "status"
            )
        if (kind.group, kind.kind) == ("apiextensions.k8s.io", "CustomResourceDefinition"):
            return self._crd_errors(existing, obj)
        if kind.node is UNTYPED:
            return []
        return [str(e) for e in builtin_errors(obj, existing, kind.group, kind.kind)]

    def _crd_errors(self, existing: Obj | None, crd: Obj) -> list[Any]:
        errors: list[Any] = list(crd_errors(crd))
        if existing is not None:
            old, new = existing.get("spec") or {}, crd.get("spec") or {}
            for path, a, b in (
                ("spec.group", old.get("group"), new.get("group")),
                (
                    "spec.names.plural",
                    (old.get("names") or {}).get("plural"),
                    (new.get("names") or {}).get("plural"),
                ),
                ("spec.scope", old.get("scope"), new.get("scope")),
                (
                    "spec.names.kind",
                    (old.get("names") or {}).get("kind"),
                    (new.get("names") or {}).get("kind"),
                ),
            ):
                if a != b:
                    errors.append(str(invalid(path, b, "field is immutable")))
        return errors

    @staticmethod
    def _generation_moves(kind: Kind, old: Obj, new: Obj) -> bool:
        if kind.generation == "custom":
            strip = ("metadata", "status")
            return {k: v for k, v in old.items() if k not in strip} != {
                k: v for k, v in new.items() if k not in strip
            }
        moved = old.get("spec") != new.get("spec")
        if kind.generation == "spec+annotations":
            moved = moved or old["metadata"].get("annotations") != new["metadata"].get("annotations")
        return moved

    def _commit(self, kind: Kind, namespace: str | None, name: str, old: Obj | None, new: Obj) -> None:
        """Store a new version (a new resourceVersion, an event), then what controllers would do next."""
        if (kind.group, kind.kind) == ("apiextensions.k8s.io", "CustomResourceDefinition"):
            self._crd_status(old, new)
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        key = (kind.resource, namespace, name)
        stored = self._objects._objects.get(key)
        if stored is None:
            self._objects[key] = new
        elif stored.deleted:
            stored.create(new)
        else:
            stored.history.append(new)
        self._log.publish(
            Change(
                self._rv,
                kind.resource,
                namespace,
                "ADDED" if old is None else "MODIFIED",
                old,
                self._raw(kind, namespace, name) or new,
            )
        )
        if (kind.group, kind.kind) == ("apiextensions.k8s.io", "CustomResourceDefinition"):
            self._register(new)
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._finalize(kind, namespace, name)
        self._controllers()

    # ------------------------------------------------------------ CRDs

    @staticmethod
    def _crd_status(old: Obj | None, crd: Obj) -> None:
        """What the naming and establishing controllers report: names accepted, established, stored."""
        spec = crd["spec"]
        stored = list(((old or {}).get("status") or {}).get("storedVersions") or [])
        for version in spec.get("versions") or []:
            if version.get("storage") and version["name"] not in stored:
                stored.append(version["name"])
        previous = {c["type"]: c for c in ((old or {}).get("status") or {}).get("conditions") or []}
        conditions = []
        for type_, reason, message in (
            ("NamesAccepted", "NoConflicts", "no conflicts found"),
            ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ):
            since = previous.get(type_, {}).get("lastTransitionTime") or _now()
            conditions.append(
                {
                    "type": type_,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": since,
                }
            )
        crd["status"] = {
            "acceptedNames": copy.deepcopy(spec.get("names") or {}),
            "conditions": conditions,
            "storedVersions": stored,
        }
        meta = crd["metadata"]
        if not meta.get("deletionTimestamp") and CRD_CLEANUP not in (meta.get("finalizers") or []):
            meta["finalizers"] = [*(meta.get("finalizers") or []), CRD_CLEANUP]

    def _register(self, crd: Obj) -> None:
        group = crd["spec"]["group"]
        plural = crd["spec"]["names"]["plural"]
        for res in [r for r in self._custom if r.group == group and r.plural == plural]:
            del self._custom[res]
        for kind in custom_kinds(crd):
            self._custom[kind.resource] = kind
            self.resources[kind.resource] = resource_info(crd, kind)

    def _unregister(self, crd: Obj) -> None:
        group, plural = crd["spec"]["group"], crd["spec"]["names"]["plural"]
        for res in [r for r in self._custom if r.group == group and r.plural == plural]:
            del self._custom[res]
            if res in self.resources:
                del self.resources[res]

    # ------------------------------------------------------------ scale

    def _scale_of(self, kind: Kind, obj: Obj) -> Obj:
        """autoscaling/v1 Scale: spec.replicas, status.replicas, status.selector (kubectl scale, the HPA)."""
        if kind.custom:
            paths = kind.scale or {}
            replicas = _at(obj, paths.get("specReplicasPath", ".spec.replicas")) or 0
            current = _at(obj, paths.get("statusReplicasPath", ".status.replicas")) or 0
            selector = _at(obj, paths.get("labelSelectorPath", "")) or ""
        else:
            replicas = (obj.get("spec") or {}).get("replicas", 0)
            current = (obj.get("status") or {}).get("replicas", 0)
            selector = selector_text((obj.get("spec") or {}).get("selector") or {})
        meta = obj["metadata"]
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta
            },
            "spec": {"replicas": replicas},
            "status": {"replicas": current, "selector": selector},
        }

    def _write_scale(
        self, kind: Kind, namespace: str | None, name: str, body: Any, ctype: str | None, manager: str
    ) -> Obj:
        existing = self._get(kind, namespace, name)
        scale = self._scale_of(kind, existing)
        if ctype is None:
            new_scale = body if isinstance(body, dict) else {}
            rv = (new_scale.get("metadata") or {}).get("resourceVersion")
            if rv and str(rv) != existing["metadata"]["resourceVersion"]:
                raise conflict(kind.plural, kind.group, name, STALE)
        elif ctype in (MERGE_PATCH, STRATEGIC_PATCH):
            new_scale = merge_patch(scale, body)
        elif ctype == JSON_PATCH:
            new_scale = json_patch(scale, body)
        else:
            raise unsupported_media_type(ctype, [JSON_PATCH, MERGE_PATCH])
        replicas = (new_scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise unprocessable(
                "Scale.autoscaling",
                name,
                [invalid("spec.replicas", replicas, "must be greater than or equal to 0")],
            )
        path = (
            (kind.scale or {}).get("specReplicasPath", ".spec.replicas") if kind.custom else ".spec.replicas"
        )
        candidate = copy.deepcopy(existing)
        _set_at(candidate, path, replicas)
        new = self._write(
            kind,
            namespace,
            name,
            existing,
            candidate,
            params={},
            manager=manager,
            scope="main",
            warnings=None,
        )
        return self._scale_of(kind, new)

    # ------------------------------------------------------------ deletion

    def _delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        options: Any,
        params: dict[str, str] | None = None,
    ) -> Obj:
        existing = self._get(kind, namespace, name)
        options = options if isinstance(options, dict) else {}
        meta = existing["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta.get("uid"):
            raise APIError(
                409,
                "Conflict",
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object "
                f"meta: {meta.get('uid')}",
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
            raise APIError(
                409,
                "Conflict",
                f"Precondition failed: ResourceVersion in precondition: "
                f"{pre['resourceVersion']}, ResourceVersion in object meta: {meta.get('resourceVersion')}",
            )
        if (params or {}).get("dryRun") == "All":
            return existing
        if meta.get("deletionTimestamp"):
            return existing
        policy = options.get("propagationPolicy") or (params or {}).get("propagationPolicy") or "Background"
        if policy == "Orphan":
            self._orphan(meta.get("uid"))
        if meta.get("finalizers") or (kind.group, kind.kind) == ("", "Namespace"):
            new = copy.deepcopy(existing)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            if (kind.group, kind.kind) == ("", "Namespace"):
                new.setdefault("status", {})["phase"] = "Terminating"
                self._terminating.add((kind.resource, name))
            if (kind.group, kind.kind) == ("apiextensions.k8s.io", "CustomResourceDefinition"):
                self._terminating.add((kind.resource, name))
            self._rv += 1
            new["metadata"]["resourceVersion"] = str(self._rv)
            self._objects._objects[(kind.resource, namespace, name)].history.append(new)
            self._log.publish(Change(self._rv, kind.resource, namespace, "MODIFIED", existing, new))
            self._controllers()
            return self._raw(kind, namespace, name) or new
        gone = self._finalize(kind, namespace, name)
        self._controllers()
        if (kind.group, kind.kind) in RETURNS_DELETED or kind.custom:
            return gone
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {"name": name, "group": kind.group, "kind": kind.plural, "uid": meta.get("uid")},
        }

    def _delete_collection(self, kind: Kind, namespace: str | None, params: dict[str, str]) -> Obj:
        items = self._matching(kind, namespace, params)
        for obj in items:
            self._delete(kind, namespace, obj["metadata"]["name"], {})
        return self._list(kind, namespace, {})

    def _finalize(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        stored = self._objects._objects[(kind.resource, namespace, name)]
        if stored.deleted:
            return copy.deepcopy(stored.last.raw)
        gone = copy.deepcopy(stored.raw)
        self._rv += 1
        gone["metadata"]["resourceVersion"] = str(self._rv)
        stored.delete()
        self._log.publish(Change(self._rv, kind.resource, namespace, "DELETED", gone, gone))
        if (kind.group, kind.kind) == ("apiextensions.k8s.io", "CustomResourceDefinition"):
            self._unregister(gone)
        self._terminating.discard((kind.resource, name))
        self._collect(gone["metadata"].get("uid"))
        return gone

    def _collect(self, uid: str | None) -> None:
        """The garbage collector, at once: a dependent whose owners are all gone is deleted (background)."""
        if not uid:
            return
        live = {obj.raw["metadata"].get("uid") for obj in self._objects._objects.values() if not obj.deleted}
        for (res, ns, name), obj in list(self._objects._objects.items()):
            if obj.deleted:
                continue
            owners = [o.get("uid") for o in obj.raw.get("metadata", {}).get("ownerReferences") or []]
            if uid in owners and not any(o in live for o in owners):
                kind = self._kind(res)
                if kind is not None and self._raw(kind, ns, name) is not None:
                    self._delete(kind, ns, name, {})

    def _orphan(self, uid: str | None) -> None:
        for (res, ns, name), obj in list(self._objects._objects.items()):
            refs = (obj.raw.get("metadata") or {}).get("ownerReferences") if not obj.deleted else None
            if refs and any(r.get("uid") == uid for r in refs):
                kind = self._kind(res)
                patch = {"metadata": {"ownerReferences": [r for r in refs if r.get("uid") != uid] or None}}
                if kind is not None:
                    self._patch(kind, ns, name, patch, MERGE_PATCH, {}, "kube-controller-manager", None)

    def _controllers(self) -> None:
        """The namespace controller and the CRD cleanup controller, for what is terminating (passes until
        nothing changes; deletions they make call back here, which then returns at once)."""
        if self._in_controllers:
            return
        self._in_controllers = True
        try:
            while any([self._cleanup(res, name) for res, name in sorted(self._terminating, key=str)]):
                pass
        finally:
            self._in_controllers = False

    def _content(self, res: kmock.resource, obj: Obj) -> list[tuple[Kind, str | None, str]]:
        name = obj["metadata"]["name"]
        if res == NAMESPACES:
            keys = [
                (r, ns, n) for (r, ns, n), o in self._objects._objects.items() if ns == name and not o.deleted
            ]
        else:
            group, plural = obj["spec"]["group"], obj["spec"]["names"]["plural"]
            keys = [
                (r, ns, n)
                for (r, ns, n), o in self._objects._objects.items()
                if r.group == group and r.plural == plural and not o.deleted
            ]
        return [(kind, ns, n) for r, ns, n in keys if (kind := self._kind(r)) is not None]

    def _cleanup(self, res: kmock.resource, name: str) -> bool:
        """Delete what a terminating namespace or CRD holds; once empty, drop its finalizer (and it).
        True when something was removed."""
        kind = self._kind(res)
        obj = self._raw(kind, None, name) if kind is not None else None
        if kind is None or obj is None:
            self._terminating.discard((res, name))
            return False
        content = self._content(res, obj)
        for child, ns, n in content:
            if not ((self._raw(child, ns, n) or {}).get("metadata") or {}).get("deletionTimestamp"):
                self._delete(child, ns, n, {})
        if any(self._raw(child, ns, n) is not None for child, ns, n in content):
            return False
        self._terminating.discard((res, name))
        finalizer = NAMESPACE_FINALIZER if res == NAMESPACES else CRD_CLEANUP
        new = copy.deepcopy(obj)
        if res == NAMESPACES:
            new["spec"]["finalizers"] = [f for f in new["spec"].get("finalizers") or [] if f != finalizer]
        new["metadata"]["finalizers"] = [f for f in new["metadata"].get("finalizers") or [] if f != finalizer]
        if not new["metadata"]["finalizers"]:
            new["metadata"].pop("finalizers")
            if res != NAMESPACES or not new["spec"]["finalizers"]:
                self._finalize(kind, None, name)
                return True
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        self._objects._objects[(res, None, name)].history.append(new)
        self._log.publish(Change(self._rv, res, None, "MODIFIED", obj, new))
        return True


def _at(obj: Obj, path: str) -> Any:
    node: Any = obj
    for key in [p for p in path.split(".") if p]:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _set_at(obj: Obj, path: str, value: Any) -> None:
    keys = [p for p in path.split(".") if p]
    node = obj
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
