"""A kmock 0.8 Kubernetes emulator that behaves like a real API server where the operator relies on it.

`kmock.KubernetesEmulator` is an in-memory store over real HTTP. It lacks server-side bookkeeping the
operator and kopf depend on (see ../shared/TESTING.md). `KubeEmulator` adds, and only adds, what a real
kube-apiserver does:

- server-set `uid`, `creationTimestamp`, `metadata.namespace` from the URL, `generateName`;
- `resourceVersion` increasing on every write, and NO write (no new version, no watch event) when a
  patch changes nothing (a real server answers a no-op SSA without bumping the version);
- `generation` starting at 1 and bumped only when something outside `metadata`/`status` changes;
- `/status` isolation for resources with a status subresource: main-resource writes ignore `status`,
  `/status` writes ignore everything but `status`;
- server-side apply (`application/apply-patch+yaml`) creates a missing object and tracks field ownership
  per `fieldManager` in `metadata.managedFields`: a field a manager stops applying is removed unless
  another manager's Apply entry owns it (maps are walked; lists are atomic, unlike the real merge keys);
- a failed JSON-patch `test` answers 422 (kmock: 500);
- label selectors (and `metadata.name`/`metadata.namespace` field selectors) on list and watch;
- the scale subresource of resources that declare one (`kubectl scale`);
- `GET/POST /api/v1/namespaces` (kmock crashes on them);
- DELETE honouring finalizers and `preconditions.uid` (409), and background garbage collection of
  dependents by owner reference uid;
- watch streams that end after `timeoutSeconds`, as the real server's do.

Resource requests are served directly (kmock's DSL dispatch is quadratic in the number of recorded
requests, too slow for the 1000-CR benchmark); `fail_next` injects API errors for fault tests.

What it still is not: no validation, defaulting, admission, SSA list merge keys, or controllers (a
Deployment never gets status by itself: tests call `set_status`).
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import re
import uuid
import warnings
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, enums, k8s, rendering

APPLY_PATCH = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"

_NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces(?:/(?P<name>[^/]+))?/?$")


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strip_meta_status(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _merge(base: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (None deletes; lists replace)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


# ---------------------------------------------------------------- selectors

_SET_EXPR = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _leaf_paths(obj: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Field paths an applied config sets: maps are walked, lists and scalars are atomic leaves."""
    if isinstance(obj, dict) and obj:
        out: set[tuple[str, ...]] = set()
        for key, value in obj.items():
            out |= _leaf_paths(value, (*prefix, key))
        return out
    return {prefix} if prefix else set()


def _fields_v1(paths: set[tuple[str, ...]]) -> dict[str, Any]:
    """metav1.ManagedFieldsEntry.fieldsV1 shape ({"f:spec": {"f:replicas": {}}})."""
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for key in path:
            node = node.setdefault(f"f:{key}", {})
    return root


