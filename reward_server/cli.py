"""``rpp-reward-server``: serve one scorer over gRPC.

    rpp-reward-server --scorer function --function my_rewards.py:score --kind outcome
    rpp-reward-server --scorer my_pkg.scorers:MyScorer --option threshold=0.5

``--scorer NAME`` is built by ``reward_server.scorers.registry.build_scorer(NAME, ...)``;
``--scorer module:attr`` calls your own Scorer class or factory with the same options.
With ``--port 0 --ready-file F`` the server picks a free port and writes
``{"address", "metrics_port", "pid"}`` as JSON to F once it is serving.

Exit codes: 0 drained and stopped; 2 setup error (bad flags, options, files, ports, or a
scorer that cannot be built), one line on stderr naming it; flags, TLS files, ports and a
local --model path are checked before the scorer loads its model.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from reward_server.batching import check_stuck_sample_timeout
from reward_server.scorers.base import Scorer
from reward_server.server import BindError, RewardServer, ServerConfig, _host_port, serve

log = logging.getLogger("rpp-reward-server")

EXIT_SETUP = 2  # a setup error: bad flags, options, files or ports; nothing was served


class SetupError(Exception):
    """A problem with how the server was started; the message names the flag and the fix."""


def port_number(text: str, lowest: int = 0) -> int:
    """An argparse type: a TCP port, 0 for any free one (and -1 for off where ``lowest`` allows it)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not lowest <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number ({lowest}..65535)")
    return value


def log_level(text: str) -> str:
    if not isinstance(logging.getLevelName(text.upper()), int):
        raise argparse.ArgumentTypeError(f"{text!r} is not a log level (DEBUG, INFO, WARNING, ERROR)")
    return text.upper()


