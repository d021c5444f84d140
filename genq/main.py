"""`genq`: run the embedded system, submit and follow jobs, download results, administer tenants.

Client commands find the API from --api-url / GENQ_API_URL / the embedded system's state file, and the key
from --api-key / GENQ_API_KEY / the key file `genq up` saves. They need only the base install (requests,
tqdm); the commands that run genq's server code import it when they run, after checking their extras.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from genq import extras
from genq.client import ApiError, GenqClient
from genq.params import CommandError, UsageError
from genq.state import default_data_dir, resolve_connection

# The extras each command that runs genq's server code needs beyond the base (client) install.
SERVER_EXTRAS = {
    "up": ("api", "worker"),
    "demo": ("api", "worker"),
    "admin": ("server",),
    "migrate": ("server",),
}

EXAMPLES = """examples:
  genq up --workers 2
  genq submit train --family gan --dataset fashion-mnist --max-seconds 120 --option latent_dim=64 --wait
  genq submit generate --model MODEL_ID --count 1000 --labels 3
  genq batch --template @template.json --seeds 0-99
  genq wait JOB_ID && genq download JOB_ID -o out/
"""


def _connection_flags(parser: argparse.ArgumentParser, top: bool) -> None:
    # On the top parser and on every subcommand; a subcommand's copy only overrides when given.
    default = None if top else argparse.SUPPRESS
    parser.add_argument("--api-url", default=default, help="API base URL (env GENQ_API_URL)")
    parser.add_argument("--api-key", default=default, help="API key (env GENQ_API_KEY)")
    parser.add_argument(
        "--data-dir", default=default, help="embedded data directory (env GENQ_DATA_DIR; default .genq)"
    )


def _add_submit(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    submit = subparsers.add_parser("submit", help="submit one job", parents=[common])
    kinds = submit.add_subparsers(dest="kind", required=True, metavar="KIND")

    def kind_parser(kind: str, help_text: str) -> argparse.ArgumentParser:
        parser = kinds.add_parser(kind, help=help_text, parents=[common])
        parser.add_argument("--params", help="params as JSON, or @file.json; flags override it")
        parser.add_argument("--priority", type=int, default=0, help="0..9, higher runs first")
        parser.add_argument("--idempotency-key", help="a repeated submit with this key returns the same job")
        parser.add_argument("--wait", action="store_true", help="then wait for it with a progress bar")
        parser.add_argument("--json", action="store_true", help="print the API's JSON")
        return parser

    train = kind_parser("train", "train a CNN, GAN or VAE")
    train.add_argument("--family", choices=["cnn", "gan", "vae"])
    train.add_argument("--dataset", help="fashion-mnist, digits, or an uploaded dataset id")
    train.add_argument("--image-size", type=int, choices=[28, 32, 64])
    train.add_argument("--name", help="model name in the registry")
    train.add_argument("--max-seconds", type=float, help="training time budget")
    train.add_argument("--epochs", type=int)
    train.add_argument("--max-steps", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--option", action="append", metavar="KEY=VALUE", help="a family option (repeat)")

    generate = kind_parser("generate", "generate images from a GAN or VAE")
    generate.add_argument("--model", help="model id")
    generate.add_argument("--count", type=int)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--seeds", help="per-item seeds, e.g. 0-99")
    generate.add_argument("--labels", help="one label for all (3) or one per item (0-9,0-9)")
    generate.add_argument("--truncation", type=float)
    generate.add_argument("--temperature", type=float)
    generate.add_argument("--output-size", type=int, choices=[28, 32, 64])
    generate.add_argument("--shard-size", type=int)

    edit = kind_parser("edit", "edit images with a GAN or VAE")
    edit.add_argument("--model", help="model id")
    edit.add_argument(
        "--operation", choices=["reconstruct", "interpolate", "inpaint", "class_swap", "attribute", "invert"]
    )
    edit.add_argument("--source-dataset", default="fashion-mnist", help="dataset of the source images")
    edit.add_argument("--split", default="test", choices=["train", "test"])
    edit.add_argument("--indices", help="source image indices, e.g. 0-7")
    edit.add_argument("--seeds", help="two seeds to interpolate between, e.g. 3,9")
    edit.add_argument("--target-label", type=int)
    edit.add_argument("--mask", help="inpaint box top,left,bottom,right")
    edit.add_argument("--steps", type=int)
    edit.add_argument("--strength", type=float)
    edit.add_argument("--classifier", help="CNN model id that scores class edits")
    edit.add_argument("--seed", type=int)

    evaluate = kind_parser("evaluate", "score a generative model (FID-style, with a CNN's features)")
    evaluate.add_argument("--model", help="model id")
    evaluate.add_argument("--classifier", help="CNN model id for features")
    evaluate.add_argument("--num-samples", type=int)
    evaluate.add_argument("--seed", type=int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genq",
        description="genq: train and sample image models as queued jobs.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_flags(parser, top=True)
    common = argparse.ArgumentParser(add_help=False)
    _connection_flags(common, top=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run the whole system on this machine (embedded)", parents=[common])
    up.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    up.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    up.add_argument("--host", default="127.0.0.1", help="API bind address (default 127.0.0.1)")
    up.add_argument("--broker-port", type=int, default=6390, help="embedded broker port (default 6390)")
    up.add_argument("--detach", action="store_true", help="run in the background; `genq down` stops it")
    down = sub.add_parser("down", help="stop a `genq up --detach`", parents=[common])
    down.add_argument("--timeout", type=float, default=60.0)

    demo = sub.add_parser(
        "demo", help="train a GAN, generate a batch, download it (about 5 minutes)", parents=[common]
    )
    demo.add_argument("--train-seconds", type=float, default=240.0, help="training budget (default 240)")
    demo.add_argument("--count", type=int, default=100, help="images per class (default 100)")
    demo.add_argument("--workers", type=int, default=1, help="workers when it starts genq (default 1)")
    demo.add_argument("--port", type=int, default=8000, help="API port when it starts genq")
    demo.add_argument("--out", default="genq-out", help="download directory (default ./genq-out)")

    _add_submit(sub, common)

    batch = sub.add_parser(
        "batch", help="submit many jobs: a template with seeds/labels, or items", parents=[common]
    )
    batch.add_argument("--template", help="JSON {kind, params} or @file.json")
    batch.add_argument("--items", help="JSON list of {kind, params} or @file.json")
    batch.add_argument("--seeds", help="one job per seed: 0-99, 1,5,9")
    batch.add_argument("--labels", help="one job per label (with --seeds: paired)")
    batch.add_argument("--priority", type=int, default=0)
    batch.add_argument("--idempotency-key")
    batch.add_argument("--wait", action="store_true")
    batch.add_argument("--json", action="store_true")

    for name, help_text in (("status", "show a job or batch"), ("cancel", "cancel a job or batch")):
        command = sub.add_parser(name, help=help_text, parents=[common])
        command.add_argument("id", help="job or batch id")
        command.add_argument("--json", action="store_true")
    wait = sub.add_parser("wait", help="wait for a job or batch with a progress bar", parents=[common])
    wait.add_argument("id", help="job or batch id")
    wait.add_argument("--timeout", type=float, help="give up after this many seconds (exit 4)")
    wait.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    wait.add_argument("--json", action="store_true", help="print the final JSON")
    download = sub.add_parser("download", help="download a job's (or batch's) artifacts", parents=[common])
    download.add_argument("id", help="job or batch id")
    download.add_argument("-o", "--output", help="directory (default ./genq-out/ID)")

    jobs = sub.add_parser("jobs", help="list jobs, newest first", parents=[common])
    jobs.add_argument(
        "--status", choices=["queued", "running", "succeeded", "failed", "canceling", "canceled"]
    )
    jobs.add_argument("--kind", choices=["train", "generate", "edit", "evaluate"])
    jobs.add_argument("--batch", help="only this batch's jobs")
    jobs.add_argument("--limit", type=int, default=20)
    jobs.add_argument("--cursor", help="the next page (printed after a full page)")
    jobs.add_argument("--json", action="store_true")
    usage = sub.add_parser(
        "usage", help="your queued and running jobs, worker time today, limits", parents=[common]
    )
    usage.add_argument("--json", action="store_true")
    models = sub.add_parser("models", help="list trained models, or show one", parents=[common])
    models.add_argument("id", nargs="?", help="model id")
    models.add_argument("--json", action="store_true")
    datasets = sub.add_parser("datasets", help="upload or list datasets", parents=[common])
    datasets_sub = datasets.add_subparsers(dest="datasets_command", required=True, metavar="ACTION")
    upload = datasets_sub.add_parser(
        "upload", help="upload a .zip of PNG/JPEG images or a .npz", parents=[common]
    )
    upload.add_argument("file")
    upload.add_argument("--name")
    upload.add_argument("--json", action="store_true")
    listing = datasets_sub.add_parser("list", help="list uploaded datasets", parents=[common])
    listing.add_argument("--json", action="store_true")

    admin = sub.add_parser("admin", help="tenants and API keys (talks to the database)", parents=[common])
    admin.add_argument("--database-url", help="default: GENQ_DATABASE_URL, or SQLite in the data dir")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    admin_sub.add_parser("create-tenant", help="add a tenant", parents=[common]).add_argument("name")
    create_key = admin_sub.add_parser(
        "create-key", help="new API key for a tenant (shown once)", parents=[common]
    )
    create_key.add_argument("tenant", help="tenant name or id")
    create_key.add_argument("--admin", action="store_true", help="an admin key")
    create_key.add_argument("--name", help="what the key is for")
    admin_sub.add_parser("list-tenants", help="tenants and their live key prefixes", parents=[common])
    admin_sub.add_parser("revoke-key", help="revoke a key by its prefix", parents=[common]).add_argument(
        "prefix"
    )
    secret = admin_sub.add_parser(
        "webhook-secret", help="make a tenant's webhook signing secret (shown once)", parents=[common]
    )
    secret.add_argument("tenant", help="tenant name or id")
    secret.add_argument("--rotate", action="store_true", help="replace it (the old one signs for a day)")
    limits = admin_sub.add_parser(
        "limits",
        help="show a tenant's share weight, quotas and request limit, and today's use; options change them",
        parents=[common],
    )
    limits.add_argument("tenant", help="tenant name or id")
    limits.add_argument("--weight", help="share of worker time against other tenants (default 1)")
    limits.add_argument(
        "--max-queued", help="queued jobs at most; submits past it get 429 ('none': no limit)"
    )
    limits.add_argument("--max-running", help="jobs running at once ('none': no limit)")
    limits.add_argument("--gpu-seconds-per-day", help="worker seconds per UTC day, then jobs wait ('none')")
    limits.add_argument("--rate-limit", help="requests per API key, e.g. '20/second;600/minute' ('none')")
    gc = admin_sub.add_parser(
        "gc",
        help="delete finished jobs' objects no row references (failed/canceled outputs, checkpoints, "
        "stale attempts' uploads)",
        parents=[common],
    )
    gc.add_argument(
        "--grace-seconds", type=float, help="only jobs finished this long ago (GENQ_GC_GRACE_SECONDS)"
    )
    gc.add_argument("--limit", type=int, help="at most this many jobs")
    gc.add_argument("--all", action="store_true", help="sweep already-swept jobs again")
    gc.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    gc.add_argument("--tenant", help="only this tenant's jobs (name or id)")
    migrate = sub.add_parser(
        "migrate", help="alembic upgrade head on the configured database", parents=[common]
    )
    migrate.add_argument("--database-url", help="default: GENQ_DATABASE_URL, or SQLite in the data dir")
    return parser


def client_for(args: argparse.Namespace) -> GenqClient:
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    connection = resolve_connection(args.api_url, args.api_key, data_dir)
    return GenqClient(connection.api_url, connection.api_key)


def _embedded_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from genq.embedded import EmbeddedConfig

    return EmbeddedConfig(
        data_dir=Path(args.data_dir) if args.data_dir else default_data_dir(),
        port=args.port,
        host=args.host,
        workers=args.workers,
        broker_port=args.broker_port,
    )


def require_extras(command: str) -> None:
    """A server command on an install without its extras stops here, naming what to pip install."""
    needed = SERVER_EXTRAS.get(command, ())
    absent = extras.missing(needed)
    if absent:
        raise CommandError(
            f"`genq {command}` runs genq's server code: pip install 'genq[{','.join(needed)}]' "
            f"(not installed: {', '.join(absent)})"
        )


def run_command(args: argparse.Namespace) -> int:
    out = sys.stdout
    require_extras(args.command)
    if args.command == "up":
        from genq.embedded import EmbeddedSystem

        if args.workers < 1:
            raise UsageError("--workers: at least 1")
        config = _embedded_config(args)
        if args.detach:
            from genq.detached import start_detached
            from genq.state import read_key

            process = start_detached(config)
            out.write(f"genq is up at {config.api_url} (pid {process.pid}); `genq down` stops it\n")
            out.write(f"API key: {read_key(config.data_dir.resolve())}\n")
            return 0
        return EmbeddedSystem(config, out).run()
    if args.command == "down":
        from genq.detached import stop_running

        data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
        stopped = stop_running(data_dir, timeout=args.timeout)
        out.write("genq stopped\n" if stopped else f"genq is not running on {data_dir}\n")
        return 0
    if args.command == "demo":
        from genq.demo import cmd_demo

        args.data_dir = args.data_dir or str(default_data_dir())
        return cmd_demo(args, out)
    if args.command in ("admin", "migrate"):
        from genq import admin

        handler = admin.cmd_migrate if args.command == "migrate" else admin.ADMIN_COMMANDS[args.admin_command]
        return handler(args, out)

    from genq import commands

    handlers = {
        "submit": commands.cmd_submit,
        "batch": commands.cmd_batch,
        "status": commands.cmd_status,
        "wait": commands.cmd_wait,
        "cancel": commands.cmd_cancel,
        "download": commands.cmd_download,
        "jobs": commands.cmd_jobs,
        "usage": commands.cmd_usage,
        "models": commands.cmd_models,
        "datasets": commands.cmd_datasets,
    }
    return handlers[args.command](args, client_for(args), out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run_command(args)
    except UsageError as exc:
        parser.error(str(exc))
    except ApiError as exc:
        sys.stderr.write(f"genq: error: {exc}\n")
        return 1
    except CommandError as exc:
        sys.stderr.write(f"genq: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("genq: interrupted\n")
        return 130
    return 0  # pragma: no cover - parser.error exits


if __name__ == "__main__":
    sys.exit(main())
