"""Kubernetes credentials for the operator and the CLI, loaded through the ``kubernetes`` package.

Called by the operator's kopf login handler (``shell.handlers``), by :class:`shell.kube.KubeClient`
(which asks :class:`Credentials` for the current login before every request and again after a
401) and by ``shell.inventory`` (``workerfleet pools``, ``--pool``, the console's cluster reads).

Why the ``kubernetes`` package: its kubeconfig loader runs ``exec`` plugins (EKS, GKE, AKS,
OIDC helpers) and auth-providers, and its in-cluster loader reads the pod's service account the
way client-go does (the API server address from ``KUBERNETES_SERVICE_HOST``/``PORT``, no cluster
DNS needed). We only take the resulting credentials out of it and talk to the API server with
our own plain-dict client (see ``shell.kube`` for why).

A login is a :class:`kopf.ConnectionInfo` (kopf logs in with the same one). Its ``expiration``
says when to load again: an exec plugin's ``expirationTimestamp`` minus a margin, or
:data:`SERVICE_ACCOUNT_RELOAD_SECONDS` for a service-account token file (the kubelet rewrites
it before it expires). A 401 loads again at once (the token was replaced or revoked).

A load that fails (an exec plugin whose identity provider is down) keeps the login in hand, still
accepted when the reload was due by time alone, and is tried again only after
:data:`LOAD_RETRY_SECONDS` (as client-go's cached token source does): before, every request ran
the loader again and failed, and the leader elector, whose Lease reads failed so, gave up the
Lease over a token that was still good.

Inline certificates and keys of a kubeconfig (``*-data``) are written by the ``kubernetes``
package to files; we load into a private temporary folder, read them back into memory and
delete the folder, so no client key stays on disk.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf

logger = logging.getLogger("workerfleet.operator.credentials")

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
"""Where the kubelet mounts a pod's service-account token, cluster CA and namespace."""

SERVICE_ACCOUNT_RELOAD_SECONDS = 60.0
"""Re-read the service-account token file this often (client-go and the kubernetes package do)."""

EXPIRY_MARGIN_SECONDS = 60.0
"""Load an expiring credential (an exec plugin's token) again this long before it expires."""

LOAD_RETRY_SECONDS = 5.0
"""After a failed load, load again no sooner than this: meanwhile the login in hand is used (it is
reloaded early, while still accepted), and a request refused with 401 fails without a load."""


class CredentialsError(Exception):
    """No credentials could be loaded: the message says what was tried and what to pass."""