def build_parser() -> argparse.ArgumentParser:
    d = ServerConfig()
    p = argparse.ArgumentParser(prog="rpp-reward-server", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s = p.add_argument_group("scorer")
    s.add_argument("--scorer", required=True,
                   help="registered scorer name (e.g. prm: any public PRM checkpoint, its format read from "
                        "config.json), or module:attr of a Scorer class/factory")
    s.add_argument("--model", help="model path or hub id (HF scorers)")
    s.add_argument("--function", help="module:function or path/to/file.py:function (user-function scorer)")
    s.add_argument("--kind", choices=["outcome", "process"], help="outcome or process reward")
    s.add_argument("--step-separator", type=unescape, default=argparse.SUPPRESS,
                   help="string a process scorer splits responses on when a sample has no steps; "
                        "\\n, \\t, \\r and \\\\ are read as escapes (--step-separator '\\n' is a newline). "
                        "Default: the scorer's own, a blank line ('\\n\\n') for user functions; GetInfo "
                        "and the start-up line say which one a server uses")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra scorer option (repeatable); VALUE is parsed as JSON when it can be")
    n = p.add_argument_group("server")
    n.add_argument("--host", default=d.host, help="address to bind; 0.0.0.0 or :: to serve beyond this machine")
    n.add_argument("--port", type=port_number, default=d.port, help="0: any free port")
    n.add_argument("--max-batch-samples", type=int, default=d.max_batch_samples)
    n.add_argument("--max-batch-bytes", type=int, default=d.max_batch_bytes,
                   help="Scorer.cost budget per scorer call: UTF-8 bytes (a bound on tokens) unless the "
                        "scorer counts otherwise; HF scorers also cap padded tokens per forward "
                        "(--option max_batch_tokens=N)")
    n.add_argument("--max-batch-tokens", type=int, dest="max_batch_tokens_deprecated", default=None,
                   help="deprecated: the old name of --max-batch-bytes (it always counted bytes)")
    n.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms)
    n.add_argument("--scorer-timeout-s", type=float, default=d.scorer_timeout_s,
                   help="limit of one scorer call: past it its samples get TIMEOUT, health says NOT_SERVING "
                        "and new calls get UNAVAILABLE until the call returns (0: no limit). Must be above a user "
                        "function's --option timeout_s, so a hung sample's worker is killed first")
    n.add_argument("--max-queue", type=int, default=d.max_queue)
    n.add_argument("--max-samples-per-request", type=int, default=d.max_samples_per_request)
    n.add_argument("--max-sample-bytes", type=int, default=d.max_sample_bytes)
    n.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes,
                   help="largest Score request gRPC receives (default: gRPC's 4 MiB; advertised in GetInfo, clients "
                        "split to it); bigger ones are refused by the transport before they are parsed. A call "
                        "that does not declare its size (rpp-request-bytes) counts as this much until read")
    n.add_argument("--max-inflight-bytes", type=int, default=d.max_inflight_bytes,
                   help="serialized Score requests held at once, queued or scored; past it RESOURCE_EXHAUSTED "
                        "before the message is read (the memory bound for requests: about 3x this, see README). Other "
                        "calls wait behind what it admits: a few of the largest requests keeps them quick")
    n.add_argument("--max-concurrent-calls", type=int, default=d.max_concurrent_calls,
                   help="Score calls held at once; past it RESOURCE_EXHAUSTED")
    n.add_argument("--token-env", default="RPP_REWARD_TOKEN",
                   help="environment variable holding the bearer token (unset or empty: no auth)")
    n.add_argument("--tls-cert", help="server certificate (PEM)")
    n.add_argument("--tls-key", help="server private key (PEM)")
    n.add_argument("--tls-client-ca", help="CA for client certificates (PEM): turns on mTLS")
    n.add_argument("--metrics-port", type=lambda text: port_number(text, lowest=-1), default=d.metrics_port,
                   help="Prometheus GET /metrics over plain HTTP with no auth, even with TLS or a token "
                        "(counters only); 0: any free port; -1: off")
    n.add_argument("--metrics-host", help="address the metrics port binds (default: --host)")
    n.add_argument("--grace-s", type=float, default=d.grace_s, help="drain grace period on SIGTERM")
    n.add_argument("--max-connection-age-s", type=float, default=d.max_connection_age_s)
    n.add_argument("--ready-file", type=Path, help="write {address, metrics_port, pid} JSON here once serving")
    n.add_argument("--exit-with-parent", action="store_true",
                   help="drain and exit when the process that started this server dies (for launchers)")
    n.add_argument("--log-level", type=log_level, default="INFO")
    return p


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    """``text`` with the shell-friendly escapes \\n, \\t, \\r and \\\\ turned into their
    characters; any other backslash stays as it is (so a regex-like separator survives)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPES:
            out.append(_ESCAPES[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SetupError(f"--option {pair!r}: expected KEY=VALUE")
        try:
            options[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.replace("-", "_")] = raw
    return options


def build_scorer(name: str, options: dict[str, Any]) -> Scorer:
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise SetupError(f"--scorer {name!r}: cannot import module {module_name!r} ({exc}); "
                             "check the name and that it is on PYTHONPATH") from None
        factory = getattr(module, attr, None)
        if factory is None:
            raise SetupError(f"--scorer {name!r}: module {module_name!r} has no attribute {attr!r}")
        try:
            scorer = factory(**options)
        except TypeError as exc:
            raise SetupError(f"--scorer {name!r}: calling it with options {sorted(options)} failed: {exc}") from None
    else:
        from reward_server.scorers.registry import build_scorer as build_registered

        scorer = build_registered(name, **options)
    if not isinstance(scorer, Scorer):
        raise SetupError(f"--scorer {name!r} built a {type(scorer).__name__}, not a reward_server Scorer")
    return scorer


def _max_batch_bytes(args: argparse.Namespace) -> int:
    if args.max_batch_tokens_deprecated is None:
        return args.max_batch_bytes
    print("rpp-reward-server: --max-batch-tokens is deprecated and counts UTF-8 bytes: use --max-batch-bytes "
          "(the padded tokens of an HF scorer's forward are --option max_batch_tokens=N)", file=sys.stderr)
    return args.max_batch_tokens_deprecated


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host, port=args.port,
        max_batch_samples=args.max_batch_samples, max_batch_bytes=_max_batch_bytes(args),
        max_wait_ms=args.max_wait_ms, max_queue=args.max_queue, scorer_timeout_s=args.scorer_timeout_s,
        max_samples_per_request=args.max_samples_per_request, max_sample_bytes=args.max_sample_bytes,
        max_message_bytes=args.max_message_bytes, max_inflight_bytes=args.max_inflight_bytes,
        max_concurrent_calls=args.max_concurrent_calls,
        token=os.environ.get(args.token_env) or None,
        tls_cert_file=args.tls_cert, tls_key_file=args.tls_key, tls_client_ca_file=args.tls_client_ca,
        metrics_port=None if args.metrics_port < 0 else args.metrics_port, metrics_host=args.metrics_host,
        grace_s=args.grace_s, max_connection_age_s=args.max_connection_age_s,
    )


def _check_pem_files(config: ServerConfig) -> None:
    """That the TLS files exist, parse, and that the key is the certificate's, as gRPC will need."""
    files = {"--tls-cert": config.tls_cert_file, "--tls-key": config.tls_key_file,
             "--tls-client-ca": config.tls_client_ca_file}
    for flag, path in files.items():
        if path and not Path(path).is_file():
            raise SetupError(f"{flag} {path!r}: no such file")
    if config.tls_cert_file and config.tls_key_file:
        try:  # an encrypted key gets an empty password, and fails, rather than a prompt
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                config.tls_cert_file, config.tls_key_file, password=lambda: b""
            )
        except ssl.SSLError as exc:
            cert, key = config.tls_cert_file, config.tls_key_file
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise SetupError(f"--tls-key {key!r} is not the private key of --tls-cert {cert!r} ({exc})") from None
            raise SetupError(
                f"--tls-cert {cert!r} and --tls-key {key!r} are not a PEM certificate and its unencrypted "
                f"private key ({exc})"
            ) from None
    if config.tls_client_ca_file:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=config.tls_client_ca_file)
        except ssl.SSLError as exc:
            raise SetupError(
                f"--tls-client-ca {config.tls_client_ca_file!r} holds no PEM certificate ({exc})"
            ) from None


