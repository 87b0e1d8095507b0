"""What every command shares: the ``videoq`` group, its settings, the one-line errors and
their exit codes, and calls to the API through the SDK."""

from __future__ import annotations

import asyncio
import errno
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console

from videoq.embedded import resolve
from videoq.logs import configure_logging
from videoq.settings import Settings

#: Exit codes (README, "The CLI, for real").
OK, JOB_FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3
#: Ctrl-C: the shell's convention, 128 + SIGINT.
INTERRUPTED = 130

err = Console(stderr=True)
out = Console(width=140)

#: How a request field is given on the command line, for errors that name it.
FLAGS = {
    "product_name": "PRODUCT_NAME", "cta_text": "--cta", "duration_s": "--duration",
    "aspect_ratio": "--aspect", "delay_s": "--delay", "run_at": "--run-at",
    "max_retries": "--max-retries", "webhook_url": "--webhook-url", "options": "--option",
}  # fmt: skip


class Failure(click.ClickException):
    """An error the user can act on: one line on standard error, ``error: <what>; <what to
    do>``, and the exit code."""

    def __init__(self, message: str, exit_code: int = JOB_FAILED) -> None:
        super().__init__(message)
        self.code = exit_code

    def show(self, file: Any = None) -> None:
        say_error(self.message)


def say_error(message: str) -> None:
    # One line, however narrow the terminal, and never read as markup.
    err.print(f"error: {message}", soft_wrap=True, markup=False, highlight=False)


class Cli(click.Group):
    """click's group, with click's own usage errors (an unknown flag, a bad value) on one line
    too, and Ctrl-C exiting 130 instead of printing "Aborted!"."""

    def main(
        self, args: Sequence[str] | None = None, prog_name: str | None = None,
        complete_var: str | None = None, standalone_mode: bool = True, **extra: Any,
    ) -> Any:  # fmt: skip
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            code = USAGE
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "videoq"
            say_error(f"{exc.format_message()} (see `{where} --help`)")
            code = USAGE
        except Failure as exc:
            exc.show()
            code = exc.code
        except click.ClickException as exc:
            exc.show()
            code = exc.exit_code
        except click.Abort:
            say_error("interrupted")
            code = INTERRUPTED
        sys.exit(code if isinstance(code, int) else OK)


def field_message(details: Any, flags: dict[str, str] | None = None) -> str | None:
    """``[{"field", "message"}]`` (the API's and :func:`videoq.schemas.field_errors`' shape) as
    one phrase naming each field, and the flag that sets it."""
    if not isinstance(details, list) or not details:
        return None
    parts = []
    for item in details:
        if not isinstance(item, dict):
            return None
        field = str(item.get("field", "body"))
        flag = (flags or {}).get(field.split(".")[0])
        name = f"{flag} ({field})" if flag and flag != field else field
        parts.append(f"{name}: {item.get('message', 'invalid')}")
    return "; ".join(parts)


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    return settings


def need_urls(settings: Settings) -> Settings:
    settings = resolve(settings)
    if not (settings.database_url and settings.redis_url):
        raise Failure(
            "no database or Redis: set VIDEOQ_DATABASE_URL and VIDEOQ_REDIS_URL, or run "
            "`videoq dev` in this directory",
            USAGE,
        )
    return settings


@click.group(cls=Cli)
@click.pass_context
def main(ctx: click.Context) -> None:
    """videoq: AI video generation jobs, from a brief to a finished MP4.

    Settings come from VIDEOQ_* variables and ./videoq.toml; flags override both. Exit codes:
    0 success, 1 job failed or request refused, 2 usage error (a bad flag, field, key or id),
    3 API unreachable, 130 interrupted."""
    try:
        ctx.obj = Settings()
    except ValidationError as exc:
        raise Failure(f"invalid settings: {settings_problem(exc)}", USAGE) from None
    configure_logging(ctx.obj)


def settings_problem(exc: ValidationError) -> str:
    """The first invalid setting, by its variable's name."""
    first = exc.errors(include_url=False, include_input=False)[0]
    name = str(first["loc"][0]) if first["loc"] else ""
    variable = f"VIDEOQ_{name.upper()}" if name else "a setting"
    return f"{variable}: {first['msg'].removeprefix('Value error, ')}"


