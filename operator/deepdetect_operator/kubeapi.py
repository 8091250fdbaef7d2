"""One wrapper for every Kubernetes API call the reconciler makes, so retries are safe and errors are ours.

Why aiohttp and not the `kubernetes` client: kopf already ships aiohttp and authenticates with a
`kopf.ConnectionInfo` (service account, kubeconfig, or the official client's loaders); building our session
from the same `ConnectionInfo` gives one credential source, no thread pool per call (1000 CRs reconcile
concurrently on one event loop), and server-side apply is just a PATCH with `application/apply-patch+yaml`.

Error policy (STYLE #4, after crate-operator's `utils/kubeapi.py` and kopf's `_cogs/clients/errors.py`):
- 404 -> `NotFound` (callers decide: `get` returns None, `delete` returns False);
- 409 -> `Conflict` (create of an existing object: callers read it back);
- 400/422 -> `Invalid` (a manifest the API server refuses: the spec needs fixing, no retry helps);
- 401 -> log in again once, then retry;
- 403 -> `kopf.TemporaryError` with a long delay (RBAC is fixed by an admin, not by hammering);
- 429, 5xx, timeouts and connection errors -> retried here with exponential backoff, then
  `kopf.TemporaryError(delay=...)` so kopf retries the handler later. Every call we make is idempotent
  (apply, create-once, delete-if-exists, status merge patch), so a retry after a lost response is safe.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

import aiohttp
import kopf

from deepdetect_operator import __version__
from deepdetect_operator.api import GROUP, PLURAL, VERSION

logger = logging.getLogger(__name__)

FIELD_MANAGER = "deepdetect-operator"
USER_AGENT = f"deepdetect-operator/{__version__}"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_CONTENT_TYPE = "application/merge-patch+json"


class ObjectMeta(TypedDict, total=False):
    name: str
    namespace: str
    uid: str
    generation: int
    resourceVersion: str
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[dict[str, Any]]
    deletionTimestamp: str


class KubeObject(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: dict[str, Any]
    status: dict[str, Any]
    data: dict[str, str]


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [base]
        if self.namespaced and namespace:
            parts += ["namespaces", namespace]
        parts.append(self.plural)
        if name:
            parts.append(name)
        if sub:
            parts.append(sub)
        return "/".join(parts)


DEEPDETECTSERVICES = Resource(GROUP, VERSION, PLURAL, "DeepDetectService")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
SECRETS = Resource("", "v1", "secrets", "Secret")
SERVICES = Resource("", "v1", "services", "Service")
PODS = Resource("", "v1", "pods", "Pod")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
JOBS = Resource("batch", "v1", "jobs", "Job")
HPAS = Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler")
PDBS = Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
SERVICEMONITORS = Resource("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor")
NETWORKPOLICIES = Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")

BY_KIND: dict[tuple[str, str], Resource] = {
    (r.api_version, r.kind): r
    for r in (
        DEEPDETECTSERVICES,
        CONFIGMAPS,
        SECRETS,
        SERVICES,
        PODS,
        DEPLOYMENTS,
        JOBS,
        HPAS,
        PDBS,
        SERVICEMONITORS,
        NETWORKPOLICIES,
        LEASES,
    )
}


def resource_of(obj: dict[str, Any]) -> Resource:
    try:
        return BY_KIND[(obj["apiVersion"], obj["kind"])]
    except KeyError:
        raise ValueError(f"no API resource known for {obj.get('apiVersion')}/{obj.get('kind')}") from None


class KubeAPIError(Exception):
    """An API answer we do not retry; `status`, `reason` and `message` come from the Status body."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(KubeAPIError):
    pass


class Conflict(KubeAPIError):
    pass


class Invalid(KubeAPIError):
    pass


LoginFn = Callable[[], "kopf.ConnectionInfo | None"]