def _check_bindable(host: str, port: int, flag: str, family: int = 0, extra: str = "") -> None:
    """That ``host:port`` can be listened on now (one address of the host is enough, as for
    gRPC); ``family``: only that address family, as the metrics server binds."""
    try:
        addresses = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        host_flag = flag.replace("-port", "-host")
        raise SetupError(f"cannot listen on {host!r}: the name does not resolve ({exc.strerror}); "
                         f"give {host_flag} an address of this machine") from None
    for af, kind, proto, _, address in addresses:
        with socket.socket(af, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                probe.bind(address)
                return
            except OSError:
                continue
    raise SetupError(
        f"cannot listen on {_host_port(host, port)}: the address is in use (another server on that port?) or not "
        f"this machine's; pick another {flag}, or {flag} 0 for any free one{extra}"
    )


def check_before_loading(args: argparse.Namespace, config: ServerConfig, options: dict[str, Any]) -> None:
    """What can be checked before the scorer loads (a model may take minutes): limits, TLS
    files, the ports, the ready file's folder and a local --model path."""
    config.batching()  # its limits, checked
    _check_pem_files(config)
    _check_bindable(config.host, config.port, "--port")
    if config.metrics_port is not None:
        _check_bindable(config.metrics_host or config.host, config.metrics_port, "--metrics-port",
                        family=socket.AF_INET, extra=", or -1 for no metrics")
    if args.ready_file is not None:
        folder = args.ready_file.parent
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as exc:
            raise SetupError(f"--ready-file {str(args.ready_file)!r}: cannot write in {str(folder)!r} "
                             f"({exc.strerror})") from None
    model = options.get("model")
    looks_local = isinstance(model, str) and (model.startswith((".", "/", "~")) or model.count("/") != 1)
    if looks_local and ":" not in args.scorer and not Path(model).expanduser().exists():
        from reward_server.scorers.registry import scorer_options

        if "model" in scorer_options(args.scorer):  # else building it names the unknown option
            raise SetupError(f"--model {model!r} does not exist; give a directory saved with save_pretrained, "
                             "or a hub id like org/name")


def write_ready_file(path: Path, server: RewardServer) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"address": server.address, "metrics_port": server.metrics_port, "pid": os.getpid()}))
    os.replace(tmp, path)  # atomic: a watcher never reads half a file


def exit_with_parent(poll_s: float = 1.0) -> None:
    """Send ourselves SIGTERM (a graceful drain) once our parent process is gone.

    A launcher that is SIGKILLed cannot stop its children; without this its reward
    servers would outlive it, holding ports and memory."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.warning("parent process %d is gone; draining", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _close_scorer(scorer: Scorer) -> None:
    close = getattr(scorer, "close", None)
    if callable(close):
        close()


def _setup_failed(exc: BaseException) -> SystemExit:
    print(f"rpp-reward-server: {exc}", file=sys.stderr, flush=True)
    return SystemExit(EXIT_SETUP)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = {k: v for k, v in (("model", args.model), ("function", args.function), ("kind", args.kind),
                                 ("step_separator", getattr(args, "step_separator", None))) if v is not None}
    try:
        options.update(parse_options(args.option))
        config = config_from_args(args)
        check_before_loading(args, config, options)
        scorer = build_scorer(args.scorer, options)
    except (SetupError, ValueError, TypeError, ImportError) as exc:
        raise _setup_failed(exc) from None
    try:
        check_stuck_sample_timeout(scorer, config.scorer_timeout_s)
    except ValueError as exc:
        _close_scorer(scorer)
        raise _setup_failed(exc) from None

    def on_ready(server: RewardServer) -> None:
        log.info(
            "serving %s (%s%s) on %s; metrics port %s; tls %s; token auth %s",
            scorer.model_name, scorer.kind.value,
            (f", {scorer.input_format}" if scorer.input_format else "")
            + (f", steps split on {scorer.step_separator!r}" if scorer.kind.value == "process" else ""),
            server.address, server.metrics_port,
            "mTLS" if config.tls_client_ca_file else ("on" if config.tls_cert_file else "off"),
            "on" if config.token else "off",
        )
        if args.ready_file:
            write_ready_file(args.ready_file, server)
        if args.exit_with_parent:
            exit_with_parent()

    try:
        stuck = asyncio.run(serve(scorer, config, on_ready))
    except BindError as exc:
        _close_scorer(scorer)
        raise _setup_failed(exc) from None
    _close_scorer(scorer)  # worker processes
    if stuck:
        # A thread stuck in the scorer would keep the interpreter from exiting (it joins its
        # threads at exit), so SIGTERM would never end the process: leave without it.
        log.warning("exiting with a scorer call still running (stuck, or past the grace period)")
        logging.shutdown()
        os._exit(0)
    sys.exit(0)


if __name__ == "__main__":
    main()
