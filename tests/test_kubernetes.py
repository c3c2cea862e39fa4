"""contrib/kubernetes: the manifests are valid Kubernetes and agree with the server they run.

No cluster: every manifest is validated against the schemas that the pinned `kubernetes-validate`
bundles (strict: an unknown or misspelt field fails), and what the manifests say about the server
(its variables, ports, probes, paths, drain, user, sizes) is checked against the server's own code
and the container image's Dockerfile.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
from importlib.resources import files
from typing import Any

import jsonschema
import kubernetes_validate
import referencing
import yaml
from twisted.python import usage
from twisted.trial import unittest

from imageserver import paths
from imageserver.admin import AdminApp
from imageserver.options import CONFIG_FIELDS, Config, ServerOptions
from imageserver.processing.pool import WARM_UP_SECONDS
from imageserver.service import DRAIN_SECONDS
from imageserver.store import LocalStore
from imageserver.uploader import PENDING_DIRECTORY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "contrib", "kubernetes")
OVERLAY = os.path.join(BASE, "prometheus")

# The oldest Kubernetes the manifests are for, and the newest that kubernetes-validate 1.37.0
# (pinned in pyproject.toml) bundles.
KUBERNETES_VERSIONS = ("1.30", "1.37")

# Measured figures (docs/scaling.md "Memory per worker", benchmarks/README.md), in MiB.
MAIN_PROCESS_MIB = 80  # the main process at any load, uploads streamed to disk
WORKER_MIB = 200  # a worker with --maximum_width up to 1000 (peaks 80-139)
WORKER_FULL_SIZE_AVIF_MIB = 500  # a worker making a full-size AVIF of a 12 MP photo (460-500)
MEASURED_MAXIMUM_WIDTH = 1000

# What the server's flags may be set with: IMAGE_SERVER_<FLAG>, and the few other names some
# flags also read (AWS_REGION...).
FLAG_VARIABLES = {Config.env_name(name) for name in CONFIG_FIELDS} | {
    variable for field in CONFIG_FIELDS.values() for variable in field.metadata["env"]
}


def read(path: str) -> str:
    with open(path) as manifest:
        return manifest.read()


def documents(path: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(read(path)) if document]


def kustomization(directory: str) -> dict[str, Any]:
    (found,) = documents(os.path.join(directory, "kustomization.yaml"))
    return found


def resources(directory: str) -> list[dict[str, Any]]:
    """Every resource of a kustomization: the documents of the files it lists, in order."""
    return [
        document
        for listed in kustomization(directory)["resources"]
        for document in documents(os.path.join(directory, listed))
    ]


def base() -> list[dict[str, Any]]:
    return resources(BASE)


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [
        resource
        for resource in base()
        if resource["kind"] == kind and name in (None, resource["metadata"]["name"])
    ]
    return found


def service_monitor() -> dict[str, Any]:
    (found,) = resources(OVERLAY)
    return found


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = one("Deployment")["spec"]["template"]["spec"]
    return spec


def container() -> dict[str, Any]:
    (found,) = pod_spec()["containers"]
    return found


def config_map() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap")["data"]
    return data


def configured(as_shipped: bool = False, **changes: str) -> Config:
    """The server's configuration from the manifests' variables, as the pod would start it: the
    ConfigMap with its bucket set (the one change it needs, unless ``as_shipped``), the Secrets'
    variables (placeholder values), then ``changes``; the signing secrets file replaced by a local
    one holding a secret (the options check that it exists)."""
    environ = dict(config_map())
    if not as_shipped:
        environ["IMAGE_SERVER_AWS_BUCKET"] = "my-images"
    for variable in container().get("env", []):
        environ[variable["name"]] = "placeholder"
    with tempfile.TemporaryDirectory() as directory:
        secrets = os.path.join(directory, "secrets.txt")
        with open(secrets, "w") as written:
            written.write("a-secret\n")
        environ["IMAGE_SERVER_SIGNING_SECRETS_FILE"] = secrets
        environ.update(changes)
        options = ServerOptions(environ)
        options.parseOptions([])
    return options.config


def container_port(name: str) -> int:
    (number,) = [port["containerPort"] for port in container()["ports"] if port["name"] == name]
    return int(number)


def quantity(value: str | int) -> float:
    """A Kubernetes quantity in base units (cores, bytes)."""
    text = str(value)
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3}
    suffixes |= {"M": 1e6, "G": 1e9, "T": 1e12}
    for suffix, factor in sorted(suffixes.items(), key=lambda item: -len(item[0])):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels only, as the manifests use) matches labels."""
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


