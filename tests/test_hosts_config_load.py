"""hosts.yaml: valid files resolve as documented; broken ones are refused with one line per problem."""
from __future__ import annotations

import getpass
import sys
from pathlib import Path

import pytest

from mcp_server.fleet.hosts_config import HostsConfigError, load_hosts


REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "hosts.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def no_ssh_config(tmp_path: Path) -> Path:
    return write(tmp_path, "", "empty_ssh_config")


def refusal(tmp_path: Path, text: str, **kw) -> list[str]:
    with pytest.raises(HostsConfigError) as info:
        load_hosts(write(tmp_path, text), **kw)
    assert str(info.value).splitlines() == info.value.problems
    return info.value.problems


def test_default_hosts_file_is_one_local_host():
    hf = load_hosts(REPO / "hosts.yaml")
    assert hf.names == ["local"]
    local = hf.get("local")
    assert local.transport == "local"
    assert local.python == sys.executable
    assert local.workdir == str(Path("~/.arc").expanduser())


def test_defaults_apply_and_host_values_win(tmp_path):
    hf = load_hosts(write(tmp_path, """
defaults:
  user: ubuntu
  port: 2222
  labels: [fleet]
  identity_file: keys/id
hosts:
  - {name: a, address: 10.0.0.1}
  - {name: b, address: 10.0.0.2, port: 22, labels: [fast], gpus: [0, 2], cost_per_gpu_hour: 2.5}
  - {name: here, transport: local, cpu_slots: 3, simulate_gpus: [{model: H100, memory_gb: 80}], preload: [json]}
"""), ssh_config_path=no_ssh_config(tmp_path))
    a, b, here = hf.get("a"), hf.get("b"), hf.get("here")
    assert (a.user, a.port, a.labels, a.identity_file) == ("ubuntu", 2222, ("fleet",), (str(tmp_path / "keys/id"),))
    assert (b.port, b.labels, b.gpus, b.cost_per_gpu_hour) == (22, ("fast",), (0, 2), 2.5)
    assert a.known_hosts == str(Path("~/.ssh/known_hosts").expanduser())
    assert (a.host_key_policy, a.workdir, a.python, a.gpus) == ("verify", "~/.arc", "python3", "all")
    # ssh-only defaults do not leak into a local host, and its agent config is what the agent reads
    assert here.user is None and here.port == 22
    assert here.agent_config() == {"gpus": "all", "simulate_gpus": [{"model": "H100", "memory_gb": 80.0}],
                                   "cpu_slots": 3, "preload": ["json"]}
    assert a.agent_config()["preload"] is None          # the agent's own default


def test_ssh_config_fills_what_the_file_leaves_out(tmp_path):
    write(tmp_path, """
Host gpu-alias
  HostName 192.0.2.7
  User alice
  Port 2200
  IdentityFile ~/.ssh/alice_key
  ProxyJump bastion
Host bastion
  HostName 192.0.2.1
  User jumper
""", "ssh_config")
    hf = load_hosts(write(tmp_path, """
ssh_config: ssh_config
hosts:
  - name: gpu-alias
  - {name: other, address: gpu-alias, user: bob}
"""))
    g, o = hf.get("gpu-alias"), hf.get("other")
    assert (g.address, g.user, g.port, g.proxy_jump) == ("192.0.2.7", "alice", 2200, "bastion")
    assert g.identity_file == (str(Path("~/.ssh/alice_key").expanduser()),)
    assert (o.address, o.user, o.port) == ("192.0.2.7", "bob", 2200)   # the file's own value wins
    route = hf.ssh_route("gpu-alias")
    assert [(h.hostname, h.user, h.port) for h in route] == [("192.0.2.1", "jumper", 22), ("192.0.2.7", "alice", 2200)]
    # the injected path beats the file's ssh_config key
    with pytest.raises(HostsConfigError, match="host 'gpu-alias' field 'address': required for ssh hosts"):
        load_hosts(hf.path, ssh_config_path=write(tmp_path, "Host unrelated\n  User x\n", "empty_config"))


def test_user_defaults_to_the_local_user(tmp_path):
    hf = load_hosts(write(tmp_path, "hosts: [{name: a, address: 10.0.0.1}]"), ssh_config_path=no_ssh_config(tmp_path))
    assert hf.get("a").user == getpass.getuser()


def test_proxy_jump_through_a_listed_host(tmp_path):
    hf = load_hosts(write(tmp_path, """
hosts:
  - {name: bastion, address: 198.51.100.1, user: j, port: 2022, identity_file: /k/j}
  - {name: inner, address: 10.1.0.5, user: root, proxy_jump: bastion}
  - {name: direct, address: 10.1.0.6, proxy_jump: "op@203.0.113.9:23"}
"""), ssh_config_path=no_ssh_config(tmp_path))
    route = hf.ssh_route("inner")
    assert [(h.label, h.hostname, h.port, h.user, h.identity_files) for h in route] == [
        ("jump host 'bastion'", "198.51.100.1", 2022, "j", ("/k/j",)),
        ("host 'inner'", "10.1.0.5", 22, "root", ())]
    assert [(h.hostname, h.port, h.user) for h in hf.ssh_route("direct")][0] == ("203.0.113.9", 23, "op")


