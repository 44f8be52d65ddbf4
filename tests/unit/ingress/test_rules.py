"""Ingress engine cases beyond the recorded conformance set (facts from cloudflared's source)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from burrow.errors import ConfigError
from burrow.ingress.config import (
    AccessConfig,
    OriginRequest,
    format_duration,
    load_config_file,
    parse_config_text,
    parse_duration,
)
from burrow.ingress.rules import (
    BastionService,
    HelloWorldService,
    HTTPService,
    Ingress,
    SocksProxyService,
    StatusService,
    StreamService,
    UnixService,
    split_host_port,
)
from burrow.ingress.validate import rule_command, validate_command


def _ingress(text: str) -> Ingress:
    conf = parse_config_text(text, "t.yml")
    return Ingress.parse(conf.ingress, conf.origin_request)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("1m30s", 90),
        ("100ms", 0.1),
        ("1.5h", 5400),
        ("0", 0),
        ("-2s", -2),
        ("1h2m3s4ms", 3723.004),
        (".5s", 0.5),
        ("10us", 1e-5),
        ("10\u00b5s", 1e-5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10", 'time: missing unit in duration "10"'),
        ("", 'time: invalid duration ""'),
        ("10x", 'time: unknown unit "x" in duration "10x"'),
        ("s", 'time: invalid duration "s"'),
    ],
)
def test_parse_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (90, 30, 0.1, 0, 3600, 3723.5)] == [
        "1m30s",
        "30s",
        "100ms",
        "0s",
        "1h0m0s",
        "1h2m3.5s",
    ]


def test_bare_integer_duration_is_cloudflareds_yaml_error() -> None:
    text = "originRequest:\n  connectTimeout: 10\ningress:\n  - service: http_status:404\n"
    with pytest.raises(ConfigError) as info:
        parse_config_text(text, "/x/config.yml")
    assert str(info.value) == (
        "error parsing YAML in config file at /x/config.yml: yaml: unmarshal errors:\n"
        "  line 2: cannot unmarshal !!int `10` into time.Duration"
    )


def test_bad_duration_string_and_long_values_are_truncated() -> None:
    text = "ingress:\n  - service: x://y\n    originRequest:\n      tlsTimeout: forever-and-ever\n"
    with pytest.raises(ConfigError, match=r"line 4: cannot unmarshal !!str `forever...` into time"):
        parse_config_text(text, "c")


def test_defaults() -> None:
    ing = _ingress("ingress:\n  - service: http://localhost:80\n")
    o = ing.rules[0].origin_request
    assert o == OriginRequest()
    assert (o.connect_timeout, o.tls_timeout, o.tcp_keep_alive, o.keep_alive_timeout) == (
        30,
        10,
        30,
        90,
    )
    assert (o.keep_alive_connections, o.proxy_address, o.proxy_port, o.proxy_type) == (
        100,
        "127.0.0.1",
        0,
        "",
    )
    assert o.access == AccessConfig() and o.ip_rules == ()


def test_origin_request_merging() -> None:
    ing = _ingress(
        "originRequest:\n  connectTimeout: 5s\n  noTLSVerify: true\n  httpHostHeader: top\n"
        "ingress:\n"
        "  - hostname: a.example.com\n    service: https://localhost:1\n"
        "    originRequest:\n      connectTimeout: 1m\n      noTLSVerify: false\n"
        "      keepAliveConnections: 7\n      matchSNItoHost: yes\n"
        "  - service: http_status:404\n"
    )
    a, b = ing.rules
    assert (a.origin_request.connect_timeout, a.origin_request.no_tls_verify) == (60, False)
    assert a.origin_request.keep_alive_connections == 7 and a.origin_request.match_sni_to_host
    assert a.origin_request.http_host_header == "top"
    assert (b.origin_request.connect_timeout, b.origin_request.no_tls_verify) == (5, True)
    assert ing.defaults.connect_timeout == 5


def test_access_and_ip_rules() -> None:
    ing = _ingress(
        "ingress:\n  - hostname: a.x\n    service: socks-proxy\n    originRequest:\n"
        "      ipRules:\n        - prefix: 10.1.2.3/8\n          ports: [443, 80]\n"
        "          allow: true\n"
        "      access:\n        required: true\n        teamName: t\n        audTag: [aud1]\n"
        "  - service: http_status:404\n"
    )
    svc = ing.rules[0].service
    assert isinstance(svc, SocksProxyService)
    assert str(svc.ip_rules[0].prefix) == "10.0.0.0/8" and svc.ip_rules[0].ports == (80, 443)
    assert ing.rules[0].origin_request.access == AccessConfig(True, "t", ("aud1",))
    with pytest.raises(ConfigError, match=r"access.TeamName cannot be blank"):
        _ingress(
            "ingress:\n  - service: http://h\n    originRequest:\n      access:\n"
            "        required: true\n        audTag: [a]\n"
        )
    with pytest.raises(ConfigError, match="unable to create ip rule for socks-proxy: unable to"):
        _ingress(
            "ingress:\n  - service: socks-proxy\n    originRequest:\n"
            "      ipRules:\n        - prefix: nonsense\n"
        )


def test_services_of_every_kind() -> None:
    ing = _ingress(
        "ingress:\n"
        "  - {hostname: a.x, service: 'HTTP://127.0.0.1'}\n"
        "  - {hostname: b.x, service: 'wss://[::1]:9'}\n"
        "  - {hostname: c.x, service: 'ssh://h'}\n"
        "  - {hostname: d.x, service: 'rdp://h'}\n"
        "  - {hostname: e.x, service: 'smb://h:1'}\n"
        "  - {hostname: f.x, service: 'tcp://h'}\n"
        "  - {hostname: g.x, service: 'ftp://h'}\n"
        "  - {hostname: h.x, service: 'unix:/s'}\n"
        "  - {hostname: i.x, service: 'unix+tls:/s'}\n"
        "  - {hostname: j.x, service: 'hello-world'}\n"
        "  - {hostname: k.x, service: 'http://h', originRequest: {bastionMode: true}}\n"
        "  - {hostname: l.x, service: 'http_status:+201'}\n"
        "  - service: bastion\n"
    )
    got = [r.service for r in ing.rules]
    assert got == [
        HTTPService("http://127.0.0.1", "http", "127.0.0.1", 80),
        HTTPService("wss://[::1]:9", "wss", "::1", 9),
        StreamService("ssh", "h", 22),
        StreamService("rdp", "h", 3389),
        StreamService("smb", "h", 1),
        StreamService("tcp", "h", 7864),
        StreamService("ftp", "h", None),
        UnixService("/s", False),
        UnixService("/s", True),
        HelloWorldService(),
        BastionService(),
        StatusService(201),
        BastionService(),
    ]
    assert (
        str(got[1]) == "wss://[::1]:9" and str(got[6]) == "ftp://h" and str(got[8]) == "unix+tls:/s"
    )
    assert ing.rules[-1].origin_request.bastion_mode


@pytest.mark.parametrize(
    ("service", "message"),
    [
        (
            "127.0.0.1:8000",
            'parse "127.0.0.1:8000": first path segment in URL cannot contain colon',
        ),
        ("http://h:xx", 'parse "http://h:xx": invalid port ":xx" after host'),
        ("http_status:", 'invalid HTTP status code: strconv.Atoi: parsing "": invalid syntax'),
        ("http_status:1000", "invalid HTTP status code: 1000"),
        ("", " is an invalid address, please make sure it has a scheme and a hostname"),
        ("http://h?x=1#f", None),
    ],
)
def test_service_errors(service: str, message: str | None) -> None:
    text = f"ingress:\n  - service: '{service}'\n"
    if message is None:
        _ingress(text)
        return
    with pytest.raises(ConfigError) as info:
        _ingress(text)
    assert str(info.value) == message


def test_wildcards_ports_case_and_idn() -> None:
    ing = _ingress(
        "ingress:\n"
        "  - hostname: '*.Example.com'\n    path: ^/w\n    service: http://h:1\n"
        "  - hostname: API.example.com\n    service: http://h:2\n"
        "  - hostname: '*.example.com'\n    service: http://h:3\n"
        "  - hostname: '*.bücher.example'\n    service: http://h:4\n"
        "  - hostname: 'münchen.example'\n    service: http://h:5\n"
        "  - hostname: '*'\n    path: /only\n    service: http://h:6\n"
        "  - service: http_status:404\n"
    )
    m = ing.match
    assert m("x.y.example.com", "/w")[0] == 0
    assert m("api.example.com", "/w")[0] == 0  # the earlier wildcard wins, order is kept
    assert m("API.EXAMPLE.COM:443", "/z")[0] == 1
    assert m("other.example.com", "/z")[0] == 2
    assert m("example.com", "/w")[0] == 6
    assert m("a.bücher.example", "/")[0] == 3
    # cloudflared gives no punycode form to wildcard IDN patterns ('*' fails IDNA)
    assert m("a.xn--bcher-kva.example", "/")[0] == 6
    assert m("xn--mnchen-3ya.example", "/")[0] == 4 and m("MÜNCHEN.example", "/")[0] == 4
    assert m("[::1]:80", "/only/x")[0] == 5
    assert m("anything", "/?only")[0] == 6
    assert ing.rules[4].punycode_hostname == "xn--mnchen-3ya.example"


def test_match_agrees_with_rule_matches() -> None:
    ing = _ingress(
        "ingress:\n"
        "  - {hostname: a.x, path: ^/a, service: 'http://h'}\n"
        "  - {hostname: '*.x', service: 'http://h'}\n"
        "  - {path: '\\.png$', service: 'http://h'}\n"
        "  - {hostname: a.x, service: 'http://h'}\n"
        "  - service: http_status:404\n"
    )
    for host in ("a.x", "b.a.x", "x", "z"):
        for path in ("/a", "/b.png", "/"):
            expected = next(r.index for r in ing.rules if r.matches(host, path))
            assert ing.match(host, path)[0] == expected


def test_hostname_validation() -> None:
    with pytest.raises(ConfigError, match=r"^Hostname cannot contain a port$"):
        _ingress("ingress:\n  - {hostname: '[::1]:80', service: 'http://h'}\n  - service: x://y\n")
    _ingress("ingress:\n  - {hostname: '*example.com', service: 'http://h'}\n  - service: x://y\n")
    with pytest.raises(ConfigError, match="Rule #1 is matching the hostname '\\*'"):
        _ingress("ingress:\n  - {hostname: '*', service: 'http://h'}\n  - service: x://y\n")
    with pytest.raises(
        ConfigError,
        match=r"Rule #1 has an invalid regex: error parsing regexp: "
        r"missing closing \): `\(a`",
    ):
        _ingress("ingress:\n  - {path: '(a', service: 'http://h'}\n  - service: x://y\n")
    assert split_host_port("a:b:c") is None and split_host_port("h:") == ("h", "")


def test_plain_data_and_single() -> None:
    ing = Ingress.parse(
        [{"hostname": "a.x", "service": "http://h:1"}, {"service": "http_status:404"}],
        {"connectTimeout": "2s"},
    )
    assert ing.rules[0].origin_request.connect_timeout == 2
    assert ing.match("a.x", "/")[0] == 0
    with pytest.raises(ConfigError, match=r"cannot unmarshal !!int `5` into time.Duration"):
        Ingress.parse([{"service": "http_status:404"}], {"tlsTimeout": 5})
    assert Ingress.single("localhost:8080").rules[0].service == HTTPService(
        "http://localhost:8080", "http", "localhost", 8080
    )
    assert Ingress.single("ssh://h").rules[0].service == StreamService("ssh", "h", 22)
    assert Ingress.single("127.0.0.1").rules[0].service == HTTPService(
        "http://127.0.0.1", "http", "127.0.0.1", 80
    )
    assert Ingress.single(hello_world=True).match("x", "/")[1].service == HelloWorldService()
    assert Ingress.single().rules[0].service == StatusService(503)
    with pytest.raises(ConfigError, match="does not support ws protocol"):
        Ingress.single("ws://h")
    with pytest.raises(ConfigError, match="doesn't contain any ingress rules"):
        Ingress.parse([])


def test_yaml_semantics() -> None:
    conf = parse_config_text(
        "ingress:\n  - hostname: yes.example\n    service: http_status:404\n    bogus: 1\n", "c"
    )
    assert conf.ingress[0].hostname == "yes.example"
    assert conf.warnings == (
        "yaml: unmarshal errors:\n  line 4: field bogus not found in type "
        "config.UnvalidatedIngressRule"
    )
    with pytest.raises(ConfigError, match='mapping key "service" already defined at line 2'):
        parse_config_text("ingress:\n  - service: a\n    service: b\n", "c")
    with pytest.raises(
        ConfigError,
        match="cannot unmarshal !!str `x` into "
        r"\[\]config.UnvalidatedIngressRule",
    ):
        parse_config_text("ingress: x\n", "c")
    with pytest.raises(ConfigError, match=r"^error parsing YAML in config file at c: yaml: line"):
        parse_config_text("ingress:\n  - service: [\n", "c")
    assert parse_config_text("", "c").source == ""
    assert parse_config_text("tunnel: abc\n", "c").raw == {"tunnel": "abc"}


def test_files_and_commands(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^open {tmp_path}/nope.yml: no such file or directory$"):
        load_config_file(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "ingress:\n  - hostname: a.x\n    service: http://h\n    extra: 1\n"
        "  - service: http_status:404\n"
    )
    res = validate_command(str(bad))
    assert res.exit_code == 0 and "Warning: unused keys detected" in res.stdout
    res = rule_command(str(bad), "a.x/y")
    assert res.error == "a.x/y doesn't have a hostname, consider adding a scheme"
    res = rule_command(str(bad), "https://a.x/y")
    assert res.stdout.endswith("Matched rule #0\n\thostname: a.x\n\tservice: http://h\n")
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    assert validate_command(str(empty)).error.startswith("No configuration file was found")  # type: ignore[union-attr]


def test_cli_errors(tmp_path: Path) -> None:
    from burrow.cli.main import _register_commands, app

    _register_commands()
    res = CliRunner().invoke(
        app, ["tunnel", "ingress", "validate", "--config", str(tmp_path / "x")]
    )
    assert res.exit_code == 1
    assert res.stderr == f"open {tmp_path / 'x'}: no such file or directory\n"
    if (tmp_path / "unreadable").exists():
        return
    unreadable = tmp_path / "unreadable.yml"
    unreadable.write_text("ingress: []\n")
    unreadable.chmod(0)
    res = CliRunner().invoke(app, ["tunnel", "ingress", "validate", "--config", str(unreadable)])
    assert res.exit_code == 1
