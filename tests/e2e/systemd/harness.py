"""A real systemd, PID 1 of a throwaway systemd-nspawn container booted from this machine's own root.

The host's `/` is bind-mounted (not recursively) onto an empty folder inside a private mount
namespace and booted read-only with a tmpfs overlay (`--volatile=overlay`): nothing the
container writes reaches the host, and the container has the host's packages (Python, FFmpeg,
systemd) without an image to build. Commands run inside with `nsenter`; host code reads and
writes the container's files through `/proc/PID/root`.

Every step that can fail on an unsuitable machine raises `BootError` naming that step, so the
fixture can skip with the exact reason. `Container.stop()` always leaves nothing behind: the
container is halted (or killed), its cgroup folders removed, and the mount namespace dies with
its last process.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

# Cgroup hierarchies the launcher joins before starting nspawn: systemd 252 in the container
# wants the cgroup2 hierarchy (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1) and nspawn also sets up the
# named v1 "systemd" one on a hybrid host.
CGROUP_UNIFIED = Path("/sys/fs/cgroup/unified")
CGROUP_NAMED = Path("/sys/fs/cgroup/systemd")
NAME_PREFIX = "edgeguard-e2e-"
# Units of the host image that a test container does not need and that slow or fail its boot.
DEFAULT_MASKS = ("postgresql.service", "e2scrub_reap.service")
INSIDE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_PYTHON = Path("/usr/bin/python3")


class BootError(Exception):
    """The machine cannot run the container; `step` names what failed."""

    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail


def preflight() -> None:
    """Raise BootError unless this machine can boot the container at all."""
    if os.geteuid() != 0:
        raise BootError("preflight", f"not root (euid {os.geteuid()}); systemd-nspawn needs root")
    for tool in ("systemd-nspawn", "nsenter", "unshare", "mount", "setpriv"):
        if shutil.which(tool) is None:
            raise BootError("preflight", f"no {tool} on PATH (apt-get install systemd-container util-linux)")
    if not Path("/lib/systemd/systemd").exists():
        raise BootError("preflight", "no /lib/systemd/systemd to boot (apt-get install systemd)")
    mounts = _mounts()
    for where, kind in ((CGROUP_UNIFIED, "cgroup2"), (CGROUP_NAMED, "cgroup")):
        if mounts.get(str(where)) != kind:
            raise BootError(
                "preflight",
                f"{where} is not a {kind} mount (found {mounts.get(str(where), 'nothing')}); these tests need a"
                " hybrid cgroup host (cgroup v1 with the named systemd hierarchy plus cgroup2 at"
                f" {CGROUP_UNIFIED})",
            )


def _mounts() -> dict[str, str]:
    """Mount point -> file system type, from /proc/self/mountinfo."""
    out = {}
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        sep = fields.index("-")
        out[fields[4]] = fields[sep + 1]
    return out


# ------------------------------------------------------------------ wheels


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgeguard-e2e"


def requirements(repo: Path) -> list[str]:
    """What installing `repo[systemd]` needs besides the checkout itself (build backend included)."""
    meta = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
    project = meta["project"]
    reqs: list[str] = [*project["dependencies"], *project["optional-dependencies"]["systemd"]]
    reqs += meta["build-system"]["requires"]
    return sorted(set(reqs))


def wheelhouse(repo: Path, python: Path = SYSTEM_PYTHON) -> Path:
    """A folder of wheels for every requirement, built for `python` (the one install.sh uses); cached.

    The container has no network (--private-network), so install.sh installs from this folder.
    Wheels are built with a venv of `python` itself so their tags match it (systemd-python is
    compiled); the folder is keyed by the requirements and the interpreter's version.
    """
    reqs = requirements(repo)
    version = _run_host([str(python), "-c", "import sys; print(sys.version.split()[0])"], "wheels").stdout.strip()
    key = hashlib.sha256(json.dumps([version, reqs]).encode()).hexdigest()[:16]
    root = cache_root()
    house = root / f"wheels-{key}"
    if (house / ".complete").exists():
        return house
    root.mkdir(parents=True, exist_ok=True)
    builder = root / f"builder-{version}"
    if not (builder / ".complete").exists():
        _run_host([str(python), "-m", "venv", "--clear", str(builder)], "wheels (python3 -m venv)")
        # Debian's bundled pip/setuptools cannot build systemd-python (a setup.py-only sdist)
        # without the `wheel` package: "invalid command 'bdist_wheel'".
        _run_host(
            [
                str(builder / "bin" / "pip"),
                "install",
                "-q",
                "--disable-pip-version-check",
                "-U",
                "pip",
                "setuptools",
                "wheel",
            ],
            "wheels (pip install -U pip setuptools wheel: needs a package index)",
        )
        (builder / ".complete").touch()
    tmp = Path(tempfile.mkdtemp(prefix=".wheels-", dir=root))
    try:
        _run_host(
            [str(builder / "bin" / "pip"), "wheel", "-q", "--disable-pip-version-check", "-w", str(tmp), *reqs],
            "wheels (pip wheel: needs a package index, gcc, libsystemd-dev, python3-dev)",
            timeout=900,
        )
        (tmp / ".complete").touch()
        try:
            tmp.rename(house)
        except OSError:  # another run finished first
            shutil.rmtree(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return house


def _run_host(argv: Sequence[str], step: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BootError(step, str(exc)) from None
    if done.returncode != 0:
        raise BootError(step, f"{shlex.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done


def checkout_files(repo: Path) -> list[str]:
    """The checkout's files as git sees them (tracked and untracked, ignored ones left out)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        # Not a git checkout (an unpacked sdist): everything but virtualenvs and caches.
        skip = {".git", ".venv", "build", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
        return sorted(
            str(p.relative_to(repo))
            for p in repo.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(repo).parts) and ".egg-info" not in str(p)
        )
    return sorted({name for name in out.decode().split("\0") if name and (repo / name).is_file()})


