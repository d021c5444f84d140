"""The client commands: submit, batch, status, wait, cancel, download, jobs, models, datasets.

Each takes the parsed arguments and a `GenqClient`, prints for a person (or JSON with --json) and returns
the process exit code: 0 done, 1 failed or an error, 3 canceled, 4 gave up waiting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TextIO

from genq.client import ApiError, GenqClient, WaitTimeout
from genq.params import (
    UsageError,
    base_params,
    load_json_arg,
    merge_params,
    parse_int_list,
    parse_options,
)
from genq.progress import ProgressBar, batch_line, job_line

EXIT_OK, EXIT_FAILED, EXIT_CANCELED, EXIT_TIMEOUT = 0, 1, 3, 4


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a metrics dict, rounded (matrices and per-class tables are left to --json)."""
    return {
        k: round(v, 4) if isinstance(v, float) else v
        for k, v in metrics.items()
        if isinstance(v, int | float | str) and not isinstance(v, bool)
    }


def print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


# -- submit ----------------------------------------------------------------------------------------------


def _train_flags(args: argparse.Namespace) -> dict[str, Any]:
    options = parse_options(args.option)
    for flag in ("epochs", "max_steps", "seed", "batch_size", "lr"):
        if getattr(args, flag, None) is not None:
            options[flag] = getattr(args, flag)
    return {
        "family": args.family,
        "dataset": args.dataset,
        "image_size": args.image_size,
        "name": args.name,
        "max_seconds": args.max_seconds,
        "options": options or None,
    }


def _labels(text: str | None) -> int | list[int] | None:
    if text is None:
        return None
    values = parse_int_list(text, "--labels")
    # `--labels 3`: one label for every image; `--labels 0-9` or `3,4`: one per image.
    return values[0] if text.strip().isdigit() else values


def _generate_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model_id": args.model,
        "count": args.count,
        "seed": args.seed,
        "seeds": parse_int_list(args.seeds, "--seeds") if args.seeds else None,
        "labels": _labels(args.labels),
        "truncation": args.truncation,
        "temperature": args.temperature,
        "output_size": args.output_size,
        "shard_size": args.shard_size,
    }


def _edit_flags(args: argparse.Namespace) -> dict[str, Any]:
    source = None
    if args.indices:
        source = {
            "dataset": args.source_dataset,
            "split": args.split,
            "indices": parse_int_list(args.indices, "--indices"),
        }
    mask = None
    if args.mask:
        try:
            top, left, bottom, right = (int(v) for v in args.mask.split(","))
        except ValueError as exc:
            raise UsageError("--mask: expected top,left,bottom,right") from exc
        mask = {"top": top, "left": left, "bottom": bottom, "right": right}
    return {
        "model_id": args.model,
        "operation": args.operation,
        "source": source,
        "seeds": parse_int_list(args.seeds, "--seeds") if args.seeds else None,
        "target_label": args.target_label,
        "mask": mask,
        "steps": args.steps,
        "strength": args.strength,
        "classifier_id": args.classifier,
        "seed": args.seed,
    }


def _evaluate_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model_id": args.model,
        "classifier_id": args.classifier,
        "num_samples": args.num_samples,
        "seed": args.seed,
    }


FLAG_BUILDERS = {
    "train": _train_flags,
    "generate": _generate_flags,
    "edit": _edit_flags,
    "evaluate": _evaluate_flags,
}


def submission_params(args: argparse.Namespace) -> dict[str, Any]:
    """The job's params: --params first, the explicit flags over it."""
    return merge_params(base_params(args.params), FLAG_BUILDERS[args.kind](args))


def submitted(
    client: GenqClient,
    what: Literal["job", "batch"],
    view: dict[str, Any],
    args: argparse.Namespace,
    out: TextIO,
) -> int:
    """Print what was submitted (its id, or with --json its view), then with --wait follow it to its end."""
    if args.json and not args.wait:
        print_json(view, out)
    else:
        out.write(f"{view['id']}\n")
        out.flush()
    if args.wait:
        return wait_for(client, what, str(view["id"]), out, json_output=args.json)
    return EXIT_OK


def cmd_submit(args: argparse.Namespace, client: GenqClient, out: TextIO) -> int:
    params = submission_params(args)
    job = client.submit_job(args.kind, params, priority=args.priority, idempotency_key=args.idempotency_key)
    return submitted(client, "job", job, args, out)


