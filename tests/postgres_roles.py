"""PostgreSQL roles as a DBA sets them up: an owner that migrates, a role that only uses rows.

The grants are the ones docs/how-to/deploy.md shows (read from the page), so a test that runs
plangate as that role shows the page's grants are enough.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from tests.fleet import Fleet
from tests.servers import fresh_database

DEPLOY_PAGE = Path(__file__).resolve().parent.parent / "docs" / "how-to" / "deploy.md"


@dataclass(frozen=True)
class Roles:
    """URLs of one database as its owner and as the role that only reads and writes rows."""

    owner_url: str
    user_url: str
    owner: str
    user: str

    @property
    def admin_url(self) -> str:
        """The database's URL as the server's superuser (psycopg's form), as a DBA connects."""
        admin = make_url(self.owner_url).set(drivername="postgresql", username="postgres")
        return admin.render_as_string(False)


def documented_grants() -> str:
    """Return the SQL of the page's "PostgreSQL roles" paragraph."""
    page = DEPLOY_PAGE.read_text(encoding="utf-8")
    section = page[page.index("**PostgreSQL roles.**") :]
    found = re.search(r"^```sql\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert found is not None, "deploy.md's PostgreSQL roles paragraph shows no sql block"
    return found.group(1)


@contextmanager
def owned_database(postgres_url: str) -> Iterator[Roles]:
    """Make a fresh database on the server at `postgres_url`, owned by a role of its own, and a
    user role with no grants yet; all three are dropped when the block ends."""
    suffix = uuid.uuid4().hex[:8]
    owner, user = f"plangate_owner_{suffix}", f"plangate_{suffix}"
    both = sql.SQL(", ").join([sql.Identifier(owner), sql.Identifier(user)])
    admin = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(owner)))
        connection.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(user)))
    try:
        with fresh_database(postgres_url) as database:
            url = make_url(database)
            with psycopg.connect(admin, autocommit=True) as connection:
                connection.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                        sql.Identifier(str(url.database)), sql.Identifier(owner)
                    )
                )
            owner_url = url.set(username=owner).render_as_string(False)
            yield Roles(owner_url, url.set(username=user).render_as_string(False), owner, user)
    finally:  # the database is gone, and with it all they owned
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP ROLE {}").format(both))


def grant_as_documented(roles: Roles) -> None:
    """Run the page's grants as the owner, its role names replaced by these roles'."""
    statements = documented_grants()
    statements = re.sub(r"\bplangate_owner\b", roles.owner, statements)
    statements = re.sub(r"\bTO plangate;", f"TO {roles.user};", statements)
    owner = make_url(roles.owner_url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(owner, autocommit=True) as connection:
        connection.execute(statements.encode())


def migrate_as_owner(folder: Path, redis_url: str, roles: Roles) -> None:
    """Run `plangate db upgrade` as the owner, then the page's grants to the user role."""
    owner = Fleet(redis_url, roles.owner_url, folder / "owner")
    assert owner.plangate("db", "upgrade").returncode == 0
    grant_as_documented(roles)
