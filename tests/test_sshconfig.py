"""Resolution of hops through an OpenSSH client config (files on disk, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from jupyter_tunnel.errors import ConfigError
from jupyter_tunnel.spec import Hop
from jupyter_tunnel.sshconfig import SSHConfig, resolve_chain


@pytest.fixture
def config(tmp_path: Path) -> SSHConfig:
    (tmp_path / "extra.conf").write_text("Host gate\n  HostName gate.example.org\n  Port 2022\n")
    (tmp_path / "config").write_text(
        f"""
Include {tmp_path}/extra.conf
Host beast
    HostName 10.0.0.7
    User beastuser
    IdentityFile ~/.ssh/beast_key
    IdentityFile %d/.ssh/other_%r
    IdentitiesOnly yes
    ProxyJump unicorn
    ServerAliveInterval 5
    ServerAliveCountMax 2
    ConnectTimeout 7
    UserKnownHostsFile {tmp_path}/kh1 {tmp_path}/kh2
    StrictHostKeyChecking accept-new
Host unicorn
    HostName=unicorn.example.org
    User jumper
Host noproxy
    HostName 10.0.0.8
    ProxyJump none
Host weird
    ProxyCommand nc %h %p
Host loop1
    ProxyJump loop2
Host loop2
    ProxyJump loop1
Host *.example.org !gate.example.org
    Port 2200
Host *
    User fallback
    Port 22
"""
    )
    return SSHConfig(tmp_path / "config")


def test_alias_resolves_every_option(config: SSHConfig, tmp_path: Path) -> None:
    chain = resolve_chain(Hop("beast"), (), config)
    assert [h.alias for h in chain] == ["unicorn", "beast"]
    beast = chain[-1]
    home = str(Path.home())
    assert (beast.hostname, beast.port, beast.user) == ("10.0.0.7", 22, "beastuser")
    assert beast.identity_files == (f"{home}/.ssh/beast_key", f"{home}/.ssh/other_beastuser")
    assert beast.identities_only is True
    assert beast.known_hosts_files == (f"{tmp_path}/kh1", f"{tmp_path}/kh2")
    assert beast.strict_host_key_checking == "accept-new"
    assert (beast.server_alive_interval, beast.server_alive_count_max) == (5, 2)
    assert beast.connect_timeout == 7.0
    assert beast.label == "beast (10.0.0.7:22)"
    unicorn = chain[0]
    assert (unicorn.hostname, unicorn.user, unicorn.port) == ("unicorn.example.org", "jumper", 22)
    assert unicorn.strict_host_key_checking == "yes"  # default "ask" is read as "yes"


def test_explicit_via_replaces_proxyjump_and_command_line_wins(config: SSHConfig) -> None:
    chain = resolve_chain(Hop("beast", "root", 2222), (Hop("gate"),), config)
    assert [h.alias for h in chain] == ["gate", "beast"]
    assert (chain[0].hostname, chain[0].port) == ("gate.example.org", 2022)
    assert (chain[1].user, chain[1].port) == ("root", 2222)


def test_first_match_wins_and_negation(config: SSHConfig) -> None:
    chain = resolve_chain(Hop("www.example.org"), (), config)
    assert (chain[0].port, chain[0].user) == (2200, "fallback")
    assert resolve_chain(Hop("noproxy"), (), config)[0].hostname == "10.0.0.8"


def test_unknown_alias_uses_defaults(config: SSHConfig) -> None:
    hop = resolve_chain(Hop("plainhost"), (), config)[0]
    assert (hop.hostname, hop.port, hop.user) == ("plainhost", 22, "fallback")
    assert hop.known_hosts_name == "plainhost"
    assert resolve_chain(Hop("plainhost", port=2222), (), config)[0].known_hosts_name == \
        "[plainhost]:2222"


def test_proxycommand_and_loops_are_refused(config: SSHConfig) -> None:
    with pytest.raises(ConfigError, match="ProxyCommand"):
        resolve_chain(Hop("weird"), (), config)
    with pytest.raises(ConfigError, match="loop"):
        resolve_chain(Hop("loop1"), (), config)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        SSHConfig(tmp_path / "nope")


def test_bad_values_are_errors(tmp_path: Path) -> None:
    (tmp_path / "c").write_text("Host x\n Port abc\nHost y\n HostName a;b\n")
    cfg = SSHConfig(tmp_path / "c")
    with pytest.raises(ConfigError, match="Port for x"):
        resolve_chain(Hop("x"), (), cfg)
    with pytest.raises(ConfigError, match="invalid host name"):
        resolve_chain(Hop("y"), (), cfg)


def test_hosts_lists_plain_aliases(config: SSHConfig) -> None:
    assert config.hosts() == ["gate", "beast", "unicorn", "noproxy", "weird", "loop1", "loop2"]


def test_keyword_equals_comments_match_and_tokens(tmp_path: Path) -> None:
    (tmp_path / "c").write_text(
        "Host alpha\n"
        "  User = ann\n"
        "  IdentityFile ~/.ssh/my#key  # a comment\n"
        "  HostKeyAlias alpha-key\n"
        "  UserKnownHostsFile ~/.ssh/known_hosts.d/%k\n"
        "Match originalhost beta user bob\n"
        "  Port 2022\n"
        "Match host 10.9.*\n"
        "  User matched\n"
        "Match exec \"touch /tmp/jt-should-not-run\"\n"
        "  Port 1\n"
        "Host gamma\n"
        "  HostName 10.9.0.1\n"
    )
    cfg = SSHConfig(tmp_path / "c")
    alpha = resolve_chain(Hop("alpha"), (), cfg)[0]
    assert alpha.user == "ann"
    assert alpha.identity_files[0] == f"{Path.home()}/.ssh/my#key"
    assert alpha.known_hosts_name == "alpha-key"
    assert alpha.known_hosts_files == (f"{Path.home()}/.ssh/known_hosts.d/alpha-key",)
    assert resolve_chain(Hop("beta", "bob"), (), cfg)[0].port == 2022
    assert resolve_chain(Hop("beta", "eve"), (), cfg)[0].port == 22
    # Match host sees the HostName set so far; gamma's comes after, so it is not matched here
    assert resolve_chain(Hop("10.9.0.5"), (), cfg)[0].user == "matched"
    assert not Path("/tmp/jt-should-not-run").exists()


def test_hosts_follow_include(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "gpu").write_text("Host gpu7 gpu8\n  HostName 10.0.0.7\nHost *.x\n")
    cfg = tmp_path / "config"
    cfg.write_text("Host beast\n  HostName b\nInclude conf.d/*\nHost unicorn\n")
    assert SSHConfig(str(cfg)).hosts() == ["beast", "gpu7", "gpu8", "unicorn"]
