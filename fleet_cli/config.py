"""Contexts, kubectl-like: named (server URL, token) pairs and the current one, in the user's config folder.

The file is `$XDG_CONFIG_HOME/edgefleet/config` (default `~/.config/edgefleet/config`), JSON, mode 0600 because
it holds bearer tokens. `EDGEFLEET_SERVER` / `EDGEFLEET_TOKEN` override the context; flags override both. A
context's token is sent only to that context's server.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

SERVER_ENV, TOKEN_ENV, CONFIG_ENV = "EDGEFLEET_SERVER", "EDGEFLEET_TOKEN", "EDGEFLEET_CONFIG"


class ConfigError(Exception):
    pass


@dataclass
class Context:
    name: str
    server: str
    token: str | None = None


@dataclass
class Config:
    path: Path
    current: str | None = None
    contexts: dict[str, Context] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        path = path or default_path()
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            contexts = {c["name"]: Context(c["name"], c["server"], c.get("token")) for c in data.get("contexts", [])}
            return cls(path, data.get("current-context"), contexts)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path} is not a valid edgefleet config ({exc}); fix or delete it") from None

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"current-context": self.current, "contexts": [asdict(c) for c in self.contexts.values()]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        # Created 0600 from the start (never readable by others, not even for a moment), then swapped in.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def set(self, name: str, server: str | None, token: str | None) -> Context:
        existing = self.contexts.get(name)
        if not server:
            if existing is None:
                raise ConfigError(f"context {name!r} is new: give it a --server")
            server = existing.server
        ctx = Context(name, server.rstrip("/"), token if token is not None else (existing.token if existing else None))
        self.contexts[name] = ctx
        if self.current is None:
            self.current = name
        return ctx

    def use(self, name: str) -> Context:
        if name not in self.contexts:
            known = ", ".join(sorted(self.contexts)) or "none yet"
            raise ConfigError(f"no context {name!r} (known: {known}); create it with 'edgefleet context set {name} --server URL'")
        self.current = name
        return self.contexts[name]

    def delete(self, name: str) -> None:
        self.use(name)  # the same error for an unknown name
        del self.contexts[name]
        self.current = next(iter(self.contexts), None) if self.current == name else self.current


def default_path() -> Path:
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgefleet" / "config"


@dataclass(frozen=True)
class Target:
    server: str
    token: str | None
    source: str  # where the server came from, for error messages


def resolve(config: Config, context: str | None = None, server: str | None = None, token: str | None = None) -> Target:
    """Flags, then environment, then the named (or current) context."""
    ctx: Context | None = None
    if context:
        if context not in config.contexts:
            config.use(context)  # raises the error that lists the known names
        ctx = config.contexts[context]
    elif config.current:
        ctx = config.contexts.get(config.current)
    env_server, env_token = os.environ.get(SERVER_ENV) or None, os.environ.get(TOKEN_ENV) or None
    chosen = (server or env_server or (ctx.server if ctx else "")).rstrip("/")
    if not chosen:
        raise ConfigError(f"no fleet API configured: run 'edgefleet context set NAME --server URL --token TOKEN' or set {SERVER_ENV}")
    source = "--server" if server else SERVER_ENV if env_server else f"context {ctx.name!r}"  # type: ignore[union-attr]
    # A context's token goes only to that context's server, never to another one named by a flag or the environment.
    ctx_token = ctx.token if ctx and ctx.server == chosen else None
    return Target(chosen, token or env_token or ctx_token, source)
