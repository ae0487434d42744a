"""The few Kubernetes API calls the operator makes: server-side apply, get, list, delete.

One field manager for every write. Paths come from a static table of the kinds the operator
manages, so no discovery is needed and a missing CRD shows up as a clear `NotFound`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient

FIELD_MANAGER = "alpaca-operator"
REQUEST_TIMEOUT = (10.0, 60.0)  # connect, read: an apiserver that went away never hangs a pass
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


@dataclass(frozen=True)
class Kind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = (
            f"/api/{self.api_version}"
            if "/" not in self.api_version
            else f"/apis/{self.api_version}"
        )
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


KINDS = {
    (k.api_version, k.kind): k
    for k in (
        Kind("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        Kind("v1", "Service", "services"),
        Kind("v1", "Pod", "pods"),
        Kind("v1", "Event", "events"),
        Kind("v1", "ServiceAccount", "serviceaccounts"),
        Kind("v1", "Secret", "secrets"),
        Kind("v1", "Node", "nodes", namespaced=False),
        Kind("batch/v1", "Job", "jobs"),
        Kind("rbac.authorization.k8s.io/v1", "Role", "roles"),
        Kind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings"),
        Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
        Kind("ray.io/v1", "RayService", "rayservices"),
        Kind("ray.io/v1", "RayCluster", "rayclusters"),
        Kind("karpenter.sh/v1", "NodePool", "nodepools", namespaced=False),
        Kind("alpaca.dev/v1alpha1", "AlpacaModel", "alpacamodels"),
        Kind("alpaca.dev/v1alpha1", "AlpacaFineTune", "alpacafinetunes"),
        Kind(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            "customresourcedefinitions",
            namespaced=False,
        ),
        Kind("kopf.dev/v1", "ClusterKopfPeering", "clusterkopfpeerings", namespaced=False),
    )
}


class ApiError(Exception):
    """A non-2xx answer from the apiserver."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body
        self.reason = str(body.get("reason", ""))
        super().__init__(f"{status} {self.reason}: {body.get('message', '')}")

    @property
    def not_found(self) -> bool:
        return self.status == 404


def kind_of(obj: dict[str, Any]) -> Kind:
    return KINDS[(obj["apiVersion"], obj["kind"])]


class Kube:
    """A thin client over kubernetes' ApiClient; every write goes through `apply`."""

    def __init__(
        self,
        api: ApiClient,
        field_manager: str = FIELD_MANAGER,
        on_write: Callable[[str], None] | None = None,
        on_request: Callable[[str, str], None] | None = None,
    ) -> None:
        self.api = api
        self.field_manager = field_manager
        self.writes = 0  # requests that could change state, for tests
        self.on_write = on_write  # called with the written object's kind (metrics)
        self.on_request = on_request  # called with (verb, path) of every request (metrics)

    def _wrote(self, kind: str) -> None:
        self.writes += 1
        if self.on_write is not None:
            self.on_write(kind)

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str | None = None,
        accept: str = "application/json",
    ) -> dict[str, Any]:
        if self.on_request is not None:
            self.on_request(method, path)
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        m, url, h, b, _ = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        resp = self.api.call_api(m, url, header_params=h, body=b, _request_timeout=REQUEST_TIMEOUT)
        resp.read()
        try:
            data = json.loads(resp.data) if resp.data else {}
        except ValueError:  # "404 page not found" for an API group that is not served
            data = {"message": resp.data.decode(errors="replace").strip()}
        if resp.status >= 400:
            raise ApiError(resp.status, data)
        return dict(data)

    def apply(self, obj: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        """Server-side apply under the operator's field manager (forcing conflicts: we own these)."""
        meta = obj["metadata"]
        path = kind_of(obj).path(meta.get("namespace"), meta["name"])
        if subresource:
            path += f"/{subresource}"
        self._wrote(obj["kind"])
        return self._request(
            "PATCH",
            path,
            body=obj,
            query=[("fieldManager", self.field_manager), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """POST a new object (Events: each one is new, named by the apiserver)."""
        self._wrote(obj["kind"])
        return self._request(
            "POST",
            kind_of(obj).path(obj["metadata"].get("namespace")),
            body=obj,
            query=[("fieldManager", self.field_manager)],
            content_type="application/json",
        )

    def json_patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        ops: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """An RFC 6902 patch, for the few fields of another controller's object we adjust
        (list elements that server-side apply would replace whole)."""
        self._wrote(kind)
        return self._request(
            "PATCH",
            KINDS[(api_version, kind)].path(namespace, name),
            body=ops,
            query=[("fieldManager", self.field_manager)],
            content_type="application/json-patch+json",
        )

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        try:
            return self._request("GET", KINDS[(api_version, kind)].path(namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def resource_version(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> str | None:
        """An object's resourceVersion, None when it does not exist. Only its metadata is asked
        for (PartialObjectMetadata): a Secret's data never reaches the operator."""
        try:
            meta = self._request(
                "GET", KINDS[(api_version, kind)].path(namespace, name), accept=METADATA_ONLY
            )
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return str((meta.get("metadata") or {}).get("resourceVersion") or "")

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        selector: str | None = None,
        fields: str | None = None,
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", selector)] if selector else []
        if fields:
            query.append(("fieldSelector", fields))
        return list(
            self._request("GET", KINDS[(api_version, kind)].path(namespace), query=query).get(
                "items", []
            )
        )

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete with background propagation; False when it was already gone."""
        self._wrote(kind)
        try:
            self._request(
                "DELETE",
                KINDS[(api_version, kind)].path(namespace, name),
                body={"propagationPolicy": "Background"},
                content_type="application/json",
            )
        except ApiError as exc:
            if exc.not_found:
                return False
            raise
        return True

    def crd_installed(self, name: str) -> bool:
        """Whether a CustomResourceDefinition exists and is not being deleted (RayService,
        NodePool): a terminating CRD's objects are going with it."""
        crd = self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
        return crd is not None and not crd["metadata"].get("deletionTimestamp")