# --------------------------------------------------------------- container


class Container:
    """One booted container; use as a context manager or call `stop()` in a finalizer."""

    def __init__(self, workdir: Path, *, binds_ro: Mapping[Path, str] | None = None, masks: Sequence[str] = ()) -> None:
        self.name = f"{NAME_PREFIX}{os.getpid()}-{int(time.time() * 1000) % 100000}"
        self.workdir = workdir
        self.binds_ro = dict(binds_ro or {})
        self.masks = (*DEFAULT_MASKS, *masks)
        self.console = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None  # the container's systemd, as the host sees it
        self._root_dir: Path | None = None
        self._cgroups = [CGROUP_UNIFIED / self.name, CGROUP_NAMED / self.name]

    # ------------------------------------------------------------ life cycle

    def boot(self, timeout: float = 60.0) -> float:
        """Start the container and wait until systemd inside says running; returns the seconds taken."""
        preflight()
        sweep_stale()
        begun = time.monotonic()
        self._root_dir = Path(tempfile.mkdtemp(prefix="root-", dir=self.workdir))
        for cg in self._cgroups:
            try:
                cg.mkdir()
            except OSError as exc:
                raise BootError("cgroup", f"cannot create {cg}: {exc.strerror}") from None
        nspawn = [
            "systemd-nspawn",
            "--quiet",
            f"--directory={self._root_dir}",
            "--volatile=overlay",
            # No machined and no host D-Bus to register with; keep-unit: stay in our own cgroup.
            "--register=no",
            "--keep-unit",
            "--private-network",
            f"--machine={self.name}",
            "--console=pipe",
            *(f"--bind-ro={src}:{dst}" for src, dst in self.binds_ro.items()),
            "--boot",
            *(f"systemd.mask={unit}" for unit in self.masks),
        ]
        # Join our cgroups first (else nspawn nests the container under the root cgroup), then a
        # private mount namespace so the bind of / vanishes with the last process in it. The
        # wrappers exec each other, so self.proc.pid ends up being systemd-nspawn itself.
        # setpriv: should pytest die without its finalizers (SIGTERM, SIGKILL), nspawn gets SIGTERM
        # and halts the container; the next run's sweep_stale() removes the empty cgroups.
        argv = [
            "setpriv",
            "--pdeathsig",
            "TERM",
            "--",
            "sh",
            "-c",
            'for cg in "$CG1" "$CG2"; do echo $$ > "$cg/cgroup.procs" || exit 97; done; '
            'exec unshare --mount --propagation private sh -c "$INNER" "$ROOT" "$@"',
            "sh",
            *nspawn,
        ]
        env = {
            "PATH": os.environ.get("PATH", INSIDE_PATH),
            "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY": "1",
            "INNER": 'mount --bind / "$0" || exit 98; exec "$@"',
            "ROOT": str(self._root_dir),
            "LANG": "C.UTF-8",
        }
        env["CG1"], env["CG2"] = (str(cg) for cg in self._cgroups)
        with self.console.open("ab") as console:
            self.proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        atexit.register(self.stop)  # a last resort should the fixture's finalizer not run
        self.leader = self._find_leader(begun + timeout)
        state = ""
        while time.monotonic() < begun + timeout:
            self._check_alive("boot")
            state = self.run(["systemctl", "is-system-running"], check=False, timeout=30).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.2)
        else:
            raise BootError("boot", f"systemctl is-system-running still says {state!r} after {timeout:g} s")
        if state == "degraded":
            failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"], check=False).stdout
            # Units of the host image, not ours: say so, but go on (the tests check their own unit).
            print(f"systemd container: boot degraded; failed units:\n{failed}", file=sys.stderr)
        return time.monotonic() - begun

    def _find_leader(self, deadline: float) -> int:
        """The host PID of the container's PID 1: a descendant of nspawn that is PID 1 in its namespace."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            self._check_alive("boot")
            for pid in _pids():
                status = _status(pid)
                nspid = status.get("NSpid", "").split()
                if len(nspid) >= 2 and nspid[-1] == "1" and self._descends(pid, self.proc.pid):
                    return pid
            time.sleep(0.05)
        raise BootError("boot", "no container PID 1 appeared under systemd-nspawn")

    @staticmethod
    def _descends(pid: int, ancestor: int) -> bool:
        for _ in range(16):
            ppid = int(_status(pid).get("PPid", "0") or 0)
            if ppid == ancestor:
                return True
            if ppid <= 1:
                return False
            pid = ppid
        return False

    def _check_alive(self, step: str) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            reasons = {97: "could not join our cgroups", 98: "could not bind-mount / onto the container root"}
            why = reasons.get(code, f"systemd-nspawn exited {code}")
            raise BootError(step, f"{why}; console:\n{self.console_tail()}")

    def console_tail(self, chars: int = 3000) -> str:
        try:
            return self.console.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return "(no console log)"

    def stop(self, timeout: float = 30.0) -> None:
        """Halt the container (SIGTERM to nspawn), kill whatever is left, remove its cgroups and root folder."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)  # nspawn asks the container's systemd to halt
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        # SIGKILL to the container's PID 1 takes its whole PID namespace (nsenter'd commands too).
        if self.leader is not None and _alive(self.leader):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.leader, signal.SIGKILL)
        _remove_cgroups(self._cgroups)
        if self._root_dir is not None:
            with contextlib.suppress(OSError):
                self._root_dir.rmdir()  # an empty mount point; the bind went with the namespace
        self.leader = None
        atexit.unregister(self.stop)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -------------------------------------------------------------- commands

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 120.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the container (as root, or as `user`), with a clean environment."""
        assert self.leader is not None, "container not booted"
        clean = {"PATH": INSIDE_PATH, "LANG": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "", "HOME": "/root"}
        clean.update(env or {})
        inner = list(argv)
        if user is not None:
            inner = ["runuser", "-u", user, "--", *inner]
        if cwd is not None:
            inner = ["sh", "-c", 'cd "$0" && exec "$@"', cwd, *inner]
        full = [
            "nsenter",
            "-t",
            str(self.leader),
            "-a",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in clean.items()),
            *inner,
        ]
        try:
            done = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"timed out after {timeout:g} s inside the container: {shlex.join(argv)}") from exc
        if check and done.returncode != 0:
            raise AssertionError(
                f"inside the container: {shlex.join(argv)} exited {done.returncode}\n"
                f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
            )
        return done

    def path(self, inside: str) -> Path:
        """The host's view of a path inside the container (through /proc/PID/root)."""
        assert self.leader is not None, "container not booted"
        assert inside.startswith("/"), inside
        return Path(f"/proc/{self.leader}/root{inside}")

    def copy_in(self, src: Path, dst: str, *, mode: int = 0o644, owner: str | None = None) -> None:
        """Copy a host file to `dst` inside (parents made), then chmod and chown it there."""
        target = self.path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        os.chmod(target, mode)
        if owner is not None:
            self.run(["chown", owner, dst])

    def copy_tree_in(self, src: Path, files: Sequence[str], dst: str) -> None:
        """Copy `files` (relative to `src`) under `dst` inside, keeping their modes."""
        base = self.path(dst)
        for rel in files:
            target = base / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, target)


# ------------------------------------------------------------- low level


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _remove_cgroups(roots: Sequence[Path], timeout: float = 10.0) -> None:
    """Kill every process left in `roots` (and below), then remove the folders, deepest first."""
    deadline = time.monotonic() + timeout
    for root in roots:
        while root.exists():
            folders = sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
            for folder in [*folders, root]:
                with contextlib.suppress(OSError):
                    for pid in (folder / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                with contextlib.suppress(OSError):
                    folder.rmdir()
            if time.monotonic() > deadline:
                print(f"systemd container: could not remove cgroup {root}", file=sys.stderr)
                break
            if root.exists():
                time.sleep(0.05)


def sweep_stale() -> None:
    """Remove what a killed earlier run (SIGKILL, power loss of the runner) left: its cgroups."""
    for parent in (CGROUP_UNIFIED, CGROUP_NAMED):
        with contextlib.suppress(OSError):
            for entry in parent.iterdir():
                if not entry.name.startswith(NAME_PREFIX) or not entry.is_dir():
                    continue
                owner = entry.name[len(NAME_PREFIX) :].split("-", 1)[0]
                if owner.isdigit() and _alive(int(owner)):
                    continue  # a run still going (another pytest process)
                _remove_cgroups([entry])
