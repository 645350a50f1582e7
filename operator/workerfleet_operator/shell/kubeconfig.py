"""Where the operator's credentials come from: a kubeconfig file, or the pod's environment.

Called by the login handler (``shell.handlers``) and by ``shell.inventory``; next to the
Kubernetes client (``shell.kube``) that uses what it returns.
"""

from __future__ import annotations

from collections.abc import Mapping

import kopf


def in_cluster_server_url(environ: Mapping[str, str]) -> str | None:
    """The API server URL from KUBERNETES_SERVICE_HOST/PORT (set in every pod); None without."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def read_kubeconfig(path: str) -> kopf.ConnectionInfo:
    """kopf credentials from one kubeconfig file (its current context)."""
    import yaml

    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    context_name = config.get("current-context")
    contexts = {c["name"]: c["context"] for c in config.get("contexts", [])}
    context = contexts[context_name] if context_name else next(iter(contexts.values()))
    clusters = {c["name"]: c["cluster"] for c in config.get("clusters", [])}
    users = {u["name"]: u.get("user") or {} for u in config.get("users", [])}
    cluster = clusters[context["cluster"]]
    user = users.get(context.get("user", ""), {})
    return kopf.ConnectionInfo(
        server=cluster["server"],
        ca_path=cluster.get("certificate-authority"),
        ca_data=_b64(cluster.get("certificate-authority-data")),
        insecure=cluster.get("insecure-skip-tls-verify"),
        username=user.get("username"),
        password=user.get("password"),
        scheme="Bearer" if user.get("token") else None,
        token=user.get("token"),
        certificate_path=user.get("client-certificate"),
        certificate_data=_b64(user.get("client-certificate-data")),
        private_key_path=user.get("client-key"),
        private_key_data=_b64(user.get("client-key-data")),
        default_namespace=context.get("namespace"),
    )


def _b64(value: str | None) -> bytes | None:
    import base64

    return base64.b64decode(value) if value else None
