"""gVisor's helpers: `runsc` itself (its version, and containers a crash left running), and
small C programs built once into the data dir.

- `nsexec` runs each command in a PID namespace (and /proc) of its own, without privileges,
  with RLIMIT_NPROC and RLIMIT_CPU, and reports a fatal signal N as exit 128+N.
- the statx shim, preloaded into every dynamically linked program, works around runsc
  20221219 refusing `AT_NO_AUTOMOUNT` (coreutils `ls -l` and `stat` fail without it).
- `dropuid`, bubblewrap's `setpriv` for declared images: linked statically, so it runs in an
  image whatever (if any) C library the image has; `nsexec` is linked statically for them too.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

from images.sandboxes.base import SandboxUnavailable
from images.sandboxes.limits import pid_alive

SHIM_FIXED_IN = 20230101  # runsc releases from here on accept AT_NO_AUTOMOUNT

NSEXEC_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* nsexec [--root DIR] UID GID NPROC CPU_S CMD...: CMD in a new PID namespace as UID:GID without
   capabilities, with RLIMIT_NPROC and RLIMIT_CPU (soft CPU_S, hard CPU_S+5: SIGXCPU first).
   When CMD ends, everything it left behind is killed with the namespace. Exit status: CMD's,
   or 128+N when signal N ended it. With --root, CMD runs chrooted into DIR (the host's tools
   view of a sandbox on a declared image), the container's /dev bound into it. */
static int status_of(int st) { return WIFSIGNALED(st) ? 128 + WTERMSIG(st) : WEXITSTATUS(st); }

static int wait_for(pid_t pid) {
    int st;
    for (;;) {
        pid_t got = waitpid(-1, &st, 0);
        if (got == pid) return status_of(st);
        if (got < 0 && errno != EINTR) return 125;
    }
}

int main(int argc, char **argv) {
    const char *root = NULL;
    if (argc > 2 && strcmp(argv[1], "--root") == 0) { root = argv[2]; argv += 2; argc -= 2; }
    if (argc < 6) { fputs("usage: nsexec UID GID NPROC CPU_S CMD...\n", stderr); return 125; }
    uid_t uid = (uid_t)strtoul(argv[1], NULL, 10);
    gid_t gid = (gid_t)strtoul(argv[2], NULL, 10);
    rlim_t nproc = (rlim_t)strtoul(argv[3], NULL, 10), cpu = (rlim_t)strtoul(argv[4], NULL, 10);
    struct rlimit nproc_limit = {nproc, nproc}, cpu_limit = {cpu, cpu + 5};
    if (setrlimit(RLIMIT_NPROC, &nproc_limit) != 0) { perror("nsexec: setrlimit"); return 125; }
    if (unshare(CLONE_NEWPID | CLONE_NEWNS) != 0) { perror("nsexec: unshare"); return 125; }
    pid_t init = fork();
    if (init < 0) { perror("nsexec: fork"); return 125; }
    if (init > 0) return wait_for(init);
    /* pid 1 of the namespace: shows only its own processes in /proc, drops privileges, dies
       with the outer process, reaps. */
    if (root != NULL) {
        char cwd[4096], dev[4096];
        if (getcwd(cwd, sizeof cwd) == NULL) strcpy(cwd, "/");
        snprintf(dev, sizeof dev, "%s/dev", root);
        /* gVisor's /dev is its own devtmpfs: a fresh one shows the same devices. */
        if (mount("devtmpfs", dev, "devtmpfs", MS_NOSUID | MS_NOEXEC, NULL) != 0) {
            perror("nsexec: mounting /dev for the host's tools");
            return 125;
        }
        if (chroot(root) != 0 || chdir(cwd) != 0) {
            perror("nsexec: entering the host's tools");
            return 125;
        }
    }
    if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) {
        perror("nsexec: mounting /proc");
        return 125;
    }
    for (int cap = 0; cap <= 63; cap++) prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
    if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) {
        perror("nsexec: dropping privileges");
        return 125;
    }
    /* After the credential change, which would clear it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    pid_t child = fork();
    if (child < 0) { perror("nsexec: fork"); return 125; }
    if (child == 0) {
        /* Set here, in the process that becomes CMD: runsc 20221219 only arms the CPU-time
           timer of the process that calls setrlimit, not of processes that inherit it. */
        if (setrlimit(RLIMIT_CPU, &cpu_limit) != 0) { perror("nsexec: setrlimit"); _exit(125); }
        execvp(argv[5], argv + 5);
        fprintf(stderr, "%s: %s\n", argv[5], strerror(errno));
        _exit(errno == ENOENT ? 127 : 126);
    }
    return wait_for(child);
}
"""