def batch_body(args: argparse.Namespace) -> dict[str, Any]:
    if (args.template is None) == (args.items is None):
        raise UsageError("batch: give exactly one of --template or --items")
    body: dict[str, Any] = {"priority": args.priority}
    if args.items is not None:
        items = load_json_arg(args.items, "--items")
        if not isinstance(items, list):
            raise UsageError("--items: expected a JSON list of {kind, params} objects")
        body["items"] = items
        return body
    template = load_json_arg(args.template, "--template")
    if not isinstance(template, dict):
        raise UsageError("--template: expected a JSON object {kind, params}")
    if args.seeds is None and args.labels is None:
        raise UsageError("batch: a template needs --seeds and/or --labels")
    body["template"] = template
    if args.seeds is not None:
        body["seeds"] = parse_int_list(args.seeds, "--seeds")
    if args.labels is not None:
        body["labels"] = parse_int_list(args.labels, "--labels")
    return body


def cmd_batch(args: argparse.Namespace, client: GenqClient, out: TextIO) -> int:
    batch = client.submit_batch(batch_body(args), idempotency_key=args.idempotency_key)
    return submitted(client, "batch", batch, args, out)


# -- status, wait, cancel ------------------------------------------------------------------------------


def describe_job(job: dict[str, Any]) -> str:
    lines = [f"job {job.get('id')}  {job.get('kind', '')}  {job.get('status')}", f"  {job_line(job)}"]
    for field in ("attempts", "created_at", "started_at", "finished_at", "batch_id"):
        if job.get(field) is not None:
            lines.append(f"  {field}: {job[field]}")
    error = job.get("error")
    if error:
        lines.append(f"  error: {error.get('code')}: {error.get('message')}")
    if job.get("model_id"):
        lines.append(f"  model_id: {job['model_id']}")
    if job.get("metrics"):
        lines.append(f"  metrics: {json.dumps(scalar_metrics(job['metrics']), sort_keys=True)}")
    for artifact in job.get("artifacts") or []:
        lines.append(f"  artifact {artifact.get('name')}  {artifact.get('size', '?')} bytes")
    return "\n".join(lines)


def describe_batch(batch: dict[str, Any]) -> str:
    return f"batch {batch.get('id')}  {batch.get('total')} jobs\n  {batch_line(batch)}"


def cmd_status(args: argparse.Namespace, client: GenqClient, out: TextIO) -> int:
    what, body = client.get_job_or_batch(args.id)
    if args.json:
        print_json(body, out)
    else:
        out.write((describe_job(body) if what == "job" else describe_batch(body)) + "\n")
    return EXIT_OK


def job_outcome(job: dict[str, Any]) -> tuple[int, str]:
    """(exit code, what to tell) for a job that has ended."""
    status = str(job["status"])
    error = job.get("error") or {}
    detail = f": {error.get('code')}: {error.get('message')}" if error else ""
    code = {"succeeded": EXIT_OK, "canceled": EXIT_CANCELED}.get(status, EXIT_FAILED)
    return code, "" if code == EXIT_OK else f" {status}{detail}"


def batch_outcome(batch: dict[str, Any]) -> tuple[int, str]:
    """(exit code, what to tell) for a batch whose jobs have all ended: 1 if any failed, else 3 if any
    was canceled."""
    counts = batch.get("counts") or {}
    for status, code in (("failed", EXIT_FAILED), ("canceled", EXIT_CANCELED)):
        if counts.get(status):
            return code, f": {counts[status]} of {batch.get('total')} jobs {status}"
    return EXIT_OK, ""


def wait_for(
    client: GenqClient,
    what: Literal["job", "batch"],
    item_id: str,
    out: TextIO,
    timeout: float | None = None,
    interval: float = 1.0,
    json_output: bool = False,
    bar: ProgressBar | None = None,
) -> int:
    """Follow a job or batch to its end with a progress bar; the exit code says how it ended (4: still
    going after `timeout` seconds)."""
    bar = bar or ProgressBar()
    show = bar.show_job if what == "job" else bar.show_batch
    try:
        view = client.wait(what, item_id, timeout, show, interval)
    except WaitTimeout as exc:
        sys.stderr.write(f"genq: {exc.message}\n")
        return EXIT_TIMEOUT
    finally:
        bar.close()
    if json_output:
        print_json(view, out)
    code, told = (job_outcome if what == "job" else batch_outcome)(view)
    if told:
        sys.stderr.write(f"genq: {what} {item_id}{told}\n")
    return code


def cmd_wait(args: argparse.Namespace, client: GenqClient, out: TextIO) -> int:
    what, _ = client.get_job_or_batch(args.id)
    return wait_for(
        client, what, args.id, out, timeout=args.timeout, interval=args.interval, json_output=args.json
    )


def cmd_cancel(args: argparse.Namespace, client: GenqClient, out: TextIO) -> int:
    what, _ = client.get_job_or_batch(args.id)
    body = client.cancel_job(args.id) if what == "job" else client.cancel_batch(args.id)
    if args.json:
        print_json(body, out)
    else:
        out.write(f"{what} {args.id}: {body.get('status', 'cancel requested')}\n")
    return EXIT_OK


