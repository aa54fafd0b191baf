"""Archive connection settings, from a config mapping and/or SAM2RAD_* environment variables.

Hosts, ports, AE titles, URLs and credentials live here and nowhere in code. Every field has one
environment variable; error messages name that variable, so the person fixing a connection knows
which knob to turn. Precedence: defaults < config mapping (e.g. a YAML file's `pacs:` section) < env.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.pacs.base import PacsConfigError

ARCHIVE_KINDS = ("folder", "dimse", "dicomweb")
RETRIEVE_METHODS = ("get", "move")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env(name: str) -> dict[str, Any]:
    return {"env": name}


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for stores: attempt 1, wait d, attempt 2, wait 2d, ... (capped)."""

    attempts: int = 4
    initial_delay_s: float = 2.0
    max_delay_s: float = 60.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise PacsConfigError(f"store attempts must be >= 1, got {self.attempts}",
                                  setting="SAM2RAD_STORE_ATTEMPTS")
        if self.initial_delay_s < 0 or self.max_delay_s < 0 or self.factor < 1:
            raise PacsConfigError("store backoff delays must be >= 0 and the factor >= 1",
                                  setting="SAM2RAD_STORE_BACKOFF_S")

    def delays(self) -> list[float]:
        """The waits between attempts (one fewer than attempts)."""
        return [min(self.initial_delay_s * self.factor**i, self.max_delay_s) for i in range(self.attempts - 1)]


@dataclass(frozen=True)
class PacsSettings:
    """Where studies come from and where SEGs go. See `ENV` for the variable of each field."""

    kind: str = field(default="folder", metadata=_env("SAM2RAD_PACS_KIND"))
    # folder archive (the embedded default)
    inbox: Path | None = field(default=None, metadata=_env("SAM2RAD_INBOX"))
    outbox: Path | None = field(default=None, metadata=_env("SAM2RAD_OUTBOX"))
    # DIMSE
    host: str = field(default="", metadata=_env("SAM2RAD_PACS_HOST"))
    port: int = field(default=0, metadata=_env("SAM2RAD_PACS_PORT"))
    called_aet: str = field(default="", metadata=_env("SAM2RAD_PACS_AET"))
    calling_aet: str = field(default="SAM2RAD", metadata=_env("SAM2RAD_CALLING_AET"))
    retrieve: str = field(default="get", metadata=_env("SAM2RAD_PACS_RETRIEVE"))
    # C-MOVE: the PACS sends to this AE title, which it must know with our host and SCP port.
    move_aet: str = field(default="", metadata=_env("SAM2RAD_MOVE_AET"))
    scp_port: int = field(default=0, metadata=_env("SAM2RAD_STORE_SCP_PORT"))
    scp_bind: str = field(default="0.0.0.0", metadata=_env("SAM2RAD_STORE_SCP_BIND"))
    timeout_s: float = field(default=30.0, metadata=_env("SAM2RAD_PACS_TIMEOUT"))
    # DICOMweb
    dicomweb_url: str = field(default="", metadata=_env("SAM2RAD_DICOMWEB_URL"))
    dicomweb_user: str = field(default="", metadata=_env("SAM2RAD_DICOMWEB_USER"))
    dicomweb_password: str = field(default="", repr=False, metadata=_env("SAM2RAD_DICOMWEB_PASSWORD"))
    dicomweb_verify: bool = field(default=True, metadata=_env("SAM2RAD_DICOMWEB_VERIFY"))
    dicomweb_ca_bundle: Path | None = field(default=None, metadata=_env("SAM2RAD_DICOMWEB_CA_BUNDLE"))
    dicomweb_client_cert: Path | None = field(default=None, metadata=_env("SAM2RAD_DICOMWEB_CLIENT_CERT"))
    dicomweb_client_key: Path | None = field(default=None, metadata=_env("SAM2RAD_DICOMWEB_CLIENT_KEY"))
    # store retries and the outbox of SEGs that could not be stored yet
    store_attempts: int = field(default=4, metadata=_env("SAM2RAD_STORE_ATTEMPTS"))
    store_backoff_s: float = field(default=2.0, metadata=_env("SAM2RAD_STORE_BACKOFF_S"))
    store_backoff_max_s: float = field(default=60.0, metadata=_env("SAM2RAD_STORE_BACKOFF_MAX_S"))
    store_outbox: Path = field(default=Path("runs/store-outbox"), metadata=_env("SAM2RAD_STORE_OUTBOX"))

    def __post_init__(self) -> None:
        if self.kind not in ARCHIVE_KINDS:
            raise PacsConfigError(f"unknown archive kind {self.kind!r}; expected one of {ARCHIVE_KINDS}",
                                  setting=env_name("kind"))
        if self.retrieve not in RETRIEVE_METHODS:
            raise PacsConfigError(f"unknown retrieve method {self.retrieve!r}; expected one of {RETRIEVE_METHODS}",
                                  setting=env_name("retrieve"))
        for name in ("called_aet", "calling_aet", "move_aet"):
            value = getattr(self, name)
            if len(value) > 16 or "\\" in value:
                raise PacsConfigError(f"AE title {value!r} is not valid (at most 16 characters, no backslash)",
                                      setting=env_name(name))

    # -- derived values ----------------------------------------------------------------------
    @property
    def move_destination(self) -> str:
        return self.move_aet or self.calling_aet

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.store_attempts, initial_delay_s=self.store_backoff_s,
                           max_delay_s=self.store_backoff_max_s)

    def replace(self, **changes: Any) -> "PacsSettings":
        return dataclasses.replace(self, **changes)

    # -- checks per archive kind (called by the archive classes) -----------------------------
    def require(self, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) in ("", 0, None)]
        if missing:
            raise PacsConfigError(
                f"{self.kind} archive needs " + ", ".join(f"{env_name(n)} ({n})" for n in missing),
                setting=env_name(missing[0]),
            )

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, config: Mapping[str, Any] | None = None,
                     env: Mapping[str, str] | None = None) -> "PacsSettings":
        """Settings from a config mapping (field names as keys), then env variables on top.

        Pass env={} to ignore the process environment (tests).
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        known = {f.name: f for f in fields(cls)}
        for key, raw in (config or {}).items():
            if key not in known:
                raise PacsConfigError(f"unknown PACS setting {key!r}; known: {sorted(known)}")
            values[key] = _convert(known[key], raw)
        for name, f in known.items():
            var = f.metadata["env"]
            if env.get(var, "") != "":
                values[name] = _convert(f, env[var])
        password_file = env.get("SAM2RAD_DICOMWEB_PASSWORD_FILE", "")
        if password_file and "dicomweb_password" not in values:
            try:
                values["dicomweb_password"] = Path(password_file).read_text().strip()
            except OSError as exc:
                raise PacsConfigError(f"cannot read the DICOMweb password file: {exc}",
                                      setting="SAM2RAD_DICOMWEB_PASSWORD_FILE") from exc
        return cls(**values)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "PacsSettings":
        return cls.from_mapping(None, env)


ENV: dict[str, str] = {f.name: f.metadata["env"] for f in fields(PacsSettings)}


def env_name(field_name: str) -> str:
    """The environment variable that sets a field, for error messages."""
    return ENV[field_name]


def _convert(f: dataclasses.Field, raw: Any) -> Any:
    kind = str(f.type)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if "Path" in kind:
            return Path(raw).expanduser() if raw not in (None, "") else None
        return str(raw).strip()
    except (TypeError, ValueError) as exc:
        raise PacsConfigError(f"invalid value for {f.name}: {exc}", setting=f.metadata["env"]) from exc
