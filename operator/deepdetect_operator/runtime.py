"""`deepdetect-operator run`: flags and environment -> kopf settings -> a running operator.

Everything that makes the operator production-shaped lives here: cluster-wide or listed namespaces, the
default server image, JSON logs, peering for HA, watch timeouts so a silently dead watch reconnects,
kopf's bookkeeping in annotations (never in `spec`, never mixed into our `status`), Events only for what
matters, the liveness endpoint and the Prometheus metrics server. `run_operator` is also what the
integration tests and the benchmark start, with the same settings.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import uuid
from typing import Any

import kopf

from deepdetect_operator.api import DEFAULT_SERVER_IMAGE, GROUP
from deepdetect_operator.handlers import build_registry
from deepdetect_operator.kubeapi import KubeAPI, kopf_login
from deepdetect_operator.leader import LeaderElector
from deepdetect_operator.metrics import OperatorMetrics
from deepdetect_operator.podfilter import PodTransitions
from deepdetect_operator.readcache import WATCHED_CHILDREN, CachingKubeAPI
from deepdetect_operator.reconcile import OperatorConfig, Reconciler

FINALIZER = f"{GROUP}/finalizer"
TIMER_EXIT_POLL_S = 1.0  # how often kopf re-checks a resync timer that must exit before a deletion
LEASE_NAME = "deepdetect-operator"
EXIT_LOST_LEADERSHIP = 3  # the kubelet restarts the container, which then waits as a standby

log = logging.getLogger(__name__)


def _env_list(name: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _positive_int(text: str) -> int:
    """A whole number of seconds: `timeoutSeconds=300.0` is a 400 from a real API server."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole seconds, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value}")
    return value


def query_seconds(value: float) -> int:
    """Seconds for an integer query parameter: the API server parses them with strconv.ParseInt, so kopf
    (which sends `settings.watching.server_timeout` as given) must get an int, never 300.0."""
    if value != int(value) or value <= 0:
        raise ValueError(f"a query-string timeout must be a positive whole number of seconds, got {value}")
    return int(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        default=None,
        help="watch only this namespace (repeatable; default: $DEEPDETECT_NAMESPACES, empty = cluster-wide)",
    )
    parser.add_argument(
        "--image",
        default=None,
        help="default server image when spec.image is empty (default: $DEEPDETECT_SERVER_IMAGE or "
        f"{DEFAULT_SERVER_IMAGE})",
    )
    parser.add_argument(
        "--peering",
        default=os.environ.get("DEEPDETECT_PEERING", ""),
        help="kopf peering name for HA (several replicas, one active); default: standalone",
    )
    parser.add_argument("--priority", type=int, default=0, help="peering priority of this replica")
    parser.add_argument(
        "--leader-elect",
        action="store_true",
        default=os.environ.get("DEEPDETECT_LEADER_ELECT", "") in ("1", "true"),
        help="run several replicas, one active: hold the coordination.k8s.io Lease to reconcile "
        "(default: $DEEPDETECT_LEADER_ELECT)",
    )
    parser.add_argument(
        "--leader-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="namespace of the Lease (default: $POD_NAMESPACE or 'default')",
    )
    parser.add_argument("--lease-seconds", type=_positive_int, default=15, help="Lease duration")
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="kopf liveness endpoint URL ('' disables)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=9090, help="Prometheus /metrics port (0 disables)"
    )
    parser.add_argument(
        "--resync-seconds", type=float, default=60.0, help="full reconcile at least this often"
    )
    parser.add_argument(
        "--tick-seconds",
        type=float,
        default=10.0,
        help="per-CR timer tick (checks resync and checkpoint polls)",
    )
    parser.add_argument(
        "--watch-timeout",
        type=_positive_int,
        default=300,
        help="server-side watch timeout, whole seconds (sent as timeoutSeconds, which the API server "
        "parses as an integer)",
    )
    parser.add_argument("--log-format", choices=("json", "plain", "full"), default="json")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def config_from_args(args: argparse.Namespace) -> OperatorConfig:
    namespaces = tuple(args.namespaces or _env_list("DEEPDETECT_NAMESPACES"))
    return OperatorConfig(
        default_image=args.image or os.environ.get("DEEPDETECT_SERVER_IMAGE") or DEFAULT_SERVER_IMAGE,
        namespaces=namespaces,
        resync_seconds=args.resync_seconds,
        tick_seconds=args.tick_seconds,
        peering=args.peering,
        priority=args.priority,
        liveness=args.liveness,
        metrics_port=args.metrics_port,
        watch_server_timeout_s=args.watch_timeout,
        watch_client_timeout_s=args.watch_timeout + 30,
    )