def admin_route(path: str) -> str:
    """The endpoint (handler name) of the admin site that serves ``path``."""
    endpoint, _ = AdminApp.app.url_map.bind("localhost").match(path)
    return str(endpoint)


class KustomizationTests(unittest.SynchronousTestCase):
    def test_the_base_is_plain_resources(self) -> None:
        found = kustomization(BASE)
        self.assertEqual(set(found), {"apiVersion", "kind", "resources"})
        self.assertEqual(
            (found["apiVersion"], found["kind"]),
            ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
        )
        for listed in found["resources"]:
            self.assertRegex(listed, r"^[a-z-]+\.yaml$")
            self.assertTrue(os.path.isfile(os.path.join(BASE, listed)), listed)

    def test_every_manifest_is_listed(self) -> None:
        on_disk = {name for name in os.listdir(BASE) if name.endswith((".yaml", ".yml"))}
        listed = set(kustomization(BASE)["resources"])
        self.assertEqual(on_disk - {"kustomization.yaml"}, listed)

    def test_the_base_holds_what_issue_22_names(self) -> None:
        kinds = sorted(resource["kind"] for resource in base())
        self.assertEqual(
            kinds,
            sorted(
                [
                    "ConfigMap",
                    "Deployment",
                    "Service",
                    "Service",
                    "PodDisruptionBudget",
                    "HorizontalPodAutoscaler",
                    "NetworkPolicy",
                ]
            ),
        )

    def test_the_overlay_adds_the_service_monitor(self) -> None:
        found = kustomization(OVERLAY)
        self.assertEqual(set(found), {"apiVersion", "kind", "resources"})
        # Not the base: kustomize refuses a resource directory that contains the kustomization.
        self.assertEqual(found["resources"], ["servicemonitor.yaml"])
        self.assertEqual(service_monitor()["kind"], "ServiceMonitor")

    def test_kubectl_kustomize_renders_the_files_as_they_are(self) -> None:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            self.skipTest("kubectl is not installed here")  # pragma: no cover
        for directory, expected in ((BASE, base()), (OVERLAY, [service_monitor()])):
            rendered = subprocess.run(
                [kubectl, "kustomize", directory], check=True, capture_output=True, text=True
            ).stdout
            key = lambda resource: (resource["kind"], resource["metadata"]["name"])  # noqa: E731
            self.assertEqual(
                sorted(yaml.safe_load_all(rendered), key=key), sorted(expected, key=key)
            )


def validate_service_monitor(resource: dict[str, Any], version: str) -> None:
    """Validate a ServiceMonitor: its metadata and selector against Kubernetes' own schemas, its
    spec against the fields of the Prometheus Operator's CRD (monitoring.coreos.com/v1) that the
    manifests use, nothing else allowed."""
    folder = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}.0-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text())
    duration = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"  # noqa: E501
    meta = "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1."
    schema_id = "https://kubernetes.io/api/servicemonitor.json"
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_id,
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": {"$ref": meta + "ObjectMeta"},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "endpoints"],
                "properties": {
                    "selector": {"$ref": meta + "LabelSelector"},
                    "jobLabel": {"type": "string"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": {"type": "string", "pattern": duration},
                                "scrapeTimeout": {"type": "string", "pattern": duration},
                            },
                        },
                    },
                },
            },
        },
    }
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(
        [
            (definitions["$id"], referencing.Resource.from_contents(definitions)),
            (schema_id, referencing.Resource.from_contents(schema)),
        ]
    )
    jsonschema.Draft202012Validator(schema, registry=registry).validate(resource)


def seconds(duration: str) -> int:
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(int(n) * units[unit] for n, unit in re.findall(r"(\d+)([hms])", duration))


class SchemaTests(unittest.SynchronousTestCase):
    def test_every_manifest_validates(self) -> None:
        for version in KUBERNETES_VERSIONS:
            for resource in base():
                validated = kubernetes_validate.validate(resource, version, strict=True)
                self.assertEqual(validated, version, resource["kind"])

    def test_a_misspelt_field_fails(self) -> None:
        deployment = copy.deepcopy(one("Deployment"))
        probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        probe["httpGet"]["paht"] = probe["httpGet"].pop("path")
        with self.assertRaises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)

    def test_the_service_monitor_validates(self) -> None:
        for version in KUBERNETES_VERSIONS:
            validate_service_monitor(service_monitor(), version)
        wrong = copy.deepcopy(service_monitor())
        wrong["spec"]["endpoints"][0]["intervall"] = "30s"
        with self.assertRaises(jsonschema.ValidationError):
            validate_service_monitor(wrong, KUBERNETES_VERSIONS[0])

    def test_the_service_monitor_scrapes_the_admin_service(self) -> None:
        monitor = service_monitor()["spec"]
        services = [resource for resource in base() if resource["kind"] == "Service"]
        (admin,) = [
            service
            for service in services
            if selects(monitor["selector"], service["metadata"]["labels"])
        ]
        self.assertEqual(admin["metadata"]["name"], "image-server-admin")
        (endpoint,) = monitor["endpoints"]
        (port,) = [port for port in admin["spec"]["ports"] if port["name"] == endpoint["port"]]
        self.assertEqual(container_port(port["targetPort"]), configured().admin_port)
        self.assertEqual(admin_route(endpoint["path"]), AdminApp.metrics_page.__name__)
        # The operator refuses a scrape timeout longer than the interval.
        self.assertLessEqual(seconds(endpoint["scrapeTimeout"]), seconds(endpoint["interval"]))