@pytest.mark.parametrize("text, expected", [
    ("hosts:\n  - name: gpu3\n    address: 10.0.0.3\n    port: abc\n",
     ["hosts.yaml:4: host 'gpu3' field 'port': must be an integer 1-65535 (got 'abc'); fix: port: 22"]),
    ("hosts:\n  - name: gpu3\n    address: 10.0.0.3\n    prot: 22\n",
     ["hosts.yaml:4: host 'gpu3' field 'prot': unknown field; fix: remove it (did you mean 'port'?)"]),
    ("hosts:\n  - {name: a, transport: local}\n  - {name: a, transport: local}\n",
     ["hosts.yaml:3: host 'a' field 'name': duplicate host name (host entry 1 has it too); fix: rename one, "
      "e.g. name: a-2"]),
    ("hosts:\n  - name: gpu4\n    user: root\n",
     ["hosts.yaml:2: host 'gpu4' field 'address': required for ssh hosts (no 'Host gpu4' entry in {cfg}); "
      "fix: address: <host name or IP of gpu4>, or transport: local for this machine"]),
    ("hosts:\n  - name: a\n    transport: local\n    gpus: some\n    cpu_slots: -1\n    labels: [x, 3]\n",
     ["hosts.yaml:4: host 'a' field 'gpus': must be 'all' or a list of distinct GPU indices >= 0 (got 'some'); "
      "fix: gpus: all",
      "hosts.yaml:5: host 'a' field 'cpu_slots': must be an integer >= 0 (got -1); fix: cpu_slots: 4",
      "hosts.yaml:6: host 'a' field 'labels[1]': must be a list of strings (got 3); fix: labels: [h100, fast]"]),
    ("hosts:\n  - name: a\n    transport: local\n    preload: [torch, torch-compile]\n",
     ["hosts.yaml:4: host 'a' field 'preload[1]': must be a list of Python module names to import ahead of each "
      "Python job ([] turns it off) (got 'torch-compile'); fix: preload: [torch, torch._dynamo, "
      "torch._inductor.compile_fx]"]),
    ("hosts:\n  - name: a\n    transport: local\n    simulate_gpus: [{model: H100, memory_gb: 0}]\n",
     ["hosts.yaml:4: host 'a' field 'simulate_gpus[0].memory_gb': must be a number > 0 (got 0); fix: memory_gb: 80"]),
    ("hosts:\n  - name: a\n    transport: local\n    address: 10.0.0.1\n",
     ["hosts.yaml:4: host 'a' field 'address': only applies to ssh hosts; fix: remove 'address' or set "
      "transport: ssh"]),
    ("hosts:\n  - name: a\n    transport: local\n    workdir: /x\n    workdir: /y\n",
     ["hosts.yaml:5: host 'a' field 'workdir': given twice in one entry (YAML keeps only the last); "
      "fix: keep one 'workdir:' line"]),
    ("defaults:\n  transprot: ssh\nhosts:\n  - {name: a, transport: local}\n",
     ["hosts.yaml:2: defaults field 'transprot': unknown field; fix: remove it (did you mean 'transport'?)"]),
    ("hosts: []\n", ["hosts.yaml:1: field 'hosts': missing or empty; fix: hosts: [{name: local, transport: local}]"]),
    ("host:\n  - {name: a, transport: local}\n",
     ["hosts.yaml:1: field 'host': unknown top-level key; fix: remove it (did you mean 'hosts'?) (allowed: hosts, "
      "clusters, defaults, ssh_config)",
      "hosts.yaml: field 'hosts': missing or empty; fix: hosts: [{name: local, transport: local}]"]),
    ("hosts:\n  - {name: 'bad name!', transport: local}\n",
     ["hosts.yaml:2: host 'bad name!' field 'name': must be 1-64 letters, digits, '.', '_' or '-', starting with "
      "a letter or digit (got 'bad name!'); fix: name: gpu1"]),
    ("hosts:\n  - {name: a, address: h, host_key_policy: yolo}\n",
     ["hosts.yaml:2: host 'a' field 'host_key_policy': must be 'verify' or 'trust-on-first-use' (got 'yolo'); "
      "fix: host_key_policy: verify"]),
    ("hosts:\n  - {name: a, address: h, proxy_jump: b}\n  - {name: b, address: h, proxy_jump: a}\n",
     ["hosts.yaml:2: host 'a' field 'proxy_jump': proxy_jump loop: a -> b -> a; fix: point proxy_jump at a "
      "reachable jump host without a loop, or remove it",
      "hosts.yaml:3: host 'b' field 'proxy_jump': proxy_jump loop: b -> a -> b; fix: point proxy_jump at a "
      "reachable jump host without a loop, or remove it"]),
])
def test_malformed_file_is_refused_with_one_line_per_problem(tmp_path, monkeypatch, text, expected):
    monkeypatch.chdir(tmp_path)
    cfg = write(tmp_path, "Host elsewhere\n  User x\n", "ssh_config")
    problems = refusal(Path("."), text, ssh_config_path=cfg)
    assert problems == [line.replace("{cfg}", str(cfg)) for line in expected]


def test_yaml_syntax_error_names_the_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    problems = refusal(Path("."), "hosts:\n  - name: a\n   transport: local\n")
    assert len(problems) == 1
    assert problems[0].startswith("hosts.yaml:3:4: YAML syntax error: expected <block end>")
    assert "fix: correct the YAML at that line" in problems[0]


def test_missing_file_says_how_to_create_one(tmp_path):
    with pytest.raises(HostsConfigError, match=r"cannot read the hosts file.*fix: create it"):
        load_hosts(tmp_path / "nope.yaml")


def test_every_problem_is_reported_at_once(tmp_path):
    problems = refusal(tmp_path, """
hosts:
  - {name: a, address: x, port: 0}
  - {name: b, address: y, port: 70000, colour: red}
  - {name: c, transport: teleport}
""", ssh_config_path=no_ssh_config(tmp_path))
    assert [p.split(": ", 2)[1] for p in problems] == [
        "host 'a' field 'port'", "host 'b' field 'port'", "host 'b' field 'colour'", "host 'c' field 'transport'"]
