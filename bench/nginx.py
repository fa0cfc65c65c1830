"""nginx instances of the bench: the origin and the two proxy references.

Each instance has its own prefix directory, config, pid file and logs, runs in
the foreground (``daemon off``) with one worker, and listens on 127.0.0.1 only.
It is never the system's nginx service.
"""

from __future__ import annotations

import os
from pathlib import Path

from .procs import Proc, spawn

NGINX = "/usr/sbin/nginx"
BIG_SIZE = 1 << 20  # the streamed-response scenario: 1 MiB

_MAIN = """\
daemon off;
master_process on;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {dir}/tmp_body;
    proxy_temp_path {dir}/tmp_proxy;
    fastcgi_temp_path {dir}/tmp_fastcgi;
    uwsgi_temp_path {dir}/tmp_uwsgi;
    scgi_temp_path {dir}/tmp_scgi;
    keepalive_timeout 75s;
    keepalive_requests 10000000;
{body}
}}
"""

_ORIGIN = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /big {{ root {www}; default_type application/octet-stream; }}
        location / {{ return 200 "hello"; }}
    }}
"""

# The key check of the "nginx-map" reference: exact token -> 1, anything else 0.
# Large maps need a roomy hash (ngx_hash_init starts its search near max_size).
_MAP = """\
    map_hash_max_size 524288;
    map_hash_bucket_size 512;
    map $http_x_api_key $kg_allowed {{
        default 0;
        include {map_file};
    }}
"""

_PROXY = """\
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 128;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl} backlog=4096;
{tls}        location / {{
{check}            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-API-Key "";
            proxy_max_temp_file_size 0;
        }}
    }}
"""

_CHECK = "            if ($kg_allowed = 0) { return 401; }\n"

# The "nginx-authreq" system: docs/forward-auth.md's nginx recipe, with the
# bench's keep-alive settings, asking keygate's /_keygate/auth for each request.
_AUTHREQ = """\
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 128;
        keepalive_requests 10000000;
    }}
    upstream keygate {{
        server 127.0.0.1:{keygate};
        keepalive 128;
        keepalive_requests 10000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            auth_request /_keygate_auth;
            auth_request_set $kg_key_id $upstream_http_x_keygate_key_id;
            auth_request_set $kg_key_name $upstream_http_x_keygate_key_name;
            auth_request_set $kg_user $upstream_http_x_keygate_user;
            auth_request_set $kg_groups $upstream_http_x_keygate_groups;
            proxy_set_header X-Keygate-Key-Id $kg_key_id;
            proxy_set_header X-Keygate-Key-Name $kg_key_name;
            proxy_set_header X-Keygate-User $kg_user;
            proxy_set_header X-Keygate-Groups $kg_groups;
            proxy_set_header Authorization "";
            proxy_set_header X-API-Key "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
            proxy_pass http://origin;
        }}
        location = /_keygate_auth {{
            internal;
            proxy_pass http://keygate/_keygate/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Uri "";
            proxy_set_header X-Forwarded-Method "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""

# The "nginx-tls" reference: what keygate's TLS listener is set to (TLS 1.2+,
# ECDHE AEAD suites), session cache off as keygate has none.
_TLS = """\
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {ciphers};
        ssl_session_cache off;
"""


def write_big_file(www: Path) -> None:
    www.mkdir(parents=True, exist_ok=True)
    (www / "big").write_bytes(os.urandom(BIG_SIZE))
    # nginx workers run as "nobody" when started by root: let them read it.
    www.chmod(0o755)
    (www / "big").chmod(0o644)


def write_map_file(path: Path, tokens: list[str]) -> None:
    path.write_text("".join(f"{t} 1;\n" for t in tokens))


def _conf(dir_: Path, body: str, workers: int = 1) -> Path:
    dir_.mkdir(parents=True, exist_ok=True)
    dir_.chmod(0o755)
    conf = dir_ / "nginx.conf"
    conf.write_text(_MAIN.format(dir=dir_, body=body, workers=workers))
    return conf


def origin_conf(dir_: Path, port: int, www: Path) -> Path:
    return _conf(dir_, _ORIGIN.format(port=port, www=www))


def proxy_conf(
    dir_: Path,
    port: int,
    origin: int,
    map_file: Path | None,
    tls: tuple[Path, Path, str] | None = None,
) -> Path:
    """nginx in front of the origin; ``map_file``: the key check; ``tls``: (certificate,
    key, ciphers) to terminate TLS with."""
    body = _PROXY.format(
        port=port,
        origin=origin,
        check=_CHECK if map_file else "",
        ssl=" ssl" if tls else "",
        tls=_TLS.format(cert=tls[0], key=tls[1], ciphers=tls[2]) if tls else "",
    )
    if map_file is not None:
        body = _MAP.format(map_file=map_file) + body
    return _conf(dir_, body)


def authreq_conf(dir_: Path, port: int, keygate: int, origin: int, workers: int = 1) -> Path:
    """nginx asking keygate (forward-auth) before forwarding to the origin itself."""
    return _conf(dir_, _AUTHREQ.format(port=port, keygate=keygate, origin=origin), workers)


def start(name: str, conf: Path, cpus: set[int] | None) -> Proc:
    dir_ = conf.parent
    argv = [NGINX, "-p", str(dir_), "-e", str(dir_ / "error.log"), "-c", str(conf)]
    return spawn(name, argv, dir_ / "stdout.log", cpus=cpus)