class ServerTests(unittest.SynchronousTestCase):
    """What the manifests say about the server is what the server does."""

    def test_every_variable_is_a_flag(self) -> None:
        manifests = [os.path.join(BASE, name) for name in kustomization(BASE)["resources"]]
        manifests += [os.path.join(OVERLAY, name) for name in kustomization(OVERLAY)["resources"]]
        mentioned = {
            variable
            for manifest in manifests
            for variable in re.findall(r"\bIMAGE_SERVER_[A-Z0-9_]+", read(manifest))
        }
        self.assertIn("IMAGE_SERVER_PROCESSOR_CONCURRENCY", mentioned)
        self.assertEqual(mentioned - FLAG_VARIABLES, set())
        given = set(config_map()) | {variable["name"] for variable in container()["env"]}
        self.assertEqual(given - FLAG_VARIABLES, set())

    def test_the_variables_parse_as_the_server_would(self) -> None:
        config = configured()
        self.assertEqual(config.aws_bucket, "my-images")
        self.assertEqual(config.effective_uploader, "s3")
        self.assertTrue(config.require_signature)
        self.assertEqual(config.log_format, "json")

    def test_without_a_bucket_the_server_does_not_start(self) -> None:
        """The bucket is the only durable store here: the ConfigMap leaves it to be set, and the
        server then refuses to start, naming the flag."""
        self.assertEqual(config_map()["IMAGE_SERVER_AWS_BUCKET"], "")
        with self.assertRaises(usage.UsageError) as raised:
            configured(as_shipped=True)
        self.assertIn("--aws_bucket", str(raised.exception))

    def test_the_command_is_the_server_not_the_image_entrypoint(self) -> None:
        """bin/docker-entrypoint passes --aws_bucket, --local_base_path... as flags, which win
        over the ConfigMap's variables: the container runs the command itself."""
        dockerfile = read(os.path.join(ROOT, "Dockerfile"))
        self.assertIn('ENTRYPOINT ["docker-entrypoint"]', dockerfile)
        self.assertIn("--aws_bucket", read(os.path.join(ROOT, "bin", "docker-entrypoint")))
        self.assertEqual(container()["command"] + container()["args"], ["image-server", "server"])
        self.assertIn('scripts=["bin/image-server"]', read(os.path.join(ROOT, "setup.py")))

    def test_ports_are_the_servers(self) -> None:
        config = configured()
        self.assertEqual(container_port("http"), config.port)
        self.assertEqual(container_port("admin"), config.admin_port)
        self.assertEqual(config.listen, "0.0.0.0")  # the pod's address, for probes and Services
        expected = {"image-server": config.port, "image-server-admin": config.admin_port}
        for name, port in expected.items():
            (service_port,) = one("Service", name)["spec"]["ports"]
            self.assertEqual(container_port(service_port["targetPort"]), port, name)
        for name, number in (("http", 7000), ("admin", 7002)):
            self.assertEqual(container_port(name), number)

    def test_probes_are_the_admin_sites(self) -> None:
        admin_port = configured().admin_port
        expected = {
            "livenessProbe": AdminApp.live.__name__,
            "readinessProbe": AdminApp.ready.__name__,
            # /probe/ready answers 503 until every worker has warmed up.
            "startupProbe": AdminApp.ready.__name__,
        }
        for probe, handler in expected.items():
            http = container()[probe]["httpGet"]
            self.assertEqual(admin_route(http["path"]), handler, probe)
            self.assertEqual(container_port(http["port"]), admin_port, probe)
        self.assertEqual(container()["livenessProbe"]["httpGet"]["path"], "/probe/live")
        self.assertEqual(container()["readinessProbe"]["httpGet"]["path"], "/probe/ready")

    def test_the_startup_probe_waits_for_the_warm_up(self) -> None:
        startup = container()["startupProbe"]
        self.assertGreater(startup["periodSeconds"] * startup["failureThreshold"], WARM_UP_SECONDS)

    def test_termination_outlasts_the_drain(self) -> None:
        command = container()["lifecycle"]["preStop"]["exec"]["command"]
        self.assertEqual(command[0], "sleep")
        pre_stop = int(command[1])
        self.assertGreater(pod_spec()["terminationGracePeriodSeconds"], pre_stop + DRAIN_SECONDS)

    def test_non_root_with_a_read_only_root(self) -> None:
        pod, own = pod_spec()["securityContext"], container()["securityContext"]
        self.assertIs(pod["runAsNonRoot"], True)
        # The image's USER is a name, which the kubelet cannot check against runAsNonRoot.
        (user,) = re.findall(r"^USER (\S+)$", read(os.path.join(ROOT, "Dockerfile")), re.M)
        if not user.isdigit():
            self.assertIsInstance(pod["runAsUser"], int)
        self.assertGreater(pod.get("runAsUser", int(user) if user.isdigit() else 0), 0)
        self.assertIs(own["readOnlyRootFilesystem"], True)
        self.assertIs(own["allowPrivilegeEscalation"], False)
        self.assertEqual(own["capabilities"]["drop"], ["ALL"])
        self.assertNotIn("privileged", own)

    def test_the_cache_is_a_bounded_empty_dir(self) -> None:
        config = configured()
        volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
        mounts = {mount["mountPath"]: mount for mount in container()["volumeMounts"]}
        cache = mounts[config.local_base_path]
        self.assertFalse(cache.get("readOnly", False))
        self.assertNotIn("subPath", cache)
        self.assertIn("sizeLimit", volumes[cache["name"]]["emptyDir"])
        # Everything the server writes is below it: the spool and the upload journal.
        store = LocalStore(config.local_base_path)
        for written in (store.tmp, os.path.join(store.base, PENDING_DIRECTORY)):
            self.assertTrue(written.startswith(config.local_base_path + "/"), written)
        self.assertEqual(os.path.basename(store.tmp), paths.TMP_DIRECTORY)
        # libvips' temporary files: the workers are given no TMPDIR.
        self.assertIn("sizeLimit", volumes[mounts["/tmp"]["name"]]["emptyDir"])
        # Every writable mount is an emptyDir.
        for path, mount in mounts.items():
            if not mount.get("readOnly", False):
                self.assertIn("emptyDir", volumes[mount["name"]], path)

    def test_the_signing_secrets_file_is_the_secret(self) -> None:
        self.assertTrue(configured().require_signature)
        secrets_file = config_map()["IMAGE_SERVER_SIGNING_SECRETS_FILE"]
        volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
        (mount,) = [
            mount
            for mount in container()["volumeMounts"]
            if secrets_file.startswith(mount["mountPath"] + "/")
        ]
        # No subPath: a Secret updated in place reaches the file, which the server re-reads.
        self.assertNotIn("subPath", mount)
        self.assertTrue(mount["readOnly"])
        secret = volumes[mount["name"]]["secret"]
        self.assertEqual(secret["secretName"], "image-server-signing")
        self.assertNotIn("items", secret)  # the file is named after the Secret's key
        self.assertEqual(os.path.basename(secrets_file), "secrets.txt")

    def test_aws_credentials_come_from_one_optional_secret(self) -> None:
        sources = {
            variable["name"]: variable["valueFrom"]["secretKeyRef"]
            for variable in container()["env"]
        }
        self.assertEqual(
            set(sources), {"IMAGE_SERVER_AWS_ACCESS_KEY_ID", "IMAGE_SERVER_AWS_SECRET_KEY"}
        )
        # Both or neither (the server refuses one alone); neither leaves the AWS chain.
        self.assertEqual({source["name"] for source in sources.values()}, {"image-server-aws"})
        self.assertTrue(all(source["optional"] for source in sources.values()))

    def test_service_links_are_off(self) -> None:
        """Kubernetes would define <SERVICE>_PORT=tcp://... for every Service: for ours, two of
        the server's own variables."""
        links = {
            re.sub(r"\W", "_", resource["metadata"]["name"].upper()) + "_PORT"
            for resource in base()
            if resource["kind"] == "Service"
        }
        self.assertEqual(links & FLAG_VARIABLES, {"IMAGE_SERVER_PORT", "IMAGE_SERVER_ADMIN_PORT"})
        self.assertIs(pod_spec()["enableServiceLinks"], False)

    def test_resources_follow_the_measured_figures(self) -> None:
        config = configured()
        workers = config.processor_concurrency
        requests, limits = container()["resources"]["requests"], container()["resources"]["limits"]
        # One single-threaded worker per requested core; the main process is one thread more.
        self.assertEqual(quantity(requests["cpu"]), workers)
        self.assertEqual(quantity(limits["cpu"]), workers + 1)
        mib = 2**20
        self.assertLessEqual(config.maximum_width, MEASURED_MAXIMUM_WIDTH)
        self.assertGreaterEqual(
            quantity(requests["memory"]), (MAIN_PROCESS_MIB + workers * WORKER_MIB) * mib
        )
        self.assertGreaterEqual(
            quantity(limits["memory"]),
            (MAIN_PROCESS_MIB + workers * WORKER_FULL_SIZE_AVIF_MIB) * mib,
        )
        sizes = [
            quantity(volume["emptyDir"]["sizeLimit"])
            for volume in pod_spec()["volumes"]
            if "emptyDir" in volume
        ]
        self.assertGreaterEqual(quantity(requests["ephemeral-storage"]), sum(sizes))
        text = read(os.path.join(BASE, "deployment.yaml"))
        for source in ("docs/scaling.md", "benchmarks/README.md"):
            self.assertIn(source, text)