STATX_SHIM_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* runsc 20221219 answers EINVAL to AT_NO_AUTOMOUNT, which stat never acts on since 4.14. */
int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *buf) {
    return (int)syscall(SYS_statx, dirfd, path, flags & ~AT_NO_AUTOMOUNT, mask, buf);
}
int fstatat(int dirfd, const char *path, struct stat *buf, int flags) {
    return (int)syscall(SYS_newfstatat, dirfd, path, buf, flags & ~AT_NO_AUTOMOUNT);
}
int fstatat64(int dirfd, const char *path, struct stat64 *buf, int flags) {
    return (int)syscall(SYS_newfstatat, dirfd, path, buf, flags & ~AT_NO_AUTOMOUNT);
}
"""


@cache
def runsc_version() -> tuple[str, int]:
    """(version text, release date as YYYYMMDD or 0)."""
    path = shutil.which("runsc")
    if path is None:
        raise SandboxUnavailable(
            "gVisor is not installed: `apt-get install runsc` (make test does this)"
        )
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    first = out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"
    text = first.replace("runsc version ", "")
    found = re.search(r"(20\d{6})", text)
    return text, int(found.group(1)) if found else 0


DROPUID_C = r"""
#define _GNU_SOURCE
#include <grp.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* dropuid UID GID CMD...: CMD as UID:GID with no groups, no capabilities in any set and no
   way to gain any (no_new_privs), as `setpriv --reuid --regid --clear-groups --inh-caps=-all
   --bounding-set=-all --no-new-privs` does. */
int main(int argc, char **argv) {
    if (argc < 4) { fputs("usage: dropuid UID GID CMD...\n", stderr); return 125; }
    uid_t uid = (uid_t)strtoul(argv[1], NULL, 10);
    gid_t gid = (gid_t)strtoul(argv[2], NULL, 10);
    for (int cap = 0; cap < 64; cap++) prctl(PR_CAPBSET_DROP, cap, 0, 0, 0);
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0) {
        perror("dropuid: dropping privileges");
        return 125;
    }
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {{0, 0, 0}, {0, 0, 0}};
    if (syscall(SYS_capset, &head, data) != 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        perror("dropuid: clearing capabilities");
        return 125;
    }
    execvp(argv[3], argv + 3);
    perror(argv[3]);
    return 127;
}
"""


def _compile(source: str, out: Path, shared: bool, static: bool = False) -> None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SandboxUnavailable(
            "the gVisor backend builds two small helpers and needs a C compiler: "
            "`apt-get install gcc` (make test does this)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.with_suffix(".c")
    src.write_text(source)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    flags = ["-shared", "-fPIC"] if shared else ["-static"] if static else []
    result = subprocess.run(
        [cc, "-O2", "-Wall", *flags, "-o", str(tmp), str(src), "-ldl" if shared else "-lc"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SandboxUnavailable(f"building {out.name} failed: {result.stderr.strip()}")
    os.chmod(tmp, 0o755)  # noqa: S103  (run inside the sandbox by an unprivileged uid)
    tmp.rename(out)


def helper(state_dir: Path, source: str, name: str, shared: bool, static: bool = False) -> Path:
    """A compiled helper, built once per source text and cached under the state dir."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    kind = ".so" if shared else "-static" if static else ""
    out = state_dir / "gvisor" / "bin" / f"{name}-{digest}{kind}"
    if not out.exists():
        _compile(source, out, shared, static)
    return out


def static_helper(state_dir: Path, name: str) -> Path:
    """`dropuid` or `nsexec`, linked statically (for sandboxes on a declared image)."""
    return helper(state_dir, DROPUID_C if name == "dropuid" else NSEXEC_C, name, False, True)


def build_helpers(state_dir: Path) -> tuple[Path, Path | None]:
    """`nsexec`, and the statx shim when this runsc needs it."""
    nsexec = helper(state_dir, NSEXEC_C, "nsexec", shared=False)
    if runsc_version()[1] < SHIM_FIXED_IN:
        return nsexec, helper(state_dir, STATX_SHIM_C, "statx-shim", shared=True)
    return nsexec, None


def release_stale_containers(runsc_root: Path) -> int:
    """Delete containers whose server process is gone (a crash leaves them running)."""
    listing = subprocess.run(
        ["runsc", f"--root={runsc_root}", "list", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    count = 0
    for cid in listing.stdout.split():
        owner = cid.split("-", 1)[0]
        if owner.isdigit() and not pid_alive(int(owner)):
            subprocess.run(
                ["runsc", f"--root={runsc_root}", "delete", "--force", cid],
                capture_output=True,
                check=False,
            )
            count += 1
    return count
