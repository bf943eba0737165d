"""The bubblewrap argv, line by line: what a sandboxed command is allowed, without running one."""

from __future__ import annotations

from pathlib import Path

from chalicelib.sandbox.bwrap_argv import HostLayout, LaunchPlan, bwrap_argv

LAYOUT = HostLayout(links=(("bin", "usr/bin"), ("lib", "usr/lib")), folders=("lib64",), etc=("passwd", "resolv.conf"))
BASE = [
    "/usr/bin/bwrap", "--unshare-user", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
    "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox",
    "--disable-userns", "--ro-bind", "/usr", "/usr",
    "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib", "--ro-bind", "/lib64", "/lib64",
    "--ro-bind", "/etc/passwd", "/etc/passwd", "--ro-bind", "/etc/resolv.conf", "/etc/resolv.conf",
    "--proc", "/proc", "--dev", "/dev", "--size", "1048576", "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
    "--size", "1048576", "--tmpfs", "/tmp", "--bind", "/stage/workspace", "/workspace",
]


def plan(**changes: object) -> LaunchPlan:
    values: dict[str, object] = {
        "bwrap": "/usr/bin/bwrap", "layout": LAYOUT, "workspace_source": "/stage/workspace", "skills_source": None,
        "tmp_bytes": 1 << 20, "environment": {"HOME": "/workspace"}, "network": False, "disable_userns": True,
    }
    values.update(changes)
    return LaunchPlan(**values)  # type: ignore[arg-type]


def test_network_off_unshares_the_network() -> None:
    assert bwrap_argv(plan(), ["/bin/true"]) == [
        *BASE, "--unshare-net", "--remount-ro", "/", "--clearenv", "--chdir", "/workspace",
        "--setenv", "HOME", "/workspace", "--", "/bin/true"]


def test_network_on_stays_in_the_namespace_the_pre_exec_step_joined() -> None:
    argv = bwrap_argv(plan(network=True, environment={"HTTPS_PROXY": "http://127.0.0.1:3128"}), ["sh"])
    assert "--unshare-net" not in argv
    assert argv[-7:] == ["--chdir", "/workspace", "--setenv", "HTTPS_PROXY", "http://127.0.0.1:3128", "--", "sh"]


def test_skills_are_bound_at_the_mount_dir_and_nested_userns_follows_the_host() -> None:
    argv = bwrap_argv(plan(skills_source="/stage/skills", disable_userns=False), ["x"])
    at = argv.index("/stage/skills")
    assert argv[at - 1:at + 2] == ["--bind", "/stage/skills", "/workspace/.claude/skills"]
    assert "--disable-userns" not in argv


def test_the_host_layout_is_read_from_the_root(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "lib64").mkdir()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tmp_path / "etc" / "shadow").write_text("secret")
    layout = HostLayout.read(tmp_path)
    assert layout == HostLayout(links=(("bin", "usr/bin"),), folders=("lib64",), etc=("passwd",))
