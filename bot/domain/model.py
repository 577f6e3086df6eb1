"""The state of one image as the rules see it."""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.domain.names import Env


@dataclass(frozen=True)
class Pointer:
    """Where one environment points, with the generation used for compare-and-swap."""

    env: Env
    sha: str | None = None
    generation: int = 0
    updated_at: str | None = None
    updated_by: str | None = None


@dataclass(frozen=True)
class Version:
    image: str
    sha: str
    tests_passed: bool
    created_at: str
    recorded_by: str
    subject: str | None = None
    branch: str | None = None
    build_id: str | None = None
    revoked_at: str | None = None
    revoked_by: str | None = None
    revoked_reason: str | None = None
    report: dict | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class Freeze:
    reason: str
    by: str
    at: str


@dataclass(frozen=True)
class ImageState:
    image: str
    pointers: dict[Env, Pointer] = field(default_factory=dict)
    freeze: Freeze | None = None

    def pointer(self, env: Env) -> Pointer:
        return self.pointers.get(env) or Pointer(env=env)

    def sha(self, env: Env) -> str | None:
        return self.pointer(env).sha

    def generations(self) -> dict[str, int]:
        return {env.value: self.pointer(env).generation for env in Env}

    def shas(self) -> dict[str, str | None]:
        return {env.value: self.sha(env) for env in Env}