def make_settings(config: OperatorConfig) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # A watch that stops delivering without closing is ended by the server after server_timeout, by us
    # after client_timeout, and kopf restarts one idle for inactivity_timeout (bookmarks come every 60s).
    settings.watching.server_timeout = query_seconds(config.watch_server_timeout_s)
    settings.watching.client_timeout = config.watch_client_timeout_s
    settings.watching.connect_timeout = config.watch_connect_timeout_s
    settings.networking.request_timeout = config.request_timeout_s
    settings.networking.connect_timeout = config.watch_connect_timeout_s
    # On deletion kopf keeps the finalizer until the resync timer has exited; a timer caught mid-pass (a
    # slow checkpoint resolve) is re-checked after this long (kopf's default 60 s held `kubectl delete`).
    settings.background.cancellation_polling = TIMER_EXIT_POLL_S
    # Only our children and pods: the API server filters, the operator never sees the rest of the cluster.
    managed = "app.kubernetes.io/managed-by=deepdetect-operator"
    settings.watching.label_selectors["", "v1", "pods"] = managed
    for res in WATCHED_CHILDREN:  # the read cache's watches (readcache.py)
        settings.watching.label_selectors[res.group, res.version, res.plural] = managed
    # kopf's bookkeeping: annotations under our prefix, never spec, never our status fields.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Events: our own (kopf.event) always; kopf's log lines only from warnings up, so a quiet resync
    # posts nothing.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "deepdetect-operator"
    settings.posting.reporting_instance = os.environ.get("POD_NAME", "deepdetect-operator")
    settings.peering.name = config.peering or "deepdetect-operator"
    settings.peering.priority = config.priority
    settings.peering.mandatory = False
    settings.peering.standalone = not config.peering
    settings.peering.clusterwide = not config.namespaces
    return settings


def build_memo(config: OperatorConfig, metrics: OperatorMetrics | None = None) -> kopf.Memo:
    api = CachingKubeAPI(
        request_timeout=config.request_timeout_s,
        connect_timeout=config.watch_connect_timeout_s,
        temporary_delay=config.retry_delay_s,
        secret_ttl_s=config.resync_seconds / 2,  # a hand-rotated API key still rolls at the next resync
    )
    return kopf.Memo(
        reconciler=Reconciler(api, config, metrics or OperatorMetrics()), pod_transitions=PodTransitions()
    )


async def run_operator(
    config: OperatorConfig,
    *,
    memo: kopf.Memo | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
) -> None:
    """The operator until `stop_flag` (or a signal); used by `run`, the integration tests and the bench."""
    memo = memo if memo is not None else build_memo(config)
    await kopf.operator(
        registry=build_registry(config),
        settings=make_settings(config),
        memo=memo,
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        standalone=not config.peering,
        peering_name=config.peering or None,
        priority=config.priority,
        liveness_endpoint=config.liveness or None,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


_FORMATS = {"json": kopf.LogFormat.JSON, "plain": kopf.LogFormat.PLAIN, "full": kopf.LogFormat.FULL}


def configure_logging(log_format: str, verbose: bool, quiet: bool = False) -> None:
    fmt = _FORMATS[log_format]
    refkey = "object" if fmt == kopf.LogFormat.JSON else None
    kopf.configure(verbose=verbose, quiet=quiet, log_format=fmt, log_refkey=refkey)


def make_elector(config: OperatorConfig, namespace: str, lease_s: int) -> LeaderElector:
    api = KubeAPI(request_timeout=5.0, connect_timeout=config.watch_connect_timeout_s, retries=1)
    kopf_login(api, settings=make_settings(config), logger=log)
    # POD_NAME is unique per replica; the suffix keeps a restarted container from taking its old lease
    # before the standby's view of it has expired.
    identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    return LeaderElector(
        api, namespace=namespace, name=LEASE_NAME, identity=identity, lease_s=lease_s,
        renew_deadline_s=lease_s * 2 / 3, renew_s=min(2.0, lease_s / 5), retry_s=2.0,
    )  # fmt: skip


async def run_elected(config: OperatorConfig, memo: kopf.Memo, elector: LeaderElector) -> bool:
    """kopf only while this replica holds the Lease; False when the Lease was lost."""

    async def work(stop: asyncio.Event) -> None:
        await run_operator(config, memo=memo, stop_flag=stop)

    try:
        return await elector.run_while_leader(work)
    finally:
        await elector.api.close()


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    configure_logging(args.log_format, args.verbose, args.quiet)
    memo = build_memo(config)
    if config.metrics_port:
        memo.reconciler.metrics.serve(config.metrics_port)
    try:
        if args.leader_elect:
            elector = make_elector(config, args.leader_namespace, args.lease_seconds)
            held = asyncio.run(run_elected(config, memo, elector))
            return 0 if held else EXIT_LOST_LEADERSHIP
        asyncio.run(run_operator(config, memo=memo))
    except KeyboardInterrupt:
        return 130
    return 0
