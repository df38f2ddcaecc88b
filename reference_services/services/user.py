"""``user`` v1: sign-up (emits ``userSignedUp``) and look-up, state in the state store."""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, Field

from reference_services.runtime.context import Context
from reference_services.runtime.errors import HandledError, StatusCode
from reference_services.runtime.service import ServiceBuilder
from reference_services.runtime.spi.protocols import Store

user_v1 = ServiceBuilder("user", "1", "Sign-up and look-up of users")


class SignUp(BaseModel):
    """Input of ``signUp``."""

    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=320)
    name: str = Field(min_length=1, max_length=200)


class UserRef(BaseModel):
    """Parameter of ``getUser``."""

    user_id: str = Field(min_length=1)


class User(BaseModel):
    """A user, as returned and as carried by ``userSignedUp``."""

    user_id: str
    email: str
    name: str


def user_id_for(email: str) -> str:
    """A stable id per e-mail address, so a repeated sign-up is recognised."""
    return hashlib.sha256(email.lower().encode()).hexdigest()[:32]


def _store(ctx: Context) -> Store:
    if ctx.stores.state is None:
        raise HandledError("user service needs a state store", StatusCode.SERVICE_UNAVAILABLE)
    return ctx.stores.state


@user_v1.command("signUp", payload=SignUp, output=User, success_event="userSignedUp")
async def sign_up(ctx: Context, payload: SignUp, parameter: object) -> User:
    """Create a user; 409 when the e-mail address is taken."""
    user = User(user_id=user_id_for(payload.email), email=payload.email, name=payload.name)
    created = await _store(ctx).set_if_absent(f"user:{user.user_id}", user.model_dump())
    if not created:
        raise HandledError(f"{payload.email} is already signed up", StatusCode.CONFLICT)
    return user


@user_v1.command("getUser", parameter=UserRef, output=User)
async def get_user(ctx: Context, payload: object, parameter: UserRef) -> User:
    """Return a user; 404 when unknown."""
    key = f"user:{parameter.user_id}"
    found = (await _store(ctx).get(key))[key]
    if found is None:
        raise HandledError(f"no user {parameter.user_id}", StatusCode.NOT_FOUND)
    return User(**found)
