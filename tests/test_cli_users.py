"""`imagepipe users add|list` and `upload --owner` against moto in-process, with AWS credentials."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from imagepipe.cli.main import main
from imagepipe.core.ids import owner_of_key
from imagepipe.core.users import list_users


def _fields(stdout: str) -> dict[str, str]:
    return dict(line.split(None, 1) for line in stdout.strip().splitlines())


def test_add_prints_the_password_once_and_it_signs_in(cli_env, resources, clients,
                                                       capsys) -> None:
    # When an operator adds a user
    assert main(["users", "add", "carol"]) == 0
    out, err = capsys.readouterr()

    # Then stdout names them and gives a password the pool accepts, once
    added = _fields(out)
    assert added["username"] == "carol" and added["admin"] == "no"
    assert re.fullmatch(r"[0-9a-f-]{36}", added["sub"])
    password = added["password"]
    assert out.count(password) == 1 and password not in err
    assert "only this once" in err
    tokens = clients.cognito.initiate_auth(
        ClientId=resources.user_pool_client_id, AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": "carol", "PASSWORD": password})["AuthenticationResult"]
    assert tokens["AccessToken"]


def test_admin_is_in_the_admins_group_and_list_shows_everyone(cli_env, resources, clients,
                                                               capsys) -> None:
    assert main(["users", "add", "dave", "--admin"]) == 0
    assert _fields(capsys.readouterr().out)["admin"] == "yes"
    assert main(["users", "add", "erin"]) == 0
    capsys.readouterr()

    assert main(["users", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()

    assert lines[0].split() == ["NAME", "SUB", "ADMIN", "ENABLED"]
    rows = {cells[0]: cells[1:] for cells in (line.split() for line in lines[1:])}
    pool = {u.username: u for u in list_users(clients.cognito, resources.user_pool_id)}
    assert rows == {"dave": [pool["dave"].sub, "yes", "yes"],
                    "erin": [pool["erin"].sub, "no", "yes"]}


def test_adding_again_sets_a_new_password(cli_env, resources, capsys) -> None:
    assert main(["users", "add", "frank"]) == 0
    first = _fields(capsys.readouterr().out)
    assert main(["users", "add", "frank"]) == 0
    second = _fields(capsys.readouterr().out)
    assert first["sub"] == second["sub"]
    assert first["password"] != second["password"]


def test_the_pool_is_found_by_id_too(cli_env, resources, monkeypatch, capsys) -> None:
    monkeypatch.setenv("IMAGEPIPE_USER_POOL", "some-other-name")
    monkeypatch.setenv("IMAGEPIPE_USER_POOL_ID", resources.user_pool_id)
    monkeypatch.setenv("IMAGEPIPE_USER_POOL_CLIENT_ID", resources.user_pool_client_id)
    assert main(["users", "add", "gina"]) == 0
    assert _fields(capsys.readouterr().out)["username"] == "gina"


def test_no_pool_is_one_line_and_exit_1(cli_env, clients, monkeypatch, capsys) -> None:
    # moto is on but nothing is provisioned: no pool of that name
    with pytest.raises(SystemExit) as exited:
        main(["users", "list"])
    assert exited.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "IMAGEPIPE_USER_POOL_ID" in err[0]


def test_upload_owner_puts_files_under_the_users_sub(cli_env, settings, resources, clients,
                                                      users, photos, tmp_path: Path,
                                                      capsys) -> None:
    folder = tmp_path / "alice's"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(photos.cat_jpeg)

    assert main(["upload", str(folder), "--owner", "alice", "--prefix", "trip"]) == 0

    listed = clients.s3.list_objects_v2(Bucket=settings.bucket)["Contents"]
    keys = [o["Key"] for o in listed]
    assert keys == [f"users/{users.subs['alice']}/trip/cat.jpg"]
    assert owner_of_key(keys[0]) == users.subs["alice"]
    assert keys[0] in capsys.readouterr().out


def test_upload_owner_who_does_not_exist_uploads_nothing(cli_env, settings, resources, clients,
                                                          photos, tmp_path: Path,
                                                          capsys) -> None:
    photo = tmp_path / "cat.jpg"
    photo.write_bytes(photos.cat_jpeg)

    with pytest.raises(SystemExit) as exited:
        main(["upload", str(photo), "--owner", "nobody"])

    assert exited.value.code == 1
    assert "no user 'nobody'" in capsys.readouterr().err
    assert "Contents" not in clients.s3.list_objects_v2(Bucket=settings.bucket)


def test_provision_names_the_user_pool_it_made(cli_env, aws, clients, capsys) -> None:
    assert main(["provision"]) == 0
    printed = dict(line.rsplit(" ", 1) for line in capsys.readouterr().out.strip().splitlines())

    pools = clients.cognito.list_user_pools(MaxResults=10)["UserPools"]
    assert [p["Id"] for p in pools] == [printed["user pool"]]
    client = clients.cognito.describe_user_pool_client(
        UserPoolId=printed["user pool"], ClientId=printed["app client"])["UserPoolClient"]
    assert client["ClientName"] == "imagepipe-web" and "ClientSecret" not in client