class SelectorTests(unittest.SynchronousTestCase):
    """Every resource finds the pods it is about."""

    def test_selectors_match_the_pods(self) -> None:
        deployment = one("Deployment")
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        self.assertTrue(selects(deployment["spec"]["selector"], labels))
        for service in (one("Service", "image-server"), one("Service", "image-server-admin")):
            selector = {"matchLabels": service["spec"]["selector"]}
            self.assertTrue(selects(selector, labels), service["metadata"]["name"])
        self.assertTrue(selects(one("PodDisruptionBudget")["spec"]["selector"], labels))
        self.assertTrue(selects(one("NetworkPolicy")["spec"]["podSelector"], labels))

    def test_the_autoscaler_and_the_budget(self) -> None:
        deployment, hpa = one("Deployment"), one("HorizontalPodAutoscaler")["spec"]
        self.assertEqual(
            hpa["scaleTargetRef"],
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]},
        )
        self.assertEqual(deployment["spec"]["replicas"], 2)
        self.assertEqual(hpa["minReplicas"], deployment["spec"]["replicas"])
        (metric,) = hpa["metrics"]
        self.assertEqual((metric["type"], metric["resource"]["name"]), ("Resource", "cpu"))
        budget = one("PodDisruptionBudget")["spec"]
        self.assertEqual(budget["maxUnavailable"], 1)

    def test_the_admin_port_stays_inside_the_cluster(self) -> None:
        policy = one("NetworkPolicy")["spec"]
        self.assertIn("Ingress", policy["policyTypes"])
        names = {"http": configured().port, "admin": configured().admin_port}
        open_ports = set()
        for rule in policy["ingress"]:
            self.assertIn("ports", rule)  # a rule without ports would open every port
            ports = {names.get(port["port"], port["port"]) for port in rule["ports"]}
            peers = rule.get("from", [])
            if names["admin"] in ports:
                # Only pods of this cluster: no rule open to all, no address block.
                self.assertTrue(peers)
                for peer in peers:
                    self.assertLessEqual(set(peer), {"namespaceSelector", "podSelector"})
            if not peers:
                open_ports |= ports
        self.assertEqual(open_ports, {names["http"]})


class DocumentationTests(unittest.SynchronousTestCase):
    def section(self) -> str:
        text = read(os.path.join(ROOT, "docs", "deployment.md"))
        start = text.index("\n## Kubernetes\n")
        end = text.find("\n## ", start + 1)
        return text[start : end if end != -1 else len(text)]

    def test_the_section_says_how_to_apply_and_what_to_create(self) -> None:
        section = self.section()
        self.assertIn("kubectl apply -k contrib/kubernetes", section)
        self.assertIn("IMAGE_SERVER_AWS_BUCKET", section)
        for secret in ("image-server-signing", "image-server-aws"):
            self.assertIn(secret, read(os.path.join(BASE, "deployment.yaml")))
            self.assertIn(secret, section)
        self.assertIn('"bucket"', section)

    def test_the_metrics_it_names_exist(self) -> None:
        documented = set(
            re.findall(r"`(image_server_\w+)`", read(os.path.join(ROOT, "docs", "metrics.md")))
        )
        named = set(re.findall(r"\bimage_server_\w+", self.section()))
        self.assertTrue(named)
        self.assertEqual(named - documented, set())
