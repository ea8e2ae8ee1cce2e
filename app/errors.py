"""Errors the app layer raises; every one of them is an `AppError`.

AppError
├── ServiceError          the services' refusals; the API maps each to its HTTP status with
│   │                     the message intact
│   ├── NotFound          404: no such session / repo / user
│   ├── Invalid           422: the request is well-formed JSON but cannot be honoured
│   ├── Conflict          409: it clashes with existing state (a repo name taken)
│   ├── Unauthorized      401: no or bad credentials
│   ├── TooMany           429: the caller holds as many sessions or streams as one person may
│   ├── Forbidden         403: the caller may not do this (a host path outside
│   │                     NIGHTSHIFT_REPO_ROOTS)
│   └── Unavailable       503: a service it depends on (Redis, a job) is not there right now
├── SettingsFileError     a settings file that cannot be used, `path:line: reason` (also a
│                         ValueError; `settings_file.py`)
├── BadKeys               NIGHTSHIFT_SECRET_KEYS is malformed (also a ValueError; `services/crypto.py`)
├── Undecryptable         a stored secret under a key no longer configured (`services/crypto.py`)
├── PullRequestDeferred   an opener cannot open the PR yet; the session gets a notice
│                         (`services/pull_requests.py`)
├── SignInRequired        the person has no usable GitHub token (`services/github/accounts.py`)
├── SignInRefused         GitHub vouched for the person; this server does not let them in (same)
├── LinkRefused           a GitHub identity that belongs to another user (same)
├── Ignored               a GitHub delivery asking for nothing we do (`services/github/gate.py`)
├── BadDelivery           a signed delivery we cannot use (also a ValueError;
│                         `services/github/events.py`)
├── ProtocolError         a VNC client message the view-only filter does not know
│                         (`services/rfb.py`)
├── ApiError              the CLI's request the server refused (`commands/client.py`)
│   └── Unreachable       no server answers at the URL
└── BenchError            a benchmark could not produce its figures (`bench/__init__.py`)

Each class outside this module is defined beside what raises it and imports AppError from
here; this module imports nothing of the app, so none of them makes a circle. Failures of the
layers below keep their own trees: `workers.errors.WorkersError`, `images.errors.ImagesError`,
`integrations.errors.IntegrationsError`.
"""

from __future__ import annotations


class AppError(Exception):
    """The root of every error the app layer defines."""


class ServiceError(AppError):
    status_code = 400


class NotFound(ServiceError):
    status_code = 404


class Invalid(ServiceError):
    status_code = 422


class Conflict(ServiceError):
    status_code = 409


class Unauthorized(ServiceError):
    status_code = 401


class TooMany(ServiceError):
    status_code = 429


class Forbidden(ServiceError):
    status_code = 403


class Unavailable(ServiceError):
    status_code = 503
