"""The test node's reading of a pod spec (tests/k8s/kubelet/spec.py and its
image table), without a cluster: what it refuses to ignore, the capability
set, the environment and the command line, as a kubelet composes them; and
how the node hands out pod addresses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from kubelet import images, spec
from kubelet.images import Image

FACTS = spec.PodFacts(
    name="web-1",
    namespace="apps",
    uid="u-1",
    node_name="lab-node",
    service_account="default",
    pod_ip="10.20.0.10",
    host_ip="10.10.0.1",
    labels={"app": "web"},
    annotations={"team": "edge"},
)
DATA: dict[tuple[str, str], dict[str, str]] = {
    ("Secret", "creds"): {"user": "admin", "pass": "s3cret"},
    ("ConfigMap", "settings"): {"MODE": "fast", "LEVEL": "3"},
}
IMAGE = Image(entrypoint=("/bin/server",), cmd=("--default",), env={"FROM_IMAGE": "1"})


def data_of(kind: str, name: str) -> Mapping[str, str] | None:
    return DATA.get((kind, name))


def env_of(
    container: dict[str, Any], service_env: Mapping[str, str] | None = None
) -> dict[str, str]:
    return spec.environment(container, IMAGE, FACTS, data_of, service_env or {})


# --- what the node refuses to ignore ---------------------------------------------------


def test_a_plain_pod_has_nothing_unsupported() -> None:
    pod = {
        "containers": [{"name": "c", "image": "x", "env": [{"name": "A", "value": "1"}]}],
        "volumes": [{"name": "v", "emptyDir": {}}],
        "restartPolicy": "Always",
    }
    assert spec.unsupported(pod) == []


def test_every_unsupported_field_is_named_with_its_path() -> None:
    pod = {
        "containers": [
            {
                "name": "c",
                "image": "x",
                "stdin": True,
                "securityContext": {"runAsUser": 1000, "seLinuxOptions": {}},
                "lifecycle": {"postStart": {"exec": {"command": ["true"]}}},
                "volumeMounts": [
                    {"name": "v", "mountPath": "/v", "subPathExpr": "$(POD)"},
                    {"name": "v", "mountPath": "/w", "mountPropagation": "Bidirectional"},
                ],
                "env": [{"name": "R", "valueFrom": {"resourceFieldRef": {"resource": "x"}}}],
            }
        ],
        "volumes": [{"name": "v", "nfs": {}}, {"name": "e", "emptyDir": {"sizeLimit": "1Gi"}}],
        "runtimeClassName": "kata",
    }
    assert sorted(spec.unsupported(pod)) == sorted(
        [
            "spec.runtimeClassName",
            "spec.volumes[0].nfs",
            "spec.volumes[1].emptyDir.sizeLimit",
            "spec.containers[0].stdin",
            "spec.containers[0].securityContext.runAsUser=1000",
            "spec.containers[0].securityContext.seLinuxOptions",
            "spec.containers[0].lifecycle.postStart",
            "spec.containers[0].volumeMounts[0].subPathExpr",
            "spec.containers[0].volumeMounts[1].mountPropagation",
            "spec.containers[0].env[0].valueFrom.resourceFieldRef",
        ]
    )


# --- capabilities --------------------------------------------------------------------------


def caps(ctx: dict[str, Any]) -> set[str] | None:
    kept = spec.capabilities({"securityContext": ctx})
    return None if kept is None else {spec.CAPABILITIES[i] for i in kept}


def test_a_container_that_asks_for_nothing_gets_the_runtime_defaults() -> None:
    assert caps({}) == set(spec.RUNTIME_DEFAULT_CAPS)


def test_drop_all_then_add_keeps_exactly_the_added_ones() -> None:
    kept = caps({"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "CAP_BPF"]}})
    assert kept == {"NET_ADMIN", "BPF"}


def test_dropping_one_default_keeps_the_rest_and_privileged_keeps_all() -> None:
    assert caps({"capabilities": {"drop": ["NET_RAW"]}}) == set(spec.RUNTIME_DEFAULT_CAPS) - {
        "NET_RAW"
    }
    assert caps({"privileged": True}) is None


def test_an_unknown_capability_is_a_config_error_naming_it() -> None:
    with pytest.raises(spec.ConfigError, match="NET_WIZARD"):
        caps({"capabilities": {"add": ["NET_WIZARD"]}})


# --- environment ---------------------------------------------------------------------------


def test_environment_in_the_kubelets_order_later_wins() -> None:
    env = env_of(
        {
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
            "env": [
                {"name": "FROM_IMAGE", "value": "overridden"},
                {"name": "SVC_HOST", "value": "mine"},
            ],
        },
        service_env={"SVC_HOST": "10.213.0.5", "SVC_PORT": "80"},
    )
    assert env["FROM_IMAGE"] == "overridden"
    assert env["SVC_HOST"] == "mine" and env["SVC_PORT"] == "80"
    assert env["CFG_MODE"] == "fast" and env["CFG_LEVEL"] == "3"
    assert env["HOSTNAME"] == "web-1" and env["PATH"]


def test_field_secret_and_config_map_references() -> None:
    env = env_of(
        {
            "env": [
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {
                    "name": "APP",
                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}},
                },
                {
                    "name": "USER",
                    "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}},
                },
                {
                    "name": "MODE",
                    "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "MODE"}},
                },
                {
                    "name": "MAYBE",
                    "valueFrom": {
                        "secretKeyRef": {"name": "creds", "key": "nope", "optional": True}
                    },
                },
            ]
        }
    )
    assert (env["POD"], env["IP"], env["APP"]) == ("web-1", "10.20.0.10", "web")
    assert (env["USER"], env["MODE"]) == ("admin", "fast")
    assert "MAYBE" not in env


@pytest.mark.parametrize(
    ("var", "message"),
    [
        (
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            "Secret apps/creds has no key 'token'",
        ),
        (
            {"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.priority"}}},
            "'spec.priority' is not supported",
        ),
    ],
    ids=["missing-key", "unsupported-fieldPath"],
)
def test_a_reference_that_cannot_be_honoured_is_a_config_error(
    var: dict[str, Any], message: str
) -> None:
    with pytest.raises(spec.ConfigError, match=message):
        env_of({"env": [var]})


def test_a_missing_env_from_source_is_an_error_unless_optional() -> None:
    with pytest.raises(spec.ConfigError, match="ConfigMap apps/absent not found"):
        env_of({"envFrom": [{"configMapRef": {"name": "absent"}}]})
    assert "X" not in env_of({"envFrom": [{"configMapRef": {"name": "absent", "optional": True}}]})


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("$(A)-$(B)", "1-two"),
        ("$$(A)", "$(A)"),  # escaped
        ("$(UNDEFINED)", "$(UNDEFINED)"),  # left as written
        ("$A and $(A", "$A and $(A"),  # not references
    ],
)
def test_dollar_expansion(text: str, want: str) -> None:
    assert spec.expand(text, {"A": "1", "B": "two"}) == want


# --- command line --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("container", "want"),
    [
        ({}, ["/bin/server", "--default"]),
        ({"args": ["--port=$(PORT)"]}, ["/bin/server", "--port=8080"]),
        ({"command": ["/bin/other"]}, ["/bin/other"]),  # command alone drops the CMD
        ({"command": ["/bin/other"], "args": ["-v"]}, ["/bin/other", "-v"]),
    ],
    ids=["image", "args-replace-cmd", "command-drops-cmd", "command-and-args"],
)
def test_command_and_args_compose_with_the_image(
    container: dict[str, Any], want: list[str]
) -> None:
    assert spec.argv(container, IMAGE, {"PORT": "8080"}) == want


# --- the image table -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "repository"),
    [
        ("registry.k8s.io/gateway-api/echo-basic:v1.6.1", "registry.k8s.io/gateway-api/echo-basic"),
        ("registry.k8s.io/coredns/coredns@sha256:abc", "registry.k8s.io/coredns/coredns"),
        ("localhost:5000/gatewaylb:0.1", "localhost:5000/gatewaylb"),  # a port is not a tag
        ("docker.io/library/busybox:1", "busybox"),
    ],
)
def test_repository_of_a_reference(reference: str, repository: str) -> None:
    assert images.repository(reference) == repository


def test_the_daemonsets_image_runs_the_checkouts_gatewaylb() -> None:
    image = images.resolve("gatewaylb:0.1.0")
    assert isinstance(image, Image)
    assert image.entrypoint == (str(images.REPO / ".venv" / "bin" / "gatewaylb"),)
    assert image.cmd == ("run", "--in-cluster")


def test_an_unknown_image_is_refused_with_a_message_naming_it() -> None:
    why = images.resolve("nginx:1.27")
    assert isinstance(why, str)
    assert '"nginx:1.27"' in why and "image table" in why


# --- pod addresses -------------------------------------------------------------------------


def test_pod_addresses_go_round_robin_and_a_released_one_comes_back_last() -> None:
    from kubelet.sandbox import AddressPool

    pool = AddressPool(["a", "b", "c"])
    assert [pool.take(), pool.take()] == ["a", "b"]
    pool.release("a")
    assert pool.take() == "c"  # not "a": the search goes on from where it stopped
    assert pool.take() == "a"
    with pytest.raises(RuntimeError, match="exhausted"):
        pool.take()
