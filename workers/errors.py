"""Errors the workers layer raises; every one of them is a `WorkersError`.

WorkersError
├── ControlPlaneError           the control plane refused a request (unknown session, bad
│   │                           input, limit reached)
│   └── ControlPlaneUnavailable the API did not answer within the retry window (HTTP port)
├── BusUnavailable              Redis did not take an event within the retry window
├── JobError                    a job could not run (an unknown repo, a part missing)
├── ToolError                   a tool refused or failed; the message goes back to the model
├── PluginLoadError             a plugin could not be imported or built (`workers/agent/plugins.py`;
│                               `serve` and `worker` stop at start naming it)
└── GitOpsError                 committing or pushing the work failed (`workers/gitops.py`,
    │                           where it is defined beside the git steps that raise it)
    └── PushTooLarge            the work's bundle is over NIGHTSHIFT_MAX_PUSH_MB

Failures of the layers below keep their own trees: `images.errors.ImagesError` (sandboxes,
images) and `integrations.errors.IntegrationsError` (`ForgeError`, `ModelError`, `GitHubError`).
"""

from __future__ import annotations


class WorkersError(Exception):
    """The root of every error the workers layer defines."""


class ControlPlaneError(WorkersError):
    """The control plane refused a request (unknown session, bad input, limit reached)."""


class ControlPlaneUnavailable(ControlPlaneError):
    """The API did not answer within the retry window."""


class BusUnavailable(WorkersError):
    """Redis did not take an event within the retry window."""


class JobError(WorkersError):
    """A job could not run (an unknown repo, a part missing from this build)."""


class ToolError(WorkersError):
    """A tool refused or failed; the message goes back to the model."""
