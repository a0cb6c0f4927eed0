"""vagrant/Vagrantfile is valid Ruby that provisions with the README's set-up
and runs the README's test command, on the public Debian box or on the local
box that vagrant/box/build makes (which reaches the host only through QEMU's
user-mode network and a loopback SSH forward); the systemd unit reloads with
SIGHUP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
RECORDER = REPO / "tests" / "support" / "vagrantfile_recorder.rb"
LOCAL_BOX = "smtp-sensor/debian12"


def ruby_or_skip() -> str:
    ruby = shutil.which("ruby")
    if ruby is None:
        if IN_CI:
            pytest.fail("ruby is missing (./run setup installs vagrant, which brings it)")
        pytest.skip("ruby is missing")
    return ruby


def vagrantfile_settings(tmp_path: Path, **env: str) -> dict[tuple[str, ...], list]:
    """The settings the Vagrantfile makes with these environment variables
    (and an empty VAGRANT_HOME under tmp_path unless given): path -> the
    arguments of each time it is set, in order."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_SENSOR_")}
    base["VAGRANT_HOME"] = str(tmp_path / "vagrant.d")
    result = subprocess.run([ruby_or_skip(), str(RECORDER), str(REPO / "vagrant" / "Vagrantfile")],
                            capture_output=True, text=True, timeout=60, env={**base, **env})
    assert result.returncode == 0, result.stderr
    settings: dict[tuple[str, ...], list] = {}
    for line in result.stdout.splitlines():
        entry = json.loads(line)
        settings.setdefault(tuple(entry["path"]), []).append(entry["args"])
    return settings


def add_fake_local_box(vagrant_home: Path) -> None:
    (vagrant_home / "boxes" / LOCAL_BOX.replace("/", "-VAGRANTSLASH-")).mkdir(parents=True)