# -- download ----------------------------------------------------------------------------------------


def artifact_path(directory: Path, name: str) -> Path:
    """Where an artifact named like `shards/00000.tar` lands under `directory` (never outside it)."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ApiError(0, "bad_artifact_name", f"refusing to write artifact named {name!r}")
    return directory.joinpath(*parts)


def download_job(client: GenqClient, job: dict[str, Any], directory: Path) -> list[Path]:
    """Every artifact of a job, verified against its sha256."""
    paths = []
    for artifact in job.get("artifacts") or []:
        url = artifact.get("url") or artifact.get("download_url")
        if not url:
            raise ApiError(0, "no_url", f"artifact {artifact.get('name')} has no download URL")
        target = artifact_path(directory, str(artifact["name"]))
        paths.append(client.download(url, target, artifact.get("sha256")))
    return paths


def download_any(client: GenqClient, item_id: str, directory: Path) -> list[Path]:
    """A job's artifacts into `directory`; a batch's into `directory/<job id>/`."""
    what, body = client.get_job_or_batch(item_id)
    if what == "job":
        return download_job(client, body, directory)
    paths: list[Path] = []
    for listed in client.iter_jobs(batch=item_id, status="succeeded"):
        job = client.get_job(str(listed["id"]))  # URLs are minted when a job is read
        paths.extend(download_job(client, job, directory / str(job["id"])))
    return paths


def cmd_download(args: argparse.Namespace, client: GenqClient, out: TextIO) -> int:
    directory = Path(args.output) if args.output else Path("genq-out") / args.id
    paths = download_any(client, args.id, directory)
    for path in paths:
        out.write(f"{path}\n")
    if not paths:
        sys.stderr.write(f"genq: {args.id} has no artifacts (yet)\n")
    return EXIT_OK


# -- listings and datasets -------------------------------------------------------------------------------


def cmd_jobs(args: argparse.Namespace, client: GenqClient, out: TextIO) -> int:
    page = client.list_jobs(
        status=args.status, kind=args.kind, batch=args.batch, limit=args.limit, cursor=args.cursor
    )
    if args.json:
        print_json(page, out)
        return EXIT_OK
    for job in page.get("jobs", []):
        out.write(
            f"{job.get('id')}  {job.get('kind', ''):<8}  {job_line(job)}  {job.get('created_at', '')}\n"
        )
    if page.get("next_cursor"):
        out.write(f"(more: --cursor {page['next_cursor']})\n")
    return EXIT_OK


def cmd_usage(args: argparse.Namespace, client: GenqClient, out: TextIO) -> int:
    usage = client.usage()
    if args.json:
        print_json(usage, out)
        return EXIT_OK
    limits = usage.get("limits", {})
    quota = limits.get("gpu_seconds_per_day")
    out.write(f"queued {usage.get('queued')}  running {usage.get('running')}")
    out.write(
        f"  worker seconds today {usage.get('gpu_seconds_today')}" + (f" of {quota:g}" if quota else "")
    )
    out.write("\n")
    shown = {k: v for k, v in limits.items() if v is not None}
    out.write("limits: " + ", ".join(f"{k} {v}" for k, v in shown.items()) + "\n")
    if usage.get("waiting_for"):
        out.write(f"your queued jobs wait for: {usage['waiting_for']}\n")
    return EXIT_OK


def cmd_models(args: argparse.Namespace, client: GenqClient, out: TextIO) -> int:
    if args.id:
        model = client.get_model(args.id)
        print_json(model, out)
        return EXIT_OK
    page = client.list_models()
    if args.json:
        print_json(page, out)
        return EXIT_OK
    for model in page.get("models", []):
        metrics = json.dumps(scalar_metrics(model.get("metrics") or {}), sort_keys=True)
        out.write(
            f"{model.get('id')}  {model.get('family', ''):<4} {model.get('name', '')} "
            f"v{model.get('version', '?')}  {model.get('dataset', '')}  {metrics}\n"
        )
    return EXIT_OK


def cmd_datasets(args: argparse.Namespace, client: GenqClient, out: TextIO) -> int:
    if args.datasets_command == "upload":
        path = Path(args.file)
        if not path.is_file():
            raise UsageError(f"datasets upload: no file {path}")
        dataset = client.upload_dataset(path, name=args.name)
        if args.json:
            print_json(dataset, out)
        else:
            out.write(f"{dataset.get('id')}\n")
        return EXIT_OK
    page = client.list_datasets()
    if args.json:
        print_json(page, out)
        return EXIT_OK
    for dataset in page.get("datasets", []):
        out.write(
            f"{dataset.get('id')}  {dataset.get('name', '')}  {dataset.get('num_images', '?')} images  "
            f"{dataset.get('image_size', '?')}px  {dataset.get('format', '')}\n"
        )
    return EXIT_OK
