"""Errors the services raise; the API maps each to its HTTP status with the message intact.

ServiceError
├── NotFound        404: no such session / repo / user
├── Invalid         422: the request is well-formed JSON but cannot be honoured
├── Conflict        409: it clashes with existing state (a repo name taken)
├── Unauthorized    401: no or bad credentials
├── TooMany         429: the caller holds as many sessions or streams as one person may
├── Forbidden       403: the caller may not do this (a host path outside NIGHTSHIFT_REPO_ROOTS)
└── Unavailable     503: a service it depends on (Redis, a job) is not there right now
"""

from __future__ import annotations


class ServiceError(Exception):
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