def test_vagrantfile_is_valid_ruby():
    result = subprocess.run([ruby_or_skip(), "-c", str(REPO / "vagrant" / "Vagrantfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "Syntax OK" in result.stdout, result.stderr


@pytest.mark.parametrize("box", ["public", "local"])
def test_vagrant_validates_the_vagrantfile(tmp_path, box):
    if shutil.which("vagrant") is None:
        if IN_CI:
            pytest.fail("vagrant is missing (./run setup installs Debian's package)")
        pytest.skip("vagrant is missing")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_SENSOR_")}
    env.update(VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_HOME=str(tmp_path / "vagrant.d"))
    if box == "local":
        env["SMTP_SENSOR_BOX"] = LOCAL_BOX
    # --ignore-provider: no VirtualBox/libvirt on a CI machine; the rest is checked
    result = subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=REPO / "vagrant",
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0 and "validated successfully" in result.stdout, result.stdout + result.stderr


def test_vagrantfile_provisions_with_the_readme_commands(tmp_path):
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "./run tests" in readme and "./run tests" in ci
    provisions = vagrantfile_settings(tmp_path)[("vm", "provision")]
    assert [name for name, _ in provisions] == ["setup", "tests"]
    assert all(options["privileged"] and options["type"] == "shell" for _, options in provisions)
    assert provisions[0][1]["inline"] == "cd /smtp-sensor && ./run setup"
    assert provisions[1][1]["inline"] == "cd /smtp-sensor && CI=true ./run tests"


def test_the_test_arguments_reach_the_test_command_and_tests_can_be_left_out(tmp_path):
    chosen = vagrantfile_settings(tmp_path, SMTP_SENSOR_TEST_ARGS="-m 'unit or offline' ")
    assert chosen[("vm", "provision")][1][1]["inline"] == "cd /smtp-sensor && CI=true ./run tests -m 'unit or offline'"
    without = vagrantfile_settings(tmp_path, SMTP_SENSOR_TESTS="0")
    assert [name for name, _ in without[("vm", "provision")]] == ["setup"]


def test_the_public_debian_box_is_the_default_until_the_local_box_is_added(tmp_path):
    public = vagrantfile_settings(tmp_path)
    assert public[("vm", "box=")] == [["debian/bookworm64"]]
    # the public box keeps the providers' own networking: no SSH override, no QEMU arguments
    assert ("ssh", "port=") not in public and ("vm", "provider", "libvirt", "qemuargs") not in public
    for provider in ("virtualbox", "libvirt"):
        assert public[("vm", "provider", provider, "cpus=")] == [[2]]
        assert public[("vm", "provider", provider, "memory=")] == [[4096]]
    sized = vagrantfile_settings(tmp_path, SMTP_SENSOR_CPUS="4", SMTP_SENSOR_MEMORY="8192")
    assert sized[("vm", "provider", "virtualbox", "cpus=")] == [[4]]
    assert sized[("vm", "provider", "libvirt", "memory=")] == [[8192]]
    add_fake_local_box(tmp_path / "vagrant.d")
    assert vagrantfile_settings(tmp_path)[("vm", "box=")] == [[LOCAL_BOX]]
    assert vagrantfile_settings(tmp_path, SMTP_SENSOR_BOX="bento/ubuntu-24.04")[("vm", "box=")] == [["bento/ubuntu-24.04"]]


def test_the_local_box_reaches_the_host_only_by_user_mode_network_and_loopback_ssh(tmp_path):
    s = vagrantfile_settings(tmp_path, SMTP_SENSOR_BOX=LOCAL_BOX, SMTP_SENSOR_VM_SSH_PORT="40022")
    libvirt = ("vm", "provider", "libvirt")
    assert s[libvirt + ("mgmt_attach=",)] == [[False]]
    qemu_args = [args[0]["value"] for args in s[libvirt + ("qemuargs",)]]
    assert qemu_args[0] == "-netdev" and qemu_args[2] == "-device"
    assert qemu_args[1] == "user,id=smtpsensor0,hostfwd=tcp:127.0.0.1:40022-:22"
    assert qemu_args[3].startswith("virtio-net-pci,netdev=smtpsensor0,")
    assert s[("ssh", "host=")] == [["127.0.0.1"]] and s[("ssh", "port=")] == [[40022]]
    assert ("vm", "network") not in s  # no private or public network: no libvirt network, no bridge
    assert s[libvirt + ("graphics_type=",)] == [["none"]]
    folder, default_folder = s[("vm", "synced_folder")]
    assert folder[:2] == ["..", "/smtp-sensor"] and folder[2]["type"] == "rsync"
    assert {".git", ".venv/"} <= set(folder[2]["rsync__exclude"])
    assert default_folder == [".", "/vagrant", {"disabled": True}]  # the repository is copied once


@pytest.mark.parametrize("override", [None, "kvm", "qemu"])
def test_the_local_box_uses_kvm_only_with_hardware_virtualisation(tmp_path, override):
    env = {"SMTP_SENSOR_BOX": LOCAL_BOX}
    if override:
        env["SMTP_SENSOR_VM_DRIVER"] = override
    s = vagrantfile_settings(tmp_path, **env)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    hw_virt = Path("/dev/kvm").exists() and any(
        line.startswith("flags") and ({"vmx", "svm"} & set(line.split())) for line in cpuinfo.splitlines())
    expected = override or ("kvm" if hw_virt else "qemu")
    assert s[("vm", "provider", "libvirt", "driver=")] == [[expected]]
    assert (("vm", "provider", "libvirt", "cpu_mode=") in s) == (expected == "kvm")


def test_the_box_build_script_names_its_usage_and_parses():
    script = REPO / "vagrant" / "box" / "build"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    result = subprocess.run([str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "usage:" in result.stderr and result.stdout == ""


def test_run_names_vm_tests_and_the_docs_say_how_long_it_takes():
    result = subprocess.run([str(REPO / "run"), "help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "./run vm-tests" in result.stdout
    assert "./run vm-tests" in (REPO / "README.md").read_text()
    assert "./run vm-tests" in (REPO / "vagrant" / "README.md").read_text()
    assert "./run vm-tests" in (REPO / "docs" / "benchmarks.md").read_text()


def test_systemd_unit_reloads_with_sighup_and_states_capabilities():
    unit = (REPO / "deploy" / "smtp-sensor.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    for cap in ("CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"):
        assert cap in unit


def test_the_guest_gets_the_sources_and_not_the_hosts_build_products(tmp_path):
    """The synced folder's excludes, given to rsync as Vagrant gives them:
    the BPF C and the Python sources go in, the modules ./run setup compiled
    on the host (sensor/**.c, .so) stay out, for both boxes."""
    add_fake_local_box(tmp_path / "vagrant.d")
    for settings in (vagrantfile_settings(tmp_path), vagrantfile_settings(tmp_path, SMTP_SENSOR_BOX="debian/bookworm64")):
        folder = settings[("vm", "synced_folder")][0]
        excludes = [arg for pattern in folder[2]["rsync__exclude"] for arg in ("--exclude", pattern)]
        listed = subprocess.run(["rsync", "-a", "--dry-run", "--out-format=%n", *excludes, f"{REPO}/", str(tmp_path / "guest")],
                                capture_output=True, text=True, check=True).stdout.splitlines()
        assert {"bpf/datapath.c", "bpf/smtp_sensor.h", "sensor/pipeline.py", "sensor/inputs/split.py", "run"} <= set(listed)
        built = [name for name in listed if name.startswith("sensor/") and name.endswith((".c", ".so"))]
        assert built == [] and "sensor/_compiled.json" not in listed
        assert not any(name.startswith((".git/", ".venv/")) for name in listed)
