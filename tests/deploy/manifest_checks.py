"""What tests/deploy/test_manifests.py checks the deployment files against: what the project
defines (Dockerfile stages, settings, routes, CLI, pins), loaders for compose and the rendered
Kubernetes manifests, and one function per kind of file that returns its problems."""
from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = REPO / "docker-compose.yml"
SCHEMAS = Path(__file__).with_name("schemas")
BIN = Path(sys.executable).parent
# The oldest Kubernetes the manifests claim (CronJob.spec.timeZone is GA from 1.27) and the newest
# that kubernetes-validate knows.
K8S_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
OTHER_ENV = {"PYTHONUNBUFFERED", "TORCH_CPP_LOG_LEVEL"}
NON_K8S_FILES = {"schedule.yaml"}  # a configMapGenerator input, not a resource


# --- what the project defines -------------------------------------------------------------------

def dockerfile_stages() -> set[str]:
    text = (DEPLOY / "Dockerfile").read_text()
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, flags=re.M | re.I))


def dockerfile_env() -> dict[str, str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in re.findall(r"^ENV\s+(.+)$", text, flags=re.M):
        for item in shlex.split(line):
            if "=" in item:
                key, value = item.split("=", 1)
                env[key] = value
    return env


@cache
def known_settings() -> set[str]:
    """SEQATTN_* variables the code reads: the service's Settings fields and the literals in the code."""
    from services.selector_api.settings import Settings

    names = {f"SEQATTN_{name.upper()}" for name in Settings.model_fields}
    for package in ("pipelines", "services", "seqattn_core"):
        for path in (REPO / package).rglob("*.py"):
            names |= set(re.findall(r"[\"'](SEQATTN_[A-Z_]+)[\"']", path.read_text()))
    return names


@cache
def ray_reads(name: str) -> bool:
    """Whether Ray's own code names this environment variable."""
    import ray

    root = Path(ray.__file__).parent
    return any(f'"{name}"' in p.read_text(errors="ignore")
               for p in list(root.glob("*.py")) + list(root.glob("_private/**/*.py")))


@cache
def app_routes() -> set[str]:
    import tempfile

    from services.selector_api.app import create_app
    from services.selector_api.settings import Settings

    app = create_app(Settings(home=tempfile.mkdtemp(prefix="sa-routes-"), scheduler_enabled=False))
    return set(app.openapi()["paths"])


def serve_port_default() -> int:
    from services.cli import build_parser

    return build_parser().parse_args(["serve"]).port


def cli_problems(args: list[str], where: str) -> list[str]:
    """``args`` must parse as a ``seqattn`` command (the image's entrypoint passes them on)."""
    from services.cli import build_parser

    try:
        build_parser().parse_args(args)
    except SystemExit:
        return [f"{where}: {args} is not a valid seqattn command line"]
    return []


def ray_start_problems(args: list[str], where: str) -> list[str]:
    """``ray start ...`` options must be ones Ray's CLI takes (parsed by its click command, not run)."""
    import click
    from ray.scripts.scripts import start

    try:
        start.make_context("start", list(args))
    except click.ClickException as exc:
        return [f"{where}: ray start {args}: {exc.format_message()}"]
    return []


def ray_pin() -> str:
    line = next(s for s in (DEPLOY / "constraints.txt").read_text().splitlines() if s.lower().startswith("ray=="))
    return line.split("==", 1)[1].strip()


def makefile_pins() -> dict[str, str]:
    text = (REPO / "Makefile").read_text()
    return {"torch": re.search(r"torch==([\d.]+)", text).group(1),
            "torchrec": re.search(r"torchrec==([\d.]+)", text).group(1),
            "fbgemm-gpu": re.search(r"fbgemm-gpu==([\d.]+)", text).group(1),
            "fbgemm-gpu-cpu": re.search(r"fbgemm-gpu-cpu==([\d.]+)", text).group(1)}


# --- loading --------------------------------------------------------------------------------------

INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?([-?])([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` (the error: a stand-in value)."""
    if isinstance(value, str):
        def one(m: re.Match[str]) -> str:
            name, op, arg = m.group(1), m.group(2), m.group(3) or ""
            if env.get(name):
                return env[name]
            return arg if op == "-" else "set-by-the-operator" if op == "?" else ""
        return INTERPOLATION.sub(one, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


@cache
def compose_raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose() -> dict[str, Any]:
    """The compose file as the engine sees it: anchors merged, variables at their defaults."""
    data = copy.deepcopy(compose_raw())
    return interpolate({k: v for k, v in data.items() if not k.startswith("x-")}, {})


@cache
def k8s_rendered() -> tuple[str, list[dict[str, Any]]]:
    """``kubectl kustomize`` where kubectl is here; else the kustomization's resources as written."""
    kubectl = shutil.which("kubectl")
    if kubectl:
        out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"kubectl kustomize failed: {out.stderr}"
        return "kubectl kustomize", [d for d in yaml.safe_load_all(out.stdout) if d]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = [d for name in kustomization["resources"] for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    for gen in kustomization.get("configMapGenerator", []):
        docs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]},
                     "data": {Path(f).name: (K8S / f).read_text() for f in gen["files"]}})
    return "the kustomization's files (no kubectl here)", docs


def k8s_docs() -> list[dict[str, Any]]:
    return copy.deepcopy(k8s_rendered()[1])


def pod_specs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod spec) for each pod template a resource holds."""
    kind, name = doc["kind"], doc["metadata"]["name"]
    spec = doc.get("spec", {})
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        return [(f"{kind}/{name}", spec["template"]["spec"])]
    if kind == "CronJob":
        return [(f"{kind}/{name}", spec["jobTemplate"]["spec"]["template"]["spec"])]
    if kind == "RayCluster":
        out = [(f"{kind}/{name}/head", spec["headGroupSpec"]["template"]["spec"])]
        out += [(f"{kind}/{name}/{g['groupName']}", g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]
        return out
    return []


# --- checks: each returns a list of problems -------------------------------------------------------

def schema_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems = []
    ray_schema = json.loads((SCHEMAS / "raycluster-ray.io-v1.json").read_text())
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("kind") == "RayCluster":
            for err in jsonschema.Draft202012Validator(ray_schema).iter_errors(doc):
                problems.append(f"{where}: {'.'.join(map(str, err.absolute_path))}: {err.message}")
            groups = [doc["spec"].get("headGroupSpec", {})] + doc["spec"].get("workerGroupSpecs", [])
            templates = [g["template"] for g in groups if isinstance(g, dict) and "template" in g]
            checks = [{"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{where}-{i}"}, "template": t}
                      for i, t in enumerate(templates)]
        else:
            checks = [doc]
        for check in checks:
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(check, version, strict=True)
                except kubernetes_validate.ValidationError as err:
                    problems.append(f"{where} (Kubernetes {version}): {'.'.join(map(str, err.path))}: {err.message}")
                except kubernetes_validate.SchemaNotFoundError as err:
                    problems.append(f"{where}: {err.message}")
    return problems


def image_problems(images: list[tuple[str, str]]) -> list[str]:
    stages = dockerfile_stages()
    problems = []
    for where, image in images:
        name, _, tag = image.rpartition(":")
        if name.rsplit("/", 1)[-1] != "seqattn" or tag not in stages:
            problems.append(f"{where}: image {image!r} is not seqattn:<a stage of deploy/Dockerfile> "
                            f"({sorted(stages)})")
    return problems


def env_problems(names: list[tuple[str, str]]) -> list[str]:
    problems = []
    for where, name in names:
        if name.startswith("SEQATTN_"):
            if name not in known_settings():
                problems.append(f"{where}: {name} is not a setting seqattn reads ({sorted(known_settings())})")
        elif name.startswith("RAY_"):
            if not ray_reads(name) and name != "RAY_ADDRESS":
                problems.append(f"{where}: Ray reads no variable {name}")
        elif name not in OTHER_ENV:
            problems.append(f"{where}: unexpected variable {name}")
    return problems


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<from a secret>") for e in container.get("env", [])}


def k8s_project_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    image_env = dockerfile_env()
    port = serve_port_default()
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    clusters = {d["metadata"]["name"]: d for d in docs if d["kind"] == "RayCluster"}
    for doc in docs:
        for where, pod in pod_specs(doc):
            ctx = pod.get("securityContext", {})
            if ctx.get("runAsNonRoot") is not True or ctx.get("runAsUser", 0) == 0:
                problems.append(f"{where}: the pod must run as non-root (runAsNonRoot, runAsUser != 0)")
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for v in volumes.values():
                if "persistentVolumeClaim" in v and v["persistentVolumeClaim"]["claimName"] not in claims:
                    problems.append(f"{where}: volume {v['name']} claims {v['persistentVolumeClaim']['claimName']!r}, "
                                    f"which no manifest defines ({sorted(claims)})")
                if "configMap" in v and v["configMap"]["name"] not in config_maps:
                    problems.append(f"{where}: volume {v['name']} names ConfigMap {v['configMap']['name']!r}, "
                                    "not defined")
            for c in pod["containers"]:
                cw = f"{where}/{c['name']}"
                problems += image_problems([(cw, c["image"])])
                env = container_env(c)
                problems += env_problems([(cw, n) for n in env])
                for key in ("cpu", "memory"):
                    for side in ("requests", "limits"):
                        if key not in c.get("resources", {}).get(side, {}):
                            problems.append(f"{cw}: no resources.{side}.{key}")
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                home = env.get("SEQATTN_HOME", image_env.get("SEQATTN_HOME"))
                roots = env.get("SEQATTN_DATA_ROOTS", image_env.get("SEQATTN_DATA_ROOTS"))
                if home != image_env.get("SEQATTN_HOME"):
                    problems.append(f"{cw}: SEQATTN_HOME={home} but the image's is {image_env.get('SEQATTN_HOME')}")
                for path in [home] + [r for r in (roots or "").split(":") if r]:
                    claim = volumes.get(mounts.get(path, ""), {}).get("persistentVolumeClaim")
                    if doc["kind"] != "Job" or path != home:  # the sample-data Job writes /data only
                        if claim is None:
                            problems.append(f"{cw}: {path} (SEQATTN_HOME / SEQATTN_DATA_ROOTS) is not a mounted "
                                            "volume claim")
                if doc["kind"] != "RayCluster":  # KubeRay replaces a Ray container's command with `ray start`
                    problems += cli_problems(c.get("args", []), cw)
                    args = c.get("args", [])
                    if args[:1] == ["serve"]:
                        served = int(args[args.index("--port") + 1]) if "--port" in args else port
                        named = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
                        if served not in named.values():
                            problems.append(f"{cw}: serves on {served} but declares ports {sorted(named.values())}")
                        for probe in ("readinessProbe", "livenessProbe"):
                            get = c.get(probe, {}).get("httpGet")
                            if not get:
                                problems.append(f"{cw}: no {probe} with httpGet")
                                continue
                            target = named.get(get["port"], get["port"])
                            if get["path"] not in app_routes() or target != served:
                                problems.append(f"{cw}: {probe} asks {get['path']} on {target}; the app serves "
                                                f"/healthz on {served}")
                    for mount in c.get("volumeMounts", []):
                        vol = volumes.get(mount["name"], {})
                        if "configMap" in vol:
                            cm = config_maps.get(vol["configMap"]["name"], {})
                            for arg in args:
                                if arg.startswith(mount["mountPath"] + "/") \
                                        and Path(arg).name not in cm.get("data", {}):
                                    problems.append(f"{cw}: {arg} is not a key of ConfigMap {vol['configMap']['name']}")
                address = env.get("RAY_ADDRESS")
                if address:
                    host, _, gcs = address.partition(":")
                    cluster = host.removesuffix("-head-svc")
                    head = clusters.get(cluster)
                    if head is None or not host.endswith("-head-svc"):
                        problems.append(f"{cw}: RAY_ADDRESS={address} is not <a RayCluster>-head-svc:6379")
                    else:
                        ports = {p["containerPort"]
                                 for c2 in head["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
                                 for p in c2.get("ports", [])}
                        if int(gcs or 0) not in ports:
                            problems.append(f"{cw}: RAY_ADDRESS port {gcs} is not a port of the head ({sorted(ports)})")
        if doc["kind"] == "Service":
            selected = [d for d in docs if d["kind"] == "Deployment"
                        and doc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
            if not selected:
                problems.append(f"Service/{doc['metadata']['name']}: its selector matches no Deployment")
            for d in selected:
                names = {p.get("name") for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
                numbers = {p["containerPort"] for c in d["spec"]["template"]["spec"]["containers"]
                           for p in c.get("ports", [])}
                for p in doc["spec"]["ports"]:
                    if p.get("targetPort") not in names | numbers:
                        problems.append(f"Service/{doc['metadata']['name']}: targetPort {p.get('targetPort')} "
                                        "is no container port")
        if doc["kind"] == "RayCluster":
            if doc["spec"].get("rayVersion") != ray_pin():
                problems.append(f"RayCluster: rayVersion {doc['spec'].get('rayVersion')} != ray=={ray_pin()} "
                                "(deploy/constraints.txt)")
            groups = [doc["spec"]["headGroupSpec"]] + doc["spec"].get("workerGroupSpecs", [])
            for g in groups:
                flags = [f"--{k}={v}" for k, v in g.get("rayStartParams", {}).items()]
                problems += ray_start_problems(flags, f"RayCluster/{g.get('groupName', 'head')}.rayStartParams")
            kinds = {c["image"].rpartition(":")[2] for g in doc["spec"].get("workerGroupSpecs", [])
                     for c in g["template"]["spec"]["containers"]}
            gpus = [g for g in doc["spec"].get("workerGroupSpecs", []) if any(
                "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                for c in g["template"]["spec"]["containers"])]
            if kinds != {"cpu", "cuda"} or not gpus:
                problems.append("RayCluster: needs a CPU worker group (seqattn:cpu) and a GPU one "
                                "(seqattn:cuda, nvidia.com/gpu)")
    return problems


def compose_problems(data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    services = data.get("services", {})
    for name in ("ray-head", "ray-worker", "selector-api", "sample-data"):
        if name not in services:
            problems.append(f"compose: no service {name}")
    if problems:
        return problems
    image_env = dockerfile_env()
    volumes = set(data.get("volumes", {}))
    port = serve_port_default()
    for name, svc in services.items():
        where = f"compose/{name}"
        problems += image_problems([(where, svc.get("image", ""))])
        target = svc.get("build", {}).get("target")
        if target not in dockerfile_stages():
            problems.append(f"{where}: build target {target!r} is not a stage of deploy/Dockerfile")
        env = svc.get("environment", {})
        env = dict(e.split("=", 1) for e in env) if isinstance(env, list) else env
        problems += env_problems([(where, n) for n in env])
        mounts = {}
        for v in svc.get("volumes", []):
            source, target_path = v.split(":")[:2]
            mounts[target_path] = source
            if source not in volumes:
                problems.append(f"{where}: volume {source!r} is not declared under volumes:")
        home = env.get("SEQATTN_HOME", image_env.get("SEQATTN_HOME"))
        if home != image_env.get("SEQATTN_HOME") or home not in mounts:
            problems.append(f"{where}: SEQATTN_HOME={home} must be the image's ({image_env.get('SEQATTN_HOME')}) "
                            "and a volume")
        for root in env.get("SEQATTN_DATA_ROOTS", image_env.get("SEQATTN_DATA_ROOTS", "")).split(":"):
            if root and root not in mounts:
                problems.append(f"{where}: data root {root} is not a mounted volume")
        command = svc.get("command", [])
        command = shlex.split(command) if isinstance(command, str) else command
        if command[:2] == ["ray", "start"]:
            problems += ray_start_problems(command[2:], where)
        else:
            problems += cli_problems(command, where)
    head = services["ray-head"]["command"]
    head_port = next((a.split("=", 1)[1] for a in head if a.startswith("--port=")), "6379")
    api_env = services["selector-api"].get("environment", {})
    if api_env.get("RAY_ADDRESS") != f"ray-head:{head_port}":
        problems.append(f"compose/selector-api: RAY_ADDRESS={api_env.get('RAY_ADDRESS')} but the head listens on "
                        f"ray-head:{head_port}")
    if not any(a.startswith("--address=ray-head:" + head_port) for a in services["ray-worker"]["command"]):
        problems.append("compose/ray-worker: does not join ray-head:" + head_port)
    worker = services["ray-worker"]
    if "container_name" in worker or worker.get("ports"):
        problems.append("compose/ray-worker: a container_name or published port stops `--scale ray-worker=N`")
    api = services["selector-api"]
    served = int(api["command"][api["command"].index("--port") + 1]) if "--port" in api["command"] else port
    # "HOST:CONTAINER" as written, {"target": CONTAINER, ...} as a compose client renders it
    published = [str(p["target"]) if isinstance(p, dict) else str(p).rsplit(":", 1)[-1].split("/")[0]
                 for p in api.get("ports", [])]
    if str(served) not in published:
        problems.append(f"compose/selector-api: serves on {served} but publishes {published}")
    synth = services["sample-data"]["command"]
    out = synth[synth.index("--out") + 1] if "--out" in synth else None
    sample = json.loads((DEPLOY / "sample-job.json").read_text())
    if sample["dataset"]["path"] != out:
        problems.append(f"deploy/sample-job.json reads {sample['dataset']['path']} but sample-data writes {out}")
    return problems


def dockerfile_problems(text: str) -> list[str]:
    problems = []
    stages = re.split(r"^FROM\s+", text, flags=re.M)
    finals = {}
    for block in stages[1:]:
        m = re.match(r"\S+\s+AS\s+(\S+)", block, flags=re.I)
        if m:
            finals[m.group(1)] = block
    for target in ("cpu", "cuda"):
        block = finals.get(target)
        if block is None:
            problems.append(f"Dockerfile: no stage {target}")
            continue
        users = re.findall(r"^USER\s+(\S+)", block, flags=re.M)
        if not users or users[-1] in ("root", "0"):
            problems.append(f"Dockerfile/{target}: does not end as a non-root USER")
        health = re.search(r"^HEALTHCHECK\b.*?/healthz", block, flags=re.M | re.S)
        if not health or f":{serve_port_default()}/healthz" not in block:
            problems.append(f"Dockerfile/{target}: no HEALTHCHECK on /healthz at port {serve_port_default()}")
        if "/healthz" not in app_routes():
            problems.append("the app has no /healthz route")
        if "seqattn-*.whl" not in block or "--from=wheel" not in block:
            problems.append(f"Dockerfile/{target}: does not install the one project wheel (stage wheel)")
    pins = makefile_pins()
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.M))
    if args.get("TORCH_VERSION") != pins["torch"] or args.get("TORCHREC_VERSION") != pins["torchrec"]:
        problems.append(f"Dockerfile: torch/torchrec {args.get('TORCH_VERSION')}/{args.get('TORCHREC_VERSION')} "
                        f"differ from the Makefile's {pins['torch']}/{pins['torchrec']}")
    if args.get("FBGEMM_VERSION") not in (pins["fbgemm-gpu"], None) or pins["fbgemm-gpu"] != pins["fbgemm-gpu-cpu"]:
        problems.append(f"Dockerfile: FBGEMM {args.get('FBGEMM_VERSION')} differs from the Makefile's "
                        f"{pins['fbgemm-gpu']}")
    cpu, cuda = finals.get("cpu-deps", ""), finals.get("cuda-deps", "")
    if '"fbgemm-gpu-cpu==${FBGEMM_VERSION}"' not in cpu or "fbgemm-gpu==" in cpu.replace("fbgemm-gpu-cpu==", ""):
        problems.append("Dockerfile/cpu-deps: must install fbgemm-gpu-cpu and never the CUDA fbgemm-gpu")
    if "whl/cpu" not in cpu or '"fbgemm-gpu==${FBGEMM_VERSION}"' not in cuda or "whl/${CUDA_WHEELS}" not in cuda:
        problems.append("Dockerfile: the CPU image needs the CPU torch index, the CUDA image the CUDA index "
                        "and fbgemm-gpu")
    for block in (cpu, cuda):
        if '--no-deps "torchrec==${TORCHREC_VERSION}"' not in block:
            problems.append("Dockerfile: torchrec must be installed with --no-deps "
                            "(its metadata pulls the CUDA fbgemm-gpu)")
    for src in re.findall(r"^COPY\s+(?!--from)(?:--\S+\s+)*(.+)\s+\S+$", text, flags=re.M):
        for path in src.split():
            if not (REPO / path).exists():
                problems.append(f"Dockerfile: COPY {path}: no such path in the repository")
    return problems
