"""`shipyard deploy docker|k8s|kserve`: write a container build context or manifests;
`shipyard deploy ray`: serve on Ray Serve replicas (cli/deploy_ray.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from shipyard.cli import output
from shipyard.cli.parsing import Subparsers, add_command, add_group


def register(sub: Subparsers) -> None:
    _, actions = add_group(
        sub,
        "deploy",
        "write a container build context, Kubernetes or KServe manifests; serve on Ray",
    )
    d = add_command(actions, "docker", cmd_deploy_docker)
    _common(d)
    d.add_argument("--source", type=Path, help="Shipyard source checkout (default: this one)")
    d.add_argument(
        "--no-models", action="store_true", help="leave the models out; mount them at /mnt/models"
    )
    d.add_argument("--base-image", help="Python base image of both stages")

    k = add_command(actions, "k8s", cmd_deploy_k8s)
    _common(k)
    _image(k)
    k.add_argument("--name", default="shipyard", help="name of every object (default shipyard)")
    k.add_argument("--replicas", type=int, default=2, help="pods without --hpa (default 2)")
    k.add_argument("--hpa", action="store_true", help="add a HorizontalPodAutoscaler on CPU")
    k.add_argument("--min-replicas", type=int, default=2, help="autoscaler minimum (default 2)")
    k.add_argument("--max-replicas", type=int, default=10, help="autoscaler maximum (default 10)")
    k.add_argument("--cpu-target", type=int, default=70, help="target CPU %% (default 70)")
    k.add_argument("--cpu", default="1", help="CPU request per pod (default 1; no CPU limit)")
    k.add_argument("--auth-secret", metavar="SECRET", help="Secret with tokens.json")
    k.add_argument("--no-auth", action="store_true", help="serve without tokens (insecure)")
    k.add_argument(
        "--kek-secret", metavar="SECRET", help="Secret with key `kek` (encrypted models)"
    )
    k.add_argument("--models-pvc", metavar="CLAIM", help="mount the repository from this PVC")
    k.add_argument("--metrics-require-auth", action="store_true", help="/metrics needs a token too")
    _drain(k)

    s = add_command(actions, "kserve", cmd_deploy_kserve)
    _common(s)
    _image(s)
    s.add_argument("--runtime", default="shipyard", help="ServingRuntime name (default shipyard)")
    s.add_argument(
        "--storage-prefix", help="storageUri prefix: PREFIX/NAME holds NAME/VERSION/ (see docs)"
    )
    _drain(s)

    from shipyard.cli.deploy_ray import register_ray

    register_ray(actions)


_K8S_FILES = (
    "deployment.yaml",
    "service.yaml",
    "poddisruptionbudget.yaml",
    "horizontalpodautoscaler.yaml",
)
_KSERVE_FILES = ("servingruntime.yaml", "inferenceservice-*.yaml")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repository", type=Path, help="model repository folder")
    parser.add_argument("--out", type=Path, help="folder to write (required)")
    parser.add_argument("--namespace", help="namespace of the objects (default: kubectl's)")
    parser.add_argument("--json", action="store_true", help="list the files written as JSON")


def _image(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="image built from `shipyard deploy docker` (required)")


def _drain(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shutdown-delay", type=float, default=5.0, help="preStop and server delay (default 5 s)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=20.0, help="in-flight work limit (default 20 s)"
    )


def _required(args: argparse.Namespace, *names: str) -> None:
    from shipyard.deploy.common import DeployUsageError

    for name in names:
        if not getattr(args, name, None):
            raise DeployUsageError(f"--{name} is required: shipyard deploy ... --{name} VALUE")


def _report(args: argparse.Namespace, written: list[Path], what: str) -> int:
    if args.json:
        output.print_json({"out": str(args.out), "files": [str(p) for p in written]})
        return 0
    output.say(f"[green]wrote[/] {what}: {len(written)} files in {args.out}")
    return 0


def cmd_deploy_docker(args: argparse.Namespace) -> int:
    """write a Dockerfile and build context (non-root, read-only models, ports 8080/9000)

    Builds Shipyard's wheel in a builder stage and installs only it on a slim Python base;
    no token or key is copied in: mount them at run time (docs/deploy.md).

    examples:
      shipyard deploy docker models/ --out build/
      shipyard deploy docker models/ --out build/ --no-models --json
    """
    from shipyard.deploy.docker import DEFAULT_BASE_IMAGE, write_docker_context

    _required(args, "out")
    context = write_docker_context(
        args.repository,
        args.out,
        source=args.source,
        include_models=not args.no_models,
        base_image=args.base_image or DEFAULT_BASE_IMAGE,
    )
    written = [p for p in context.files if p.name in ("Dockerfile", ".dockerignore")]
    if args.json:
        output.print_json(
            {
                "out": str(args.out),
                "files": [str(p) for p in context.files],
                "models": list(context.models),
            }
        )
        return 0
    output.say(f"[green]wrote[/] {', '.join(str(p) for p in written)} and the build context")
    output.note(f"build it: docker build -t shipyard-models {args.out}")
    return 0


def cmd_deploy_k8s(args: argparse.Namespace) -> int:
    """write a Deployment, Service, PodDisruptionBudget (and HPA) for a repository

    Probes are httpGet (/v2/health/ready, /v2/health/live); memory is sized from the
    packages (measured where `compress` measured it).

    examples:
      shipyard deploy k8s models/ --out k8s/ --image registry.example/shipyard:0.2
      shipyard deploy k8s models/ --out k8s/ --image registry.example/shipyard:0.2 --hpa --min-replicas 2 --max-replicas 8
    """
    from shipyard.deploy.common import check_name, dump_yaml, read_repository, write_files
    from shipyard.deploy.k8s import K8sOptions, manifests

    _required(args, "out", "image")
    check_name(args.name, what="--name")
    options = K8sOptions(
        image=args.image,
        name=args.name,
        namespace=args.namespace,
        replicas=args.replicas,
        hpa=args.hpa,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        cpu_target=args.cpu_target,
        cpu=args.cpu,
        shutdown_delay_s=args.shutdown_delay,
        drain_timeout_s=args.drain_timeout,
        auth_secret=args.auth_secret,
        no_auth=args.no_auth,
        kek_secret=args.kek_secret,
        models_pvc=args.models_pvc,
        metrics_require_auth=args.metrics_require_auth,
    )
    plan = read_repository(args.repository)
    docs = manifests(plan, options)
    files = {f"{doc['kind'].lower()}.yaml": dump_yaml([doc]) for doc in docs}
    written = write_files(args.out, files, owned=_K8S_FILES)
    how = "measured by compress" if plan.measured else "estimated from file sizes"
    if not args.json:
        output.note(f"memory request {plan.memory_request_mib} MiB per pod ({how})")
    return _report(args, written, "Kubernetes manifests")


def cmd_deploy_kserve(args: argparse.Namespace) -> int:
    """write a KServe ServingRuntime and one InferenceService per model (RawDeployment)

    examples:
      shipyard deploy kserve models/ --out kserve/ --image registry.example/shipyard:0.2
      shipyard deploy kserve models/ --out kserve/ --image registry.example/shipyard:0.2 --storage-prefix s3://bucket/shipyard
    """
    from shipyard.deploy.common import dump_yaml, read_repository, write_files
    from shipyard.deploy.kserve import DEFAULT_STORAGE_PREFIX, KServeOptions, manifests

    _required(args, "out", "image")
    options = KServeOptions(
        image=args.image,
        runtime=args.runtime,
        namespace=args.namespace,
        storage_prefix=args.storage_prefix or DEFAULT_STORAGE_PREFIX,
        shutdown_delay_s=args.shutdown_delay,
        drain_timeout_s=args.drain_timeout,
    )
    docs = manifests(read_repository(args.repository), options)
    files = {"servingruntime.yaml": dump_yaml(docs[:1])}
    files |= {
        f"inferenceservice-{doc['metadata']['name']}.yaml": dump_yaml([doc]) for doc in docs[1:]
    }
    return _report(args, write_files(args.out, files, owned=_KSERVE_FILES), "KServe manifests")
