"""The deployment files, checked by tools and against the project, not by eye.

- docker-compose.yml: the compose-spec JSON schema (bundled in ``check-jsonschema``), and
  ``docker compose config`` (or Debian's ``docker-compose``) where a compose client is installed.
- deploy/k8s: rendered with ``kubectl kustomize`` where kubectl is installed; Kubernetes' own kinds
  against the JSON schemas bundled in ``kubernetes-validate`` (strict: unknown fields fail); the
  KubeRay ``RayCluster`` against ``schemas/raycluster-ray.io-v1.json`` (see its README) with each
  pod template against Kubernetes' PodTemplate schema.
- Against the project: every image is a stage of deploy/Dockerfile, every ``SEQATTN_*`` variable a
  setting the code reads, every command a real ``seqattn`` subcommand or ``ray start`` option set,
  ports are ``seqattn serve``'s, probe paths are routes of the app, volume paths are SEQATTN_HOME
  and SEQATTN_DATA_ROOTS, and the sample job reads the data the sample-data step writes.

The checks are functions that return problems; ``test_the_checks_catch_broken_manifests`` breaks
the files on purpose and expects each check to say so.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from manifest_checks import (
    BIN,
    COMPOSE,
    DEPLOY,
    K8S,
    NON_K8S_FILES,
    REPO,
    compose,
    compose_problems,
    dockerfile_env,
    dockerfile_problems,
    k8s_docs,
    k8s_project_problems,
    k8s_rendered,
    schema_problems,
    serve_port_default,
)

# --- the tests --------------------------------------------------------------------------------------

def test_compose_file_matches_the_compose_spec_schema():
    out = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def _compose_client() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_a_compose_client_accepts_the_file_and_insists_on_an_api_key():
    client = _compose_client()
    if client is None:
        pytest.skip("no compose client here (neither the docker compose plugin nor docker-compose)")
    env = {k: v for k, v in os.environ.items() if k != "SEQATTN_API_KEY"}
    ok = subprocess.run([*client, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                        env={**env, "SEQATTN_API_KEY": "k"}, timeout=120, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    rendered = subprocess.run([*client, "-f", str(COMPOSE), "config"], capture_output=True, text=True,
                              env={**env, "SEQATTN_API_KEY": "k"}, timeout=120, cwd=REPO)
    assert compose_problems(yaml.safe_load(rendered.stdout)) == []
    missing = subprocess.run([*client, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True,
                             env=env, timeout=120, cwd=REPO)
    assert missing.returncode != 0 and "SEQATTN_API_KEY" in missing.stderr + missing.stdout


def test_compose_services_name_what_the_project_has():
    assert compose_problems(compose()) == []


def test_dockerfile_builds_non_root_images_with_the_makefiles_pins():
    assert dockerfile_problems((DEPLOY / "Dockerfile").read_text()) == []


def test_dockerignore_keeps_what_the_image_copies():
    ignored = [s.strip().rstrip("/") for s in (REPO / ".dockerignore").read_text().splitlines()
               if s.strip() and not s.startswith("#")]
    needed = {"pyproject.toml", "README.md", "seqattn_core", "pipelines", "services", "deploy"}
    assert not needed & set(ignored)
    assert {".venv", ".seqattn", ".git", "data"} <= set(ignored)


def test_entrypoint_is_valid_sh_and_passes_real_subcommands():
    script = DEPLOY / "entrypoint.sh"
    assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0
    from services.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    named = set(re.search(r"^\s+serve\|[^)]*\)", script.read_text(), flags=re.M).group(0).strip(" )").split("|"))
    assert named <= commands, named - commands


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"]) | {f for g in kustomization.get("configMapGenerator", [])
                                                for f in g["files"]}
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    assert NON_K8S_FILES <= listed


def test_kubernetes_manifests_match_their_schemas():
    how, docs = k8s_rendered()
    kinds = {d["kind"] for d in docs}
    assert {"RayCluster", "Deployment", "Service", "PersistentVolumeClaim", "CronJob", "ConfigMap"} <= kinds, how
    assert schema_problems(k8s_docs()) == []


def test_kubernetes_manifests_name_what_the_project_has():
    assert k8s_project_problems(k8s_docs()) == []


def test_the_shipped_schedule_and_sample_job_are_valid_and_inside_the_data_roots():
    from pipelines.continual import load_schedule
    from pipelines.spec import load_spec

    schedule = load_schedule(K8S / "schedule.yaml")
    job = load_spec(json.loads((DEPLOY / "sample-job.json").read_text()))
    roots = dockerfile_env()["SEQATTN_DATA_ROOTS"].split(":")
    for path in (schedule.window.path, job.dataset.path):
        assert any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots), path
    assert job.training.num_workers > 1  # the sample job runs on the Ray cluster
    cron = next(d for d in k8s_docs() if d["kind"] == "CronJob")
    assert cron["spec"]["schedule"] == schedule.cadence.cron
    # the README's curl works on Kubernetes too: the sample-data Job writes what the sample job reads
    synth = next(d for d in k8s_docs() if d["kind"] == "Job")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert synth[:1] == ["synth"] and synth[synth.index("--out") + 1] == job.dataset.path


def test_the_readme_documents_the_curl_that_submits_the_sample_job():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Run on a cluster"):]
    assert "--data @deploy/sample-job.json" in section and f"localhost:{serve_port_default()}/v1/jobs" in section
    assert "kubectl apply -k deploy/k8s" in section and "RAY_ADDRESS" in section


# --- the checks can fail ---------------------------------------------------------------------------

def _ray(docs):
    return next(d for d in docs if d["kind"] == "RayCluster")


def _api(docs):
    return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]


def _set_env(container, name, value):
    container["env"] = [e for e in container["env"] if e["name"] != name] + [{"name": name, "value": value}]


def _break_probe(docs):
    _api(docs)["readinessProbe"]["httpGet"]["path"] = "/health"


def _break_port(docs):
    _api(docs)["args"] = ["serve", "--host", "0.0.0.0", "--port", "9000"]


def _break_subcommand(docs):
    _api(docs)["args"] = ["server", "--port", "8000"]


def _break_env(docs):
    _set_env(_api(docs), "SEQATTN_HOMEDIR", "/var/lib/seqattn")


def _break_home(docs):
    _set_env(_api(docs), "SEQATTN_HOME", "/srv/seqattn")


def _break_image(docs):
    _api(docs)["image"] = "seqattn:gpu"


def _break_ray_address(docs):
    _set_env(_api(docs), "RAY_ADDRESS", "ray-head:6379")


def _break_ray_param(docs):
    _ray(docs)["spec"]["workerGroupSpecs"][0]["rayStartParams"]["num-cpu"] = "8"


def _break_ray_version(docs):
    _ray(docs)["spec"]["rayVersion"] = "2.9.0"


def _break_limits(docs):
    del _api(docs)["resources"]["limits"]


def _break_root(docs):
    _ray(docs)["spec"]["workerGroupSpecs"][1]["template"]["spec"]["securityContext"]["runAsUser"] = 0


def _break_claim(docs):
    next(d for d in docs if d["kind"] == "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"][0][
        "persistentVolumeClaim"]["claimName"] = "seqattn-homes"


PROJECT_BREAKS = [_break_probe, _break_port, _break_subcommand, _break_env, _break_home, _break_image,
                  _break_ray_address, _break_ray_param, _break_ray_version, _break_limits, _break_root, _break_claim]


def _schema_typo_in_ray_spec(docs):
    _ray(docs)["spec"]["workerGroupSpecs"][0]["maxReplica"] = 4


def _schema_int_ray_param(docs):
    _ray(docs)["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0


def _schema_typo_in_ray_pod(docs):
    _ray(docs)["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resource"] = {}


def _schema_typo_in_deployment(docs):
    _api(docs)["readinessProbe"]["httpget"] = _api(docs)["readinessProbe"].pop("httpGet")


def _schema_bad_cronjob(docs):
    next(d for d in docs if d["kind"] == "CronJob")["spec"]["concurrencyPolicy"] = 3


SCHEMA_BREAKS = [_schema_typo_in_ray_spec, _schema_int_ray_param, _schema_typo_in_ray_pod, _schema_typo_in_deployment,
                 _schema_bad_cronjob]


@pytest.mark.parametrize("breakage", PROJECT_BREAKS, ids=lambda f: f.__name__)
def test_the_project_checks_catch_broken_manifests(breakage):
    docs = k8s_docs()
    breakage(docs)
    assert k8s_project_problems(docs), f"{breakage.__name__} went unnoticed"


@pytest.mark.parametrize("breakage", SCHEMA_BREAKS, ids=lambda f: f.__name__)
def test_the_schema_checks_catch_broken_manifests(breakage):
    docs = k8s_docs()
    breakage(docs)
    assert schema_problems(docs), f"{breakage.__name__} went unnoticed"


@pytest.mark.parametrize("edit", [
    lambda c: c["services"]["selector-api"]["environment"].update(RAY_ADDRESS="ray-head:10001"),
    lambda c: c["services"]["selector-api"].update(command=["serve", "--port", "9000"]),
    lambda c: c["services"]["ray-worker"].update(command=["ray", "start", "--block", "--address=ray-head:6379",
                                                          "--cpus=4"]),
    lambda c: c["services"]["sample-data"].update(command=["synth", "--out", "/data/elsewhere"]),
    lambda c: c["services"]["ray-head"].update(image="seqattn:latest"),
    lambda c: c["services"]["selector-api"]["environment"].update(SEQATTN_DATAROOTS="/data"),
    lambda c: c["services"]["ray-worker"].update(volumes=["seqattn-data:/data"]),
    lambda c: c["services"]["ray-worker"].update(ports=["6380:6380"]),
], ids=["ray-address", "port", "ray-option", "sample-path", "image", "env", "home-volume", "scale"])
def test_the_compose_checks_catch_broken_files(edit):
    data = compose()
    edit(data)
    assert compose_problems(data)


def test_the_dockerfile_checks_catch_a_root_image_and_the_cuda_fbgemm_on_cpu():
    text = (DEPLOY / "Dockerfile").read_text()
    assert dockerfile_problems(text.replace("USER seqattn", "USER root"))
    assert dockerfile_problems(
        text.replace('"fbgemm-gpu-cpu==${FBGEMM_VERSION}"', '"fbgemm-gpu==${FBGEMM_VERSION}"', 1))
    assert dockerfile_problems(text.replace("/healthz", "/health"))


def test_the_compose_schema_check_catches_a_misspelt_key(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("depends_on:", "depend_on:", 1))
    out = subprocess.run([str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0


def test_the_wheel_stage_builds_a_wheel_that_holds_the_whole_app(tmp_path):
    """What the Dockerfile's `wheel` stage does, here: copy what its COPY lines name, build the wheel
    the images install (not the source tree), and look inside."""
    import importlib.util
    import zipfile

    text = (DEPLOY / "Dockerfile").read_text()
    stage = re.search(r"^FROM\s+\S+\s+AS\s+wheel\b(.*?)^FROM\s", text, flags=re.M | re.S).group(1)
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    src.mkdir()
    for line in re.findall(r"^COPY\s+(.+)$", stage, flags=re.M):
        *sources, dest = line.split()
        for name in sources:
            target = src / dest / Path(name).name if dest.endswith("/") or len(sources) > 1 else src / dest
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(REPO / name, target)
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "--wheel-dir",
                          str(wheels), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = wheels.glob("seqattn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("services/cli.py", "services/selector_api/app.py", "pipelines/ray_job.py", "seqattn_core/lem.py",
                   "services/selector_api/dashboard/templates/base.html"):
        assert module in names, module
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "seqattn = services.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
