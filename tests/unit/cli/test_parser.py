"""Command-line parsing: flags to job params, ranges, batches, where the API URL and key come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genq.admin import key_prefix
from genq.commands import batch_body, submission_params
from genq.main import build_parser, main
from genq.params import UsageError, merge_params, parse_int_list, parse_options
from genq.state import KEY_FILE, resolve_connection, write_private, write_state


def parse(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(list(argv))


def test_submit_train_flags_become_params() -> None:
    args = parse(
        "submit", "train", "--family", "gan", "--dataset", "fashion-mnist", "--max-seconds", "120",
        "--option", "latent_dim=64", "--option", "conditional=true", "--max-steps", "500",
    )  # fmt: skip
    assert submission_params(args) == {
        "family": "gan",
        "dataset": "fashion-mnist",
        "max_seconds": 120.0,
        "options": {"latent_dim": 64, "conditional": True, "max_steps": 500},
    }


def test_params_file_is_the_base_and_flags_override_it(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(
        json.dumps({"family": "vae", "dataset": "digits", "options": {"latent_dim": 8, "width": 16}})
    )
    args = parse("submit", "train", "--params", f"@{path}", "--family", "gan", "--option", "width=32")
    assert submission_params(args) == {
        "family": "gan",
        "dataset": "digits",
        "options": {"latent_dim": 8, "width": 32},
    }


def test_generate_labels_one_for_all_or_one_per_item() -> None:
    model = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    one = submission_params(parse("submit", "generate", "--model", model, "--count", "4", "--labels", "3"))
    assert one == {"model_id": model, "count": 4, "labels": 3}
    each = submission_params(parse("submit", "generate", "--model", model, "--count", "4", "--labels", "0-3"))
    assert each["labels"] == [0, 1, 2, 3]


def test_edit_flags() -> None:
    args = parse(
        "submit", "edit", "--model", "m", "--operation", "inpaint", "--indices", "0-1", "--mask", "4,4,12,12"
    )
    params = submission_params(args)
    assert params["source"] == {"dataset": "fashion-mnist", "split": "test", "indices": [0, 1]}
    assert params["mask"] == {"top": 4, "left": 4, "bottom": 12, "right": 12}
    with pytest.raises(UsageError, match="--mask"):
        submission_params(parse("submit", "edit", "--model", "m", "--mask", "1,2"))


def test_int_lists() -> None:
    assert parse_int_list("0-3,7,9-10", "--seeds") == [0, 1, 2, 3, 7, 9, 10]
    for bad in ("", "a", "5-2", "1-x"):
        with pytest.raises(UsageError, match="--seeds"):
            parse_int_list(bad, "--seeds")
    with pytest.raises(UsageError, match="more than"):
        parse_int_list("0-20000", "--seeds", limit=10_000)


def test_options_and_merge() -> None:
    assert parse_options(["a=1", "b=x", "c=[1, 2]", "d=0.5"]) == {"a": 1, "b": "x", "c": [1, 2], "d": 0.5}
    with pytest.raises(UsageError, match="key=value"):
        parse_options(["nope"])
    assert merge_params({"a": 1, "o": {"x": 1}}, {"a": None, "o": {"y": 2}}) == {
        "a": 1,
        "o": {"x": 1, "y": 2},
    }


def test_batch_body(tmp_path: Path) -> None:
    template = tmp_path / "t.json"
    template.write_text('{"kind": "generate", "params": {"model_id": "m", "count": 100}}')
    body = batch_body(parse("batch", "--template", f"@{template}", "--seeds", "0-9", "--labels", "0-9"))
    assert body["seeds"] == list(range(10)) and body["labels"] == list(range(10))
    assert body["template"]["params"]["count"] == 100
    with pytest.raises(UsageError, match="--seeds"):
        batch_body(parse("batch", "--template", f"@{template}"))
    with pytest.raises(UsageError, match="exactly one"):
        batch_body(parse("batch"))
    with pytest.raises(UsageError, match="cannot read"):
        batch_body(parse("batch", "--template", "@/nonexistent.json", "--seeds", "1"))


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["submit", "train", "--family", "gan", "--option", "oops", "--api-key", "k"])
    assert info.value.code == 2
    assert "--option: expected key=value" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["submit", "train", "--family", "rnn"])


def test_connection_flags_before_or_after_the_command() -> None:
    assert parse("--api-url", "http://a", "status", "x").api_url == "http://a"
    assert parse("status", "x", "--api-url", "http://b").api_url == "http://b"
    assert parse("status", "x").api_url is None


def test_connection_comes_from_flag_env_then_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENQ_API_URL", raising=False)
    monkeypatch.delenv("GENQ_API_KEY", raising=False)
    assert resolve_connection(data_dir=tmp_path).api_url == "http://127.0.0.1:8000"
    write_state(tmp_path, {"api_url": "http://127.0.0.1:9123/"})
    write_private(tmp_path / KEY_FILE, "gq_saved_key\n")
    assert resolve_connection(data_dir=tmp_path) == resolve_connection(None, None, tmp_path)
    saved = resolve_connection(data_dir=tmp_path)
    assert (saved.api_url, saved.api_key) == ("http://127.0.0.1:9123", "gq_saved_key")
    assert (tmp_path / KEY_FILE).stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("GENQ_API_URL", "http://env:1")
    monkeypatch.setenv("GENQ_API_KEY", "gq_env")
    assert resolve_connection(data_dir=tmp_path).api_key == "gq_env"
    flagged = resolve_connection("http://flag:2", "gq_flag", tmp_path)
    assert (flagged.api_url, flagged.api_key) == ("http://flag:2", "gq_flag")


def test_key_prefix() -> None:
    assert key_prefix("gq_1a2b3c4d_secretpart") == "1a2b3c4d"
    assert key_prefix("gq_1a2b3c4d") == "1a2b3c4d"
    assert key_prefix("1a2b3c4d") == "1a2b3c4d"