def find_kubeconfig(path: str | None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The kubeconfig to use, as kubectl picks it: ``path``; else, when ``$KUBECONFIG`` lists
    files, those of them that exist (joined with ``os.pathsep``: :func:`load_kubeconfig_login`
    merges them); else ~/.kube/config.

    None when there is none and no path was named (a pod may then use its service account). A
    named path that does not exist is an error, never a fall back to another cluster's
    kubeconfig (``--kubeconfig`` with a typo went on with ~/.kube/config's cluster). For the
    same reason a ``$KUBECONFIG`` naming no file that exists does not fall back to
    ~/.kube/config (kubectl does not read it then either).
    """
    if path:
        if os.path.isfile(path):
            return path
        raise CredentialsError(f"no kubeconfig at {path}")
    listed = kubeconfig_env_paths(environ)
    if listed:
        found = [p for p in listed if os.path.isfile(p)]
        return os.pathsep.join(found) if found else None
    default = os.path.expanduser("~/.kube/config")
    return default if os.path.isfile(default) else None


def kubeconfig_env_paths(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The files ``$KUBECONFIG`` lists, in order (empty entries skipped, ``~`` expanded)."""
    return [os.path.expanduser(p) for p in environ.get("KUBECONFIG", "").split(os.pathsep) if p]


def load_kubeconfig_login(
    path: str, *, now: Callable[[], float] = time.time
) -> kopf.ConnectionInfo:
    """The login of ``path``'s current context; runs its exec plugin if it has one (blocking).

    ``path`` may list several files joined with ``os.pathsep`` (from ``$KUBECONFIG``); they are
    merged by kubectl's rules: the first file to name a cluster, user or context wins, and the
    current context is the first one a file sets. (The ``kubernetes`` package's merger keeps
    the last file's current context: another cluster than kubectl's.)
    """
    from kubernetes import client as k8s_client
    from kubernetes.config import config_exception, kube_config

    try:
        with tempfile.TemporaryDirectory(prefix="workerfleet-kubeconfig-") as scratch:
            merged = kube_config.KubeConfigMerger(path)  # type: ignore[no-untyped-call]
            if merged.config is None:
                raise CredentialsError(f"{path} holds no kubeconfig")
            current = next(
                (
                    c["current-context"]
                    for c in merged.config_files.values()
                    if "current-context" in c
                ),
                None,
            )
            if current is not None:
                merged.config.value["current-context"] = current
            loader = kube_config.KubeConfigLoader(  # type: ignore[no-untyped-call]
                config_dict=merged.config, config_base_path=None, temp_file_path=scratch
            )
            configuration = k8s_client.Configuration()
            loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
            context = loader.current_context.get("context") or {}
            expiry = getattr(loader, "expiry", None)
            info = _build_login(
                configuration,
                scratch,
                namespace=context.get("namespace"),
                expiration=_expiration_of(expiry, now),
            )
    except config_exception.ConfigException as exc:
        raise CredentialsError(f"kubeconfig {path}: {exc}") from exc
    return info


def load_service_account_login(
    environ: Mapping[str, str] = os.environ,
    directory: str = SERVICE_ACCOUNT_DIR,
    *,
    now: Callable[[], float] = time.time,
) -> kopf.ConnectionInfo | None:
    """The pod's service-account login, or None outside a pod (no service env or token)."""
    from kubernetes import client as k8s_client
    from kubernetes.config import config_exception, incluster_config

    token_path = os.path.join(directory, "token")
    if not environ.get("KUBERNETES_SERVICE_HOST") or not os.path.isfile(token_path):
        return None
    loader = incluster_config.InClusterConfigLoader(  # type: ignore[no-untyped-call]
        token_filename=token_path,
        cert_filename=os.path.join(directory, "ca.crt"),
        try_refresh_token=False,
        environ=environ,
    )
    configuration = k8s_client.Configuration()
    try:
        loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
    except config_exception.ConfigException as exc:
        raise CredentialsError(f"service account in {directory}: {exc}") from exc
    namespace = None
    namespace_path = os.path.join(directory, "namespace")
    if os.path.isfile(namespace_path):
        with open(namespace_path, encoding="utf-8") as handle:
            namespace = handle.read().strip() or None
    expiration = datetime.datetime.fromtimestamp(
        now() + SERVICE_ACCOUNT_RELOAD_SECONDS, datetime.UTC
    )
    return _build_login(configuration, None, namespace=namespace, expiration=expiration)


def load_login(
    kubeconfig: str | None,
    environ: Mapping[str, str] = os.environ,
    service_account_dir: str = SERVICE_ACCOUNT_DIR,
    *,
    prefer_service_account: bool = False,
) -> kopf.ConnectionInfo:
    """The login to use: a named kubeconfig; else (order by ``prefer_service_account``) the pod's
    service account or the default kubeconfig. The operator prefers the service account (it
    runs in a pod), the CLI the user's kubeconfig."""
    if kubeconfig:
        found = find_kubeconfig(kubeconfig, environ)
        assert found is not None  # find_kubeconfig raises for a named path it cannot find
        return load_kubeconfig_login(found)
    in_pod = load_service_account_login(environ, service_account_dir)
    if prefer_service_account and in_pod is not None:
        return in_pod
    path = find_kubeconfig(None, environ)
    if path is not None:
        return load_kubeconfig_login(path)
    if in_pod is not None:
        return in_pod
    listed = kubeconfig_env_paths(environ)
    if listed:
        raise CredentialsError(
            f"no kubeconfig: KUBECONFIG names no file that exists ({os.pathsep.join(listed)}); "
            "pass --kubeconfig, or fix or unset KUBECONFIG (or run in a pod)"
        )
    raise CredentialsError(
        "no kubeconfig: pass --kubeconfig, set KUBECONFIG or put one at "
        f"{os.path.expanduser('~/.kube/config')} (or run in a pod)"
    )


def _expiration_of(expiry: Any, now: Callable[[], float]) -> datetime.datetime | None:
    if not isinstance(expiry, datetime.datetime):
        return None
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=datetime.UTC)
    margin = datetime.timedelta(seconds=EXPIRY_MARGIN_SECONDS)
    # A short-lived token (shorter than twice the margin) is reused for half its life instead.
    remaining = expiry - datetime.datetime.fromtimestamp(now(), datetime.UTC)
    expires: datetime.datetime = expiry - min(margin, max(remaining / 2, datetime.timedelta(0)))
    return expires


def _build_login(
    configuration: Any,
    scratch: str | None,
    *,
    namespace: str | None,
    expiration: datetime.datetime | None,
) -> kopf.ConnectionInfo:
    """kopf's credentials from a loaded ``kubernetes.client.Configuration``.

    Files the loader wrote into ``scratch`` (inline kubeconfig data) are read back as data.
    """
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    scheme, token = None, None
    if header:
        parts = str(header).strip().split(" ", 1)
        scheme, token = (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1].strip())
        if scheme is not None and scheme.lower() == "bearer":
            scheme = "Bearer"

    def path_or_data(path: str | None) -> tuple[str | None, bytes | None]:
        if not path:
            return None, None
        if scratch is not None and os.path.dirname(os.path.abspath(path)) == os.path.abspath(
            scratch
        ):
            with open(path, "rb") as handle:
                return None, handle.read()
        return path, None

    ca_path, ca_data = path_or_data(configuration.ssl_ca_cert)
    cert_path, cert_data = path_or_data(configuration.cert_file)
    key_path, key_data = path_or_data(configuration.key_file)
    return kopf.ConnectionInfo(
        server=str(configuration.host).rstrip("/"),
        ca_path=ca_path,
        ca_data=ca_data,
        insecure=not configuration.verify_ssl,
        # A basic-auth header comes as scheme Basic and the encoded pair: sent back as it is.
        scheme=scheme,
        token=token,
        certificate_path=cert_path,
        certificate_data=cert_data,
        private_key_path=key_path,
        private_key_data=key_data,
        default_namespace=namespace,
        expiration=expiration,
    )


