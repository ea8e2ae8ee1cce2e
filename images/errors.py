"""Errors the images layer raises; every one of them is an `ImagesError`.

ImagesError
├── SandboxError              a sandbox could not do what was asked
│   ├── SandboxUnavailable    the backend cannot run on this host (missing binary, no token)
│   ├── UnsupportedSetting    a limit or policy the backend cannot enforce: refused, not ignored
│   ├── SandboxFileError      a file tool failed (missing file, not a directory, too large)
│   │   ├── PathEscape        a path or symlink leads outside the workspace
│   │   └── FileTooLarge      a file over the size a file tool reads or writes
│   ├── SnapshotUnusable      a snapshot's base image or runtime version is gone
│   ├── SnapshotTooLarge      a snapshot would keep more than the sandbox disk quota
│   ├── SyncError             bringing a sandbox to the base tip failed, at the step named
│   ├── NoImage               the repo has no image for its current spec (no cold start asked)
│   ├── DesktopUnavailable    the sandbox's desktop (display, VNC) could not be started
│   └── IdeUnavailable        the sandbox cannot run VS Code (its backend, a failed start)
│       └── IdeNotInstalled   no code-server where the sandbox looks (`make ide`)
├── BuildError                an image build step failed; the message says which and why
├── SpecFileError             a `.nightshift.toml` that cannot be used (also a ValueError)
├── DevcontainerError         a devcontainer.json that cannot be used (also a ValueError)
├── ReferenceError            an image reference that cannot be parsed (also a ValueError)
├── UnknownRepo               a repo name that is not registered (also a ValueError)
└── Refused                   the egress proxy refused a connection (`status`: its HTTP code)

Each class is defined beside what raises it, and the sandbox branch beside the interface its
backends implement (`images/sandboxes/base.py`): SandboxError and its subclasses in
`sandboxes/base.py`, SyncError and NoImage in `starter.py`, DesktopUnavailable in
`sandboxes/desktop.py`, IdeUnavailable and IdeNotInstalled in `sandboxes/ide.py`, BuildError
in `setup.py`, SpecFileError in `spec.py`, DevcontainerError in `devcontainer.py`,
ReferenceError in `oci.py`, UnknownRepo in `image_jobs.py`, Refused in
`sandboxes/egress_policy.py`.
This module holds the root only, so every one of them can import it without a circle.
"""

from __future__ import annotations


class ImagesError(Exception):
    """The root of every error the images layer defines."""