def _paths_of(fields: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if not fields:
        return {prefix} if prefix else set()
    out: set[tuple[str, ...]] = set()
    for key, sub in fields.items():
        if key.startswith("f:"):
            out |= _paths_of(sub, (*prefix, key[2:]))
    return out


def _drop_path(obj: dict[str, Any], path: tuple[str, ...]) -> None:
    """Remove a field and any map it leaves empty (what SSA does to a field nobody owns any more)."""
    parents = [obj]
    for key in path[:-1]:
        nxt = parents[-1].get(key)
        if not isinstance(nxt, dict):
            return
        parents.append(nxt)
    parents[-1].pop(path[-1], None)
    for depth in range(len(path) - 1, 0, -1):
        if parents[depth]:
            break
        parents[depth - 1].pop(path[depth - 1], None)


# Fields SSA never tracks or removes (identity, server-set metadata).
_UNTRACKED = {("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "namespace")}


def _apply_ownership(
    old: dict[str, Any], applied: dict[str, Any], merged: dict[str, Any], manager: str
) -> None:
    """Server-side apply's field ownership, for maps (lists are atomic here): fields this manager applied
    before, no longer in its config and owned by no other manager are removed; the manager's entry in
    metadata.managedFields is replaced by what it applied now."""
    entries = [dict(e) for e in (old.get("metadata", {}).get("managedFields") or [])]
    now = _leaf_paths(applied) - _UNTRACKED
    mine = next((e for e in entries if e.get("manager") == manager and e.get("operation") == "Apply"), None)
    before = _paths_of(mine.get("fieldsV1", {})) if mine else set()
    others = set().union(*(_paths_of(e.get("fieldsV1", {})) for e in entries if e is not mine))
    for path in sorted(before - now - others, key=len, reverse=True):
        _drop_path(merged, path)
    fields = _fields_v1(now)
    since = mine["time"] if mine and mine.get("fieldsV1") == fields else _now()  # no-op apply: no change
    entries = [e for e in entries if e is not mine]
    entries.append({"manager": manager, "operation": "Apply", "apiVersion": applied.get("apiVersion", ""),
                    "fieldsType": "FieldsV1", "fieldsV1": fields, "time": since})
    merged.setdefault("metadata", {})["managedFields"] = entries


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def label_selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics: =, ==, !=, in, notin, exists, !exists."""
    for term in _split_selector(selector):
        m = _SET_EXPR.match(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            ok = (labels.get(key) in values) if op == "in" else (labels.get(key) not in values)
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            ok = labels.get(key) != value
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            ok = labels.get(key) == value
        elif term.startswith("!"):
            ok = term[1:].strip() not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def field_selector_matches(selector: str, obj: dict[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    for term in _split_selector(selector):
        negate = "!=" in term
        key, value = (s.strip() for s in term.replace("==", "=").replace("!=", "=").split("=", 1))
        actual = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace")}.get(key)
        if (actual == value) == negate:
            return False
    return True


def _selected(request: rendering.Request, obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    ls, fs = request.params.get("labelSelector"), request.params.get("fieldSelector")
    return (not ls or label_selector_matches(ls, labels)) and (not fs or field_selector_matches(fs, obj))


# ---------------------------------------------------------------- the emulator


def _header(request: rendering.Request, name: str) -> str:
    for key, value in request.headers.items():
        if key.lower() == name.lower():
            return str(value)
    return ""


class Unprocessable(k8s.KubernetesError):
    pass


# Query parameters the API server parses with strconv.ParseInt: `timeoutSeconds=300.0` is a 400.
_INTEGER_PARAMS = ("timeoutSeconds", "limit", "gracePeriodSeconds")
_GO_INT = re.compile(r"^[+-]?[0-9]+$")


def integer_param_error(params: Any) -> k8s.KubernetesError | None:
    """The real server's 400 for an integer query parameter that is not a Go integer, else None."""
    for name in _INTEGER_PARAMS:
        value = params.get(name)
        if value is not None and not _GO_INT.match(str(value)):
            message = f'strconv.ParseInt: parsing "{value}": invalid syntax'
            return k8s.KubernetesError(status=400, reason="BadRequest", message=message)
    return None


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the API-server bookkeeping listed in the module docstring."""

    _rv: int = attrs.field(default=1000, init=False)
    _namespaces: dict[str, dict[str, Any]] = attrs.field(factory=dict, init=False)
    _faults: list[list[Any]] = attrs.field(factory=list, init=False)

    # ------------------------------------------------------------ helpers for tests

    @property
    def recorded(self) -> list[rendering.Request]:
        """Every request served so far, in order."""
        return list(self._requests)

    def writes(self, since: int = 0, user_agent: str | None = None) -> list[rendering.Request]:
        """Mutating requests (POST/PUT/PATCH/DELETE) recorded after index `since`, optionally by client."""
        out = []
        for req in self._requests[since:]:
            if req.method.value not in ("POST", "PUT", "PATCH", "DELETE"):
                continue
            if user_agent and not _header(req, "User-Agent").startswith(user_agent):
                continue
            out.append(req)
        return out

    def stored(
        self, resource: str | kmock.resource, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        """The stored object (a deep copy) or None."""
        key = (kmock.resource(resource), namespace, name)
        obj = self._objects._objects.get(key)
        if obj is None or obj.deleted:
            return None
        return copy.deepcopy(obj.raw)

    def list_objects(
        self, resource: str | kmock.resource, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        res = kmock.resource(resource)
        return [
            copy.deepcopy(obj.raw)
            for (r, ns, _), obj in self._objects._objects.items()
            if r == res and not obj.deleted and (namespace is None or ns == namespace)
        ]

    async def set_status(
        self, resource: str | kmock.resource, namespace: str | None, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """What a controller does: merge `status` into the object (through the /status rules)."""
        res = kmock.resource(resource)
        async with self._lock:
            return await self._write(res, namespace, name, {"status": status}, subresource="status")

    async def remove(self, resource: str | kmock.resource, namespace: str | None, name: str) -> None:
        """Delete as `kubectl delete` would (finalizers honoured, dependents collected)."""
        res = kmock.resource(resource)
        async with self._lock:
            await self._delete(res, namespace, name)

    async def edit(
        self, resource: str | kmock.resource, namespace: str | None, name: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        """A merge patch on the main resource, as `kubectl edit/patch` would send."""
        res = kmock.resource(resource)
        async with self._lock:
            return await self._write(res, namespace, name, patch, subresource=None)

    # ------------------------------------------------------------ bookkeeping

    def _has_status(self, resource: kmock.resource) -> bool:
        return resource in self.resources and "status" in self.resources[resource].subresources

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    async def _publish(self, resource: kmock.resource, kind: str, raw: dict[str, Any]) -> None:
        await self._buses[resource].put({"type": kind, "object": raw})

    async def _create(
        self, resource: kmock.resource, namespace: str | None, body: dict[str, Any]
    ) -> dict[str, Any]:
        body = copy.deepcopy(body)
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        if namespace is not None:
            meta["namespace"] = namespace
        name = meta.get("name")
        if not name:
            raise Unprocessable(status=422, reason="Invalid", message="metadata.name: Required value")
        key = (resource, namespace, name)
        existing = self._objects._objects.get(key)
        if existing is not None and not existing.deleted:
            raise k8s.KubernetesError(
                status=409, reason="AlreadyExists", message=f'{resource.plural} "{name}" already exists'
            )
        if self._has_status(resource):
            body.pop("status", None)  # a create through the main resource does not set status
            meta["generation"] = 1
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["resourceVersion"] = self._next_rv()
        if existing is None:
            self._objects[key] = body
        else:
            existing.create(body)
        await self._publish(resource, "ADDED", body)
        return body

    async def _write(
        self,
        resource: kmock.resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        subresource: str | None,
        content_type: str = "application/merge-patch+json",
        replace: bool = False,
        field_manager: str = "",
    ) -> dict[str, Any]:
        key = (resource, namespace, name)
        obj = self._objects._objects.get(key)
        if obj is None or obj.deleted:
            if content_type == APPLY_PATCH and subresource is None:
                body = dict(patch, metadata={**patch.get("metadata", {}), "name": name})
                _apply_ownership({}, patch, body, field_manager)
                return await self._create(resource, namespace, body)
            raise k8s.KubernetesObjectNotFoundError(
                reason="NotFound", message=f'{resource.plural} "{name}" not found'
            )
        old = obj.raw
        if replace:
            patched = copy.deepcopy(patch)
        elif isinstance(patch, list):
            try:
                patched = jsonpatch.apply_patch(copy.deepcopy(old), patch, in_place=False)
            except jsonpatch.JsonPatchTestFailed as exc:
                raise Unprocessable(status=422, reason="Invalid", message=f"the test failed: {exc}") from None
            except (jsonpatch.JsonPatchConflict, jsonpatch.JsonPatchException) as exc:
                raise Unprocessable(status=422, reason="Invalid", message=str(exc)) from None
        else:
            patched = _merge(old, patch)
            if content_type == APPLY_PATCH:
                _apply_ownership(old, patch, patched, field_manager)
        if not self._has_status(resource):
            if subresource == "status":
                raise k8s.KubernetesNotFoundError(reason="NotFound", message="no status subresource")
            new = patched
        elif subresource == "status":
            # /status writes change status and nothing else.
            new = {k: copy.deepcopy(v) for k, v in old.items() if k != "status"}
            if "status" in patched:
                new["status"] = patched["status"]
        else:
            # Main-resource writes never change status.
            new = {k: v for k, v in patched.items() if k != "status"}
            if "status" in old:
                new["status"] = old["status"]
        # Fields only the server sets.
        meta = new.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp", "generation"):
            if field in old.get("metadata", {}):
                meta[field] = old["metadata"][field]
            else:
                meta.pop(field, None)
        meta["resourceVersion"] = old.get("metadata", {}).get("resourceVersion")
        if new == old:
            return old  # a real server writes nothing and sends no event
        if self._has_status(resource) and _strip_meta_status(new) != _strip_meta_status(old):
            meta["generation"] = int(old.get("metadata", {}).get("generation", 1)) + 1
        meta["resourceVersion"] = self._next_rv()
        obj.history.append(new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._finalize(resource, namespace, name)
        else:
            await self._publish(resource, "MODIFIED", new)
        return new

    async def _delete(
        self, resource: kmock.resource, namespace: str | None, name: str, *, uid: str | None = None
    ) -> dict[str, Any]:
        key = (resource, namespace, name)
        obj = self._objects._objects.get(key)
        if obj is None or obj.deleted:
            raise k8s.KubernetesObjectNotFoundError(
                reason="NotFound", message=f'{resource.plural} "{name}" not found'
            )
        raw = obj.raw
        meta = raw.get("metadata", {})
        if uid and meta.get("uid") != uid:
            message = (
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: {meta.get('uid')}"
            )
            raise k8s.KubernetesError(status=409, reason="Conflict", message=message)
        if meta.get("deletionTimestamp"):
            return raw
        if meta.get("finalizers"):
            new = copy.deepcopy(raw)
            new["metadata"]["deletionTimestamp"] = _now()
            new["metadata"]["resourceVersion"] = self._next_rv()
            obj.history.append(new)
            await self._publish(resource, "MODIFIED", new)
            return new
        return await self._finalize(resource, namespace, name)

    async def _finalize(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self._objects._objects[(resource, namespace, name)]
        raw = copy.deepcopy(obj.raw)
        raw["metadata"]["resourceVersion"] = self._next_rv()
        obj.delete()
        await self._publish(resource, "DELETED", raw)
        await self._collect_dependents(raw["metadata"].get("uid"))
        return raw

    async def _collect_dependents(self, uid: str | None) -> None:
        """Background garbage collection: delete every object owned by `uid`."""
        if not uid:
            return
        for (res, ns, name), obj in list(self._objects._objects.items()):
            if obj.deleted:
                continue
            owners = obj.raw.get("metadata", {}).get("ownerReferences") or []
            if any(o.get("uid") == uid for o in owners):
                await self._delete(res, ns, name)

    # ------------------------------------------------------------ request handling

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        bad_param = integer_param_error(raw_request.query)
        if bad_param is not None:
            await raw_request.read()
            return await self._render_error(bad_param)
        match = _NAMESPACE_PATH.match(raw_request.path)
        if match:
            await raw_request.read()
            return await self._serve_namespaces(raw_request, match.group("name"))
        return await super().__call__(raw_request)

    def fail_next(self, method: str, path: str, status: int = 500, times: int = 1) -> None:
        """Fault injection: the next `times` requests with this method and a path matching the regex `path`
        get `status` (a `Status` body), before any other processing."""
        self._faults.append([method.upper(), re.compile(path), status, times])

    def _injected_fault(self, request: rendering.Request) -> int | None:
        for fault in self._faults:
            method, pattern, status, times = fault
            if times > 0 and request.method.value == method and pattern.search(str(request.url.path)):
                fault[3] -= 1
                return int(status)
        return None

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # kmock's DSL dispatch checks each reaction against every request recorded so far (quadratic);
        # resource requests are served directly, the rest (discovery) goes through the DSL as usual.
        fault = self._injected_fault(request)
        if fault is not None:
            return await self._render_error(k8s.KubernetesError(status=fault, reason="Injected"))
        resource = request.resource
        if resource is None or resource.plural is None:
            return await apps.RawHandler._handle(self, request)
        is_put = request.method == enums.method.PUT and bool(request.name)
        try:
            if request.subresource == "scale" and request.name:
                return aiohttp.web.json_response(await self._serve_scale(request))
            if request.action == enums.action.WATCH:
                return await self._stream_watch(request)
            if request.action == enums.action.LIST:
                return aiohttp.web.json_response(self._serve_list(request))
            if request.action == enums.action.FETCH:
                return aiohttp.web.json_response(await self._serve_fetch(request))
            if not (
                is_put or request.action in (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE)
            ):
                return await apps.RawHandler._handle(self, request)
            if request.action != enums.action.CREATE and not request.name:
                return await apps.RawHandler._handle(self, request)
            async with self._lock:
                if request.action == enums.action.CREATE:
                    result = await self._create(resource, request.namespace, request.data or {})
                    status = 201
                elif is_put or request.action == enums.action.UPDATE:
                    ctype = _header(request, "Content-Type").split(";")[0].strip()
                    if request.subresource not in (None, "status"):
                        raise k8s.KubernetesNotFoundError(message=f"subresource {request.subresource}")
                    result = await self._write(
                        resource,
                        request.namespace,
                        request.name,
                        request.data,
                        subresource=request.subresource,
                        content_type=ctype,
                        replace=is_put,
                        field_manager=request.params.get("fieldManager", ""),
                    )
                    status = 200
                else:
                    options = request.data if isinstance(request.data, dict) else {}
                    uid = (options.get("preconditions") or {}).get("uid")
                    result = await self._delete(resource, request.namespace, request.name, uid=uid)
                    status = 200
        except k8s.KubernetesError as exc:
            return await self._render_error(exc)
        return aiohttp.web.json_response(result, status=status)

    async def _serve_scale(self, request: rendering.Request) -> dict[str, Any]:
        """The scale subresource (autoscaling/v1 Scale): spec.replicas, status.replicas, status.selector
        (`.status.selector` as the CRD's labelSelectorPath); what `kubectl scale` uses."""
        resource = request.resource
        assert resource is not None and request.name is not None
        if resource not in self.resources or "scale" not in self.resources[resource].subresources:
            raise k8s.KubernetesNotFoundError(reason="NotFound", message="no scale subresource")
        if request.method == enums.method.PATCH:
            replicas = ((request.data or {}).get("spec") or {}).get("replicas")
            if isinstance(replicas, int):
                patch = {"spec": {"replicas": replicas}}
                async with self._lock:
                    await self._write(resource, request.namespace, request.name, patch, subresource=None)
        obj = self.stored(resource, request.namespace, request.name)
        if obj is None:
            raise k8s.KubernetesObjectNotFoundError(reason="NotFound", message=f'"{request.name}" not found')
        status = obj.get("status") or {}
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {k: obj["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion")},
            "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
            "status": {"replicas": status.get("replicas", 0), "selector": status.get("selector", "")},
        }

    async def _stream_watch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """A watch stream that, like the real server, ends after `timeoutSeconds`."""
        assert request._raw_request is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        timeout = float(request.params.get("timeoutSeconds") or 0) or None
        try:
            async with asyncio.timeout(timeout):
                async for event in self._serve_watch(request):
                    if isinstance(event, dict):
                        await response.write(json.dumps(event).encode() + b"\n")
        except TimeoutError:
            pass
        await response.write_eof()
        return response

    def _serve_list(self, request: rendering.Request) -> rendering.Payload:  # type: ignore[override]
        if request.resource not in self._get_resources():
            raise k8s.KubernetesResourceNotFoundError()
        items = [
            obj.raw
            for (res, ns, _), obj in self._objects._objects.items()
            if res == request.resource
            and not obj.deleted
            and (request.namespace is None or ns == request.namespace)
            and _selected(request, obj.raw)
        ]
        return {
            "kind": "List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": items,
        }

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:  # type: ignore[override]
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and not _selected(request, event.get("object") or {}):
                continue
            yield event

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:  # type: ignore[override]
        obj = self._objects._objects.get((request.resource, request.namespace, request.name))
        if obj is None or obj.deleted:
            raise k8s.KubernetesObjectNotFoundError(reason="NotFound", message=f'"{request.name}" not found')
        return obj.raw

    # ------------------------------------------------------------ namespaces

    def _namespace_names(self) -> Iterable[str]:
        names = set(self._namespaces)
        names |= {ns for (_, ns, _), obj in self._objects._objects.items() if ns and not obj.deleted}
        return sorted(names)

    def _namespace_obj(self, name: str) -> dict[str, Any]:
        return self._namespaces.get(name) or {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
            "status": {"phase": "Active"},
        }

    async def _serve_namespaces(
        self, raw: aiohttp.web.BaseRequest, name: str | None
    ) -> aiohttp.web.StreamResponse:
        if raw.method == "POST" and name is None:
            body = json.loads(await raw.text() or "{}")
            ns_name = (body.get("metadata") or {}).get("name")
            if not ns_name:
                return await self._render_error(Unprocessable(status=422, reason="Invalid", message="name"))
            if ns_name in self._namespaces:
                return await self._render_error(k8s.KubernetesError(status=409, reason="AlreadyExists"))
            body.setdefault("metadata", {}).update(uid=str(uuid.uuid4()), resourceVersion=self._next_rv())
            self._namespaces[ns_name] = body
            return aiohttp.web.json_response(body, status=201)
        if raw.method != "GET":
            return await self._render_error(k8s.KubernetesError(status=405, reason="MethodNotAllowed"))
        if name is not None:
            if name not in self._namespace_names():
                return await self._render_error(k8s.KubernetesObjectNotFoundError(reason="NotFound"))
            return aiohttp.web.json_response(self._namespace_obj(name))
        items = [self._namespace_obj(n) for n in self._namespace_names()]
        if raw.query.get("watch") != "true":
            return aiohttp.web.json_response(
                {
                    "kind": "NamespaceList",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": "1"},
                    "items": items,
                }
            )
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw)
        for item in items:
            await response.write(json.dumps({"type": "ADDED", "object": item}).encode() + b"\n")
        timeout = float(raw.query.get("timeoutSeconds", "60"))
        await asyncio.sleep(timeout)
        return response


def crd_resource_info() -> kmock.ResourceInfo:
    """Discovery info of the DeepDetectService CRD (status and scale subresources)."""
    return kmock.ResourceInfo(
        kind="DeepDetectService",
        singular="deepdetectservice",
        namespaced=True,
        shortnames={"dds"},
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        subresources={"status", "scale"},
    )


def make_emulator(*, service_monitor: bool = False) -> KubeEmulator:
    """An emulator with the built-in kinds, our CRD, Events and (optionally) the ServiceMonitor CRD."""
    emu = KubeEmulator()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # kmock 0.8 uses importlib's read_binary
        emu.resources.load_bundled()
    emu.resources["deepdetect.io/v1alpha1/deepdetectservices"] = crd_resource_info()
    if service_monitor:
        emu.resources["monitoring.coreos.com/v1/servicemonitors"] = kmock.ResourceInfo(
            kind="ServiceMonitor",
            singular="servicemonitor",
            namespaced=True,
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        )
    return emu
