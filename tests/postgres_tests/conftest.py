"""A real, throwaway PostgreSQL server for the tests marked ``postgres``.

The session fixture `postgres_url` makes a cluster with Debian's ``postgresql``
binaries (``initdb``) in a temp dir, starts it on a free loopback port (no Unix
socket outside that dir, fsync off: it is thrown away), yields its URL and stops it
(``pg_ctl stop -m immediate``) and deletes the dir at the end. PostgreSQL refuses to
run as root, so as root the server runs as the ``postgres`` system user (``runuser``).

Where PostgreSQL or the ``postgres`` extra is missing, the tests are skipped with the
reason (``make test-postgres`` installs both).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _pg_bin(name: str) -> str | None:
    """A PostgreSQL server program: on PATH, else Debian's /usr/lib/postgresql/N/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit()
                        else 0)
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    try:
        import langgraph.checkpoint.postgres  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as e:
        pytest.skip(f"the postgres extra is not installed ({e}); run `make test-postgres`")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl on PATH or in "
                    "/usr/lib/postgresql/*/bin) and `make test-postgres` could not install "
                    "Debian's postgresql package")
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres will not run as root: use its system user
        import pwd

        runuser = shutil.which("runuser")
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' system user to run "
                        "PostgreSQL as (PostgreSQL refuses to run as root)")
        if runuser is None:
            pytest.skip("running as root and `runuser` is missing (PostgreSQL refuses root)")
        as_user = [runuser, "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="gradsum-pg-"))
    data, log = root / "data", root / "server.log"
    if as_user:
        os.chown(root, pg_user.pw_uid, pg_user.pw_gid)
    port = _free_port()
    run = dict(capture_output=True, text=True, timeout=120)
    try:
        proc = subprocess.run([*as_user, initdb, "-D", str(data), "-U", "postgres",
                               "--auth=trust", "-E", "UTF8", "--no-sync"], **run)
        if proc.returncode != 0:
            pytest.fail(f"initdb failed:\n{proc.stdout}\n{proc.stderr}")
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
                   "-c full_page_writes=off -c max_connections=50")
        proc = subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-o",
                               options, "-w", "-t", "60", "start"], **run)
        if proc.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(f"pg_ctl start failed:\n{proc.stdout}\n{proc.stderr}\n{tail}")
        try:
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"],
                           **run)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_db(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the session's server, for one test."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