class Credentials:
    """The current login, shared by kopf's login handler and every :class:`kube.KubeClient`.

    ``load`` (blocking: it may run an exec plugin) is called in a thread when there is no login
    yet, when the login has expired, and when a client was refused with 401 on it
    (:meth:`renew`). kopf's own re-logins land here through :meth:`replace`, so both follow
    every new token. A failed load is tried again after :data:`LOAD_RETRY_SECONDS`, the login in
    hand used meanwhile unless it was refused.
    """

    def __init__(
        self,
        load: Callable[[], kopf.ConnectionInfo] | None,
        *,
        initial: kopf.ConnectionInfo | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._load = load
        self._info = initial
        self._now = now
        self._lock = asyncio.Lock()
        self.loads = 0
        # The last failed load and when to try again (see LOAD_RETRY_SECONDS).
        self._load_error: Exception | None = None
        self._retry_load_at = float("-inf")

    @classmethod
    def fixed(cls, info: kopf.ConnectionInfo) -> Credentials:
        """Credentials that never change (tests, and callers that hold one login)."""
        return cls(None, initial=info)

    @property
    def current(self) -> kopf.ConnectionInfo | None:
        return self._info

    def replace(self, info: kopf.ConnectionInfo) -> None:
        """Take a login loaded elsewhere (kopf's login handler)."""
        self._info = info

    def _is_expired(self, info: kopf.ConnectionInfo) -> bool:
        expiration = info.expiration
        if expiration is None or self._load is None:
            return False
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=datetime.UTC)
        return datetime.datetime.fromtimestamp(self._now(), datetime.UTC) >= expiration

    def _load_failed_recently(self) -> bool:
        return self._load_error is not None and self._now() < self._retry_load_at

    async def fetch(self) -> kopf.ConnectionInfo:
        """The login to send the next request with (loaded again when it has expired)."""
        info = self._info
        if info is not None and (not self._is_expired(info) or self._load_failed_recently()):
            return info
        return await self._reload(info, refused=False)

    async def renew(self, stale: kopf.ConnectionInfo | None) -> kopf.ConnectionInfo:
        """After a 401 on ``stale``: load again unless someone already replaced it (one load
        for many 401s); raise :class:`CredentialsError` when no login can be loaded."""
        return await self._reload(stale, refused=True)

    async def _reload(
        self, stale: kopf.ConnectionInfo | None, *, refused: bool
    ) -> kopf.ConnectionInfo:
        async with self._lock:
            current = self._info
            if current is not None and current is not stale and not self._is_expired(current):
                return current
            if self._load is None:
                if current is None:
                    raise CredentialsError("no credentials")
                return current
            # Due by time alone, the login in hand is still accepted: it bridges a failed load.
            usable = None if refused else current
            if self._load_failed_recently():
                if usable is not None:
                    return usable
                raise CredentialsError(f"loading the login failed: {self._load_error}")
            try:
                info = await asyncio.to_thread(self._load)
            except Exception as exc:
                self._load_error = exc
                self._retry_load_at = self._now() + LOAD_RETRY_SECONDS
                if usable is None:
                    raise
                logger.warning(
                    "loading the login again failed (%s): the current one is used, next try "
                    "in %.0fs",
                    exc,
                    LOAD_RETRY_SECONDS,
                )
                return usable
            self._info = info
            self._load_error = None
            self.loads += 1
            return info