def client_args(api_url: str | None, api_key: str | None, settings: Settings) -> tuple[str, str]:
    from videoq.dev import dev_api

    found = dev_api(settings.home)
    url = api_url or (found[0] if found else None)
    key = api_key or (found[1] if found else None)
    if not url or not key:
        raise Failure(
            "no API to talk to: set VIDEOQ_API_URL and VIDEOQ_API_KEY, or run `videoq dev` "
            "in this directory",
            USAGE,
        )
    return url, key


def api_options(fn: Any) -> Any:
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(fn)
    return connection_options(fn)


def connection_options(fn: Any) -> Any:
    fn = click.option("--api-key", envvar="VIDEOQ_API_KEY", help="Default: $VIDEOQ_API_KEY.")(fn)
    return click.option("--api-url", envvar="VIDEOQ_API_URL", help="Default: $VIDEOQ_API_URL.")(fn)


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in the words of the operating system where it has some."""
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.errno is not None and cause.strerror:
            return cause.strerror.lower()
        if "Name or service not known" in str(cause) or "nodename nor servname" in str(cause):
            return "unknown host"
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


def api_failure(
    exc: Any,
    url: str,
    flags: dict[str, str] | None = None,
    lists: str = "`videoq jobs` lists your jobs",
) -> Failure:
    """The one line and exit code of an :class:`videoq.client.ApiError`; ``lists`` says, after
    a 404, what lists what can be named."""
    what = f"{exc.status} {exc.code}"
    if exc.status == 503:
        return Failure(
            f"the API at {url} is unavailable ({what}: {exc.message}); gave up retrying, "
            "try again later (`videoq info` shows the service's state)",
            UNREACHABLE,
        )
    if exc.status == 401:
        return Failure(
            f"the API at {url} refused the key ({what}: {exc.message}); check VIDEOQ_API_KEY; "
            "an admin makes keys with `videoq keys create --tenant NAME` (the first one with "
            "--database)",
            USAGE,
        )
    if exc.status == 403:
        return Failure(
            f"this key may not do that ({what}: {exc.message}); use an admin key "
            "(`videoq keys create --tenant NAME --admin`)",
            USAGE,
        )
    if exc.status == 404:
        return Failure(f"{exc.message} ({what}); {lists}", USAGE)
    if exc.status in (400, 413, 422):
        fields = field_message(exc.details, flags)
        return Failure(f"{fields or exc.message} ({what})", USAGE)
    return Failure(f"{exc.message} ({what})", JOB_FAILED)


def call(
    ctx: click.Context, api_url: str | None, api_key: str | None,
    fn: Callable[[Any], Any], flags: dict[str, str] | None = None,
    lists: str = "`videoq jobs` lists your jobs",
) -> Any:  # fmt: skip
    """Run ``fn(client)`` against the API; every failure becomes a :class:`Failure`: the
    API unreachable, or unavailable (503) for ``api_timeout_s`` while the client retries,
    exits 3; a refused key, an invalid field (named by its flag in ``flags``) or an unknown
    id exits 2 (with ``lists``: what lists the ids); any other refusal exits 1."""
    import httpx

    from videoq.client import ApiError, Client

    settings = settings_of(ctx)
    url, key = client_args(api_url, api_key, settings)

    async def go() -> Any:
        async with Client(url, key, timeout=settings.api_timeout_s) as client:
            return await fn(client)

    try:
        return asyncio.run(go())
    except ApiError as exc:
        raise api_failure(exc, url, flags, lists) from None
    except httpx.UnsupportedProtocol:
        raise Failure(
            f"{url!r} is not an http:// or https:// URL; check VIDEOQ_API_URL or --api-url", USAGE
        ) from None
    except httpx.InvalidURL as exc:
        raise Failure(f"{url!r} is not a URL ({exc}); check VIDEOQ_API_URL", USAGE) from None
    except (httpx.TransportError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
            raise
        raise Failure(
            f"cannot reach the API at {url}: {_reason(exc)}; start it with `videoq dev` or set "
            "VIDEOQ_API_URL",
            UNREACHABLE,
        ) from None
