"""Configuration: ``/etc/pysendmail.toml``, ``PYSENDMAIL_…`` variables, secrets, the snapshot.

``load_settings(config_path, environ)`` returns a plain ``Settings`` (see
``settings``). The ``sendmail`` hot path imports this package on every
invocation, so it must never import pydantic, tomllib, ``typing`` or anything
else heavy at run time: the schema (``model``), full validation (``loader``)
and ``config check`` (``check``) are separate modules, imported only when the
snapshot cannot be used or when asked for. Nothing here holds a secret; a
relay's password is read at send time by ``secrets.resolve_password``.
"""

from pysendmail.config.settings import General, Log, Queue, Relay, Rewrite, Settings
from pysendmail.config.snapshot import DEFAULT_CONFIG_PATH, load_settings, resolve_config_path

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "General",
    "Log",
    "Queue",
    "Relay",
    "Rewrite",
    "Settings",
    "load_settings",
    "resolve_config_path",
]