class KubeAPI:
    """An aiohttp session against the API server, built from a `kopf.ConnectionInfo`."""

    def __init__(
        self,
        info: kopf.ConnectionInfo | None = None,
        *,
        login: LoginFn | None = None,
        request_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        temporary_delay: float = 5.0,
        forbidden_delay: float = 60.0,
    ) -> None:
        self._info = info
        self._login = login
        self._session: aiohttp.ClientSession | None = None
        self._stale: list[aiohttp.ClientSession] = []
        self._timeout = aiohttp.ClientTimeout(total=request_timeout, connect=connect_timeout)
        self._retries = retries
        self._backoff = backoff
        self._temporary_delay = temporary_delay
        self._forbidden_delay = forbidden_delay
        self.calls: Counter[str] = Counter()  # by verb: get/list/create/apply/delete/status/discover

    # ------------------------------------------------------------ credentials and session

    def use(self, info: kopf.ConnectionInfo) -> None:
        """New credentials (from the login handler): the next request opens a new session."""
        # kopf runs sync login handlers in a worker thread: only swap here, close on the event loop later.
        self._info = info
        old, self._session = self._session, None
        if old is not None:
            self._stale.append(old)

    @property
    def server(self) -> str:
        if self._info is None:
            raise RuntimeError("KubeAPI has no credentials yet (the login handler has not run)")
        return self._info.server.rstrip("/")

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._info is None and self._login is not None:
                self._info = self._login()
            if self._info is None:
                raise kopf.TemporaryError("no Kubernetes credentials yet", delay=self._temporary_delay)
            headers = {"User-Agent": USER_AGENT, **self._info.as_http_headers()}
            connector = aiohttp.TCPConnector(limit=0, ssl=self._info.as_ssl_context())
            self._session = aiohttp.ClientSession(
                connector=connector, headers=headers, timeout=self._timeout, trust_env=self._info.trust_env
            )
        return self._session

    async def close(self) -> None:
        while self._stale:
            await self._stale.pop().close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------ the one request function

    async def _request(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        self.calls[verb] += 1
        while self._stale:
            await self._stale.pop().close()
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        relogged = False
        attempt = 0
        while True:
            session = self._open()
            url = f"{self.server}{path}"
            try:
                async with session.request(method, url, params=params, data=data, headers=headers) as resp:
                    text = await resp.text()
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
            except (TimeoutError, aiohttp.ClientError) as exc:
                reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
                if attempt < self._retries:
                    attempt += 1
                    await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
                    continue
                raise kopf.TemporaryError(f"{method} {path}: {reason}", delay=self._temporary_delay) from exc
            if status < 300:
                return json.loads(text) if text else {}
            reason, message = _status_details(status, text)
            if status == 401 and not relogged and self._login is not None:
                relogged = True
                info = self._login()
                if info is not None:
                    self.use(info)
                    continue
            if status == 404:
                raise NotFound(status, reason, message)
            if status == 409:
                raise Conflict(status, reason, message)
            if status in (400, 422):
                raise Invalid(status, reason, message)
            if status in (401, 403):
                raise kopf.TemporaryError(f"{method} {path}: {status} {message}", delay=self._forbidden_delay)
            if status == 429 or status >= 500:
                if attempt < self._retries:
                    attempt += 1
                    delay = self._backoff * 2 ** (attempt - 1)
                    if retry_after and retry_after.isdigit():
                        delay = max(delay, min(float(retry_after), 10.0))
                    await asyncio.sleep(delay)
                    continue
                raise kopf.TemporaryError(f"{method} {path}: {status} {message}", delay=self._temporary_delay)
            raise KubeAPIError(status, reason, message)

    # ------------------------------------------------------------ verbs

    async def get(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self._request("get", "GET", res.path(namespace, name))
        except NotFound:
            return None

    async def list(
        self, res: Resource, namespace: str | None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self._request("list", "GET", res.path(namespace), params=params)
        return list(result.get("items") or [])

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """POST; raises `Conflict` when it exists (create-once objects rely on that)."""
        res = resource_of(obj)
        namespace = obj.get("metadata", {}).get("namespace")
        return await self._request("create", "POST", res.path(namespace), body=obj)  # type: ignore[no-any-return]

    async def apply(self, obj: dict[str, Any], *, field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply as `field_manager` (ours by default), forcing conflicts (we own these)."""
        res = resource_of(obj)
        meta = obj["metadata"]
        params = {"fieldManager": field_manager, "force": "true"}
        path = res.path(meta.get("namespace"), meta["name"])
        result = await self._request(
            "apply", "PATCH", path, params=params, body=obj, content_type=APPLY_CONTENT_TYPE
        )
        return result  # type: ignore[no-any-return]

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT with the object's resourceVersion: `Conflict` when someone wrote it since we read it."""
        res = resource_of(obj)
        meta = obj["metadata"]
        path = res.path(meta.get("namespace"), meta["name"])
        return await self._request("replace", "PUT", path, body=obj)  # type: ignore[no-any-return]

    async def delete(
        self, res: Resource, namespace: str | None, name: str, *, uid: str | None = None
    ) -> bool:
        """Delete in the background; with `uid`, only that incarnation. False when it was not there."""
        options: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": "Background",
        }
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            await self._request("delete", "DELETE", res.path(namespace, name), body=options)
        except NotFound:
            return False
        except Conflict:
            return False  # the uid precondition failed: someone re-created it, not ours to delete
        return True

    async def patch_status(
        self, res: Resource, namespace: str | None, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """JSON merge patch of `status` through the /status subresource."""
        path = res.path(namespace, name, "status")
        body = {"status": status}
        return await self._request("status", "PATCH", path, body=body, content_type=MERGE_CONTENT_TYPE)  # type: ignore[no-any-return]

    async def serves(self, group: str, version: str, plural: str) -> bool:
        """Discovery: does the API server serve `group/version/plural` (e.g. ServiceMonitors)?"""
        try:
            doc = await self._request("discover", "GET", f"/apis/{group}/{version}")
        except NotFound:
            return False
        return any(r.get("name") == plural for r in doc.get("resources") or [])


def _status_details(status: int, text: str) -> tuple[str, str]:
    """(reason, message) of a `Status` body, or a trimmed text for anything else."""
    try:
        doc = json.loads(text)
    except ValueError:
        return "Error", " ".join(text.split())[:300]
    if isinstance(doc, dict):
        return str(doc.get("reason") or "Error"), str(doc.get("message") or "")[:500]
    return "Error", str(doc)[:300]


def kopf_login(api: KubeAPI, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """The operator's login: in-cluster service account, else the kubeconfig, else the official client.

    kopf and our `KubeAPI` share the result; `KubeAPI` calls the same function again after a 401
    (service-account tokens are rotated on disk).
    """

    def attempt() -> kopf.ConnectionInfo | None:
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is None:
            try:
                info = kopf.login_via_client(**kwargs)  # exec plugins and other kubeconfig features
            except ImportError:
                info = None
        return info

    info = attempt()
    api._login = attempt
    if info is not None:
        api.use(info)
    return info
