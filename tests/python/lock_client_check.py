#!/usr/bin/env python3
"""A Python client of quorumlock, generated from crates/quorumlock-proto/proto/ at run time.

Proves the gRPC API serves any language, not only the Rust client: the stubs
are generated from crates/quorumlock-proto/proto/quorumlock/v1/lock.proto with grpcio-tools into a
temporary directory (nothing generated is committed), then the script plays
the fencing scenario against the endpoints given on its command line:

  session A acquires the lock (token T1), writes with T1, reads it back,
  renews its session over the KeepAlive stream and releases; session B
  acquires (token T2 > T1) and writes; A's late write with T1 is refused with
  FAILED_PRECONDITION and leaves B's value in place; B releases; both
  sessions close.

Every step prints one line. The script exits 0 only if every expectation
held, 1 on any mismatch and 2 when its Python packages are missing.

    pip install -r tests/python/requirements.txt
    python3 tests/python/lock_client_check.py --endpoints 127.0.0.1:7001,127.0.0.1:7002
"""

import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time

REQUIREMENTS = "tests/python/requirements.txt"
try:
    import grpc
    import grpc_tools
    from grpc_status import rpc_status
except ImportError as error:
    print(
        f"missing Python package ({error}); this check needs grpcio, grpcio-tools and grpcio-status: "
        f"pip install -r {REQUIREMENTS}",
        file=sys.stderr,
    )
    sys.exit(2)

# Bound on one RPC; the cluster answers in milliseconds when healthy.
RPC_DEADLINE_SECONDS = 10.0
# Bound on retrying calls answered UNAVAILABLE (for example during an election).
UNAVAILABLE_RETRY_SECONDS = 30.0
UNAVAILABLE_PAUSE_SECONDS = 0.2
# Long enough that no renewal is needed while the script runs.
SESSION_TTL_MS = 60_000


class Mismatch(Exception):
    """An expectation about the server's answers did not hold."""


def expect(condition, what):
    if not condition:
        raise Mismatch(what)


def generate_stubs(proto_root, out_dir):
    """Runs `python -m grpc_tools.protoc` on lock.proto into out_dir."""
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        os.path.join(proto_root, "quorumlock", "v1", "lock.proto"),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise Mismatch(f"grpc_tools.protoc failed ({result.returncode}): {result.stderr.strip()}")
    sys.path.insert(0, out_dir)
    pb = importlib.import_module("quorumlock.v1.lock_pb2")
    rpc = importlib.import_module("quorumlock.v1.lock_pb2_grpc")
    return pb, rpc


class Client:
    """Calls any of the endpoints; every node forwards to the leader, so the
    first endpoint that answers is used, and UNAVAILABLE moves to the next."""

    def __init__(self, rpc, endpoints, credentials=None, token=None):
        # A bearer token goes with every call, as README's access control
        # section says: metadata `authorization: Bearer TOKEN`.
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if credentials is None:
            self.channels = [grpc.insecure_channel(endpoint) for endpoint in endpoints]
        else:
            self.channels = [grpc.secure_channel(endpoint, credentials) for endpoint in endpoints]
        self.stubs = [rpc.LockStub(channel) for channel in self.channels]
        self.endpoints = endpoints
        self.current = 0

    def call(self, method, request):
        deadline = time.monotonic() + UNAVAILABLE_RETRY_SECONDS
        while True:
            stub = self.stubs[self.current]
            try:
                return getattr(stub, method)(request, timeout=RPC_DEADLINE_SECONDS, metadata=self.metadata)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() >= deadline:
                    raise
                print(
                    f"  {method} on {self.endpoints[self.current]}: UNAVAILABLE, trying the next endpoint",
                    file=sys.stderr,
                )
                self.current = (self.current + 1) % len(self.stubs)
                time.sleep(UNAVAILABLE_PAUSE_SECONDS)

    def keep_alive_once(self, pb, session_id, secret):
        """Sends one renewal on the KeepAlive stream and reads its answer."""
        stub = self.stubs[self.current]
        responses = stub.KeepAlive(
            iter([pb.KeepAliveRequest(session_id=session_id, session_secret=secret)]),
            timeout=RPC_DEADLINE_SECONDS,
            metadata=self.metadata,
        )
        try:
            return next(responses)
        finally:
            responses.cancel()

    def close(self):
        for channel in self.channels:
            channel.close()


def refused(pb, call):
    """Runs call; returns (code, message, ErrorDetail) of its error, or None if
    it succeeded. The detail is read from the gRPC status details (a
    google.rpc.Status whose one entry is a quorumlock.v1.ErrorDetail), as
    any client should: the message is for people."""
    try:
        call()
    except grpc.RpcError as error:
        detail = None
        status = rpc_status.from_call(error)
        if status is not None:
            for entry in status.details:
                if entry.Is(pb.ErrorDetail.DESCRIPTOR):
                    detail = pb.ErrorDetail()
                    entry.Unpack(detail)
        return error.code(), error.details(), detail
    return None


def put_request(pb, key, value, lock, token, session, secret):
    """A fenced Put by `session`, which must hold `lock` under `token`."""
    return pb.PutRequest(
        key=key,
        value=value,
        fence=pb.Fence(lock=lock, token=token),
        session_id=session,
        session_secret=secret,
    )


def run(pb, client, lock, key):
    lock_bytes = lock.encode()
    key_bytes = key.encode()

    opened = client.call("OpenSession", pb.OpenSessionRequest(ttl_ms=SESSION_TTL_MS))
    a, a_secret = opened.session_id, opened.session_secret
    expect(a != 0, "OpenSession returned session id 0")
    expect(len(a_secret) == 32, f"OpenSession returned a 32-byte session secret, not {len(a_secret)} bytes")
    print(f"session A opened: id={a}, with a {len(a_secret)}-byte secret")

    granted = client.call(
        "Acquire", pb.AcquireRequest(session_id=a, name=lock_bytes, wait_ms=0, session_secret=a_secret)
    )
    expect(granted.acquired, f"A's try-lock of {lock!r} was not granted: {granted}")
    t1 = granted.token
    expect(t1 > 0, "a grant carries a nonzero token")
    print(f"A acquired {lock}: token={t1}")

    described = client.call("Describe", pb.DescribeRequest(name=lock_bytes))
    expect(
        described.held and described.holder_session_id == a and described.token == t1,
        f"Describe shows A holding {lock} with token {t1}: {described}",
    )
    print(f"describe {lock}: held by session {described.holder_session_id}, token={described.token}")

    renewed = client.keep_alive_once(pb, a, a_secret)
    expect(renewed.session_id == a, f"KeepAlive renewed session {a}: {renewed}")
    print(f"A renewed its session over KeepAlive: ttl_ms={renewed.ttl_ms}")

    client.call(
        "Put",
        put_request(pb, key_bytes, b"written by A", lock_bytes, t1, a, a_secret),
    )
    print(f"A put {key} with token {t1}")
    got = client.call("Get", pb.GetRequest(key=key_bytes))
    expect(
        got.found and got.value == b"written by A" and got.written_by.token == t1,
        f"Get reads back A's value and fence: {got}",
    )
    print(f"get {key}: {got.value.decode()!r} written with token {got.written_by.token}")

    # Someone who knows A's id and the current token, but not A's secret,
    # can neither release A's lock nor write under it.
    guessed = bytes(32)
    for method, request in (
        ("Release", pb.ReleaseRequest(session_id=a, name=lock_bytes, token=t1, session_secret=guessed)),
        (
            "Put",
            put_request(pb, key_bytes, b"hijacked", lock_bytes, t1, a, guessed),
        ),
        ("CloseSession", pb.CloseSessionRequest(session_id=a, session_secret=guessed)),
    ):
        refusal = refused(pb, lambda: client.call(method, request))
        expect(refusal is not None, f"{method} on A's session with a guessed secret was accepted")
        code, message, detail = refusal
        expect(
            code == grpc.StatusCode.PERMISSION_DENIED
            and detail is not None
            and detail.reason == pb.ERROR_REASON_NOT_SESSION_OWNER
            and detail.session_id == a,
            f"{method} with a guessed secret is PERMISSION_DENIED (NOT_SESSION_OWNER): {code}: {message}",
        )
        print(f"{method} on A's session with a guessed secret refused: {code.name}: {message}")
    refusal = refused(pb, lambda: client.call("CloseSession", pb.CloseSessionRequest(session_id=a)))
    expect(
        refusal is not None and refusal[0] == grpc.StatusCode.UNAUTHENTICATED,
        f"CloseSession without a secret is UNAUTHENTICATED: {refusal}",
    )
    print(f"CloseSession of A without a secret refused: {refusal[0].name}")
    described = client.call("Describe", pb.DescribeRequest(name=lock_bytes))
    expect(
        described.held and described.holder_session_id == a and described.token == t1,
        f"A still holds {lock} after the hijack attempts: {described}",
    )

    client.call("Release", pb.ReleaseRequest(session_id=a, name=lock_bytes, token=t1, session_secret=a_secret))
    print(f"A released token {t1}")

    opened = client.call("OpenSession", pb.OpenSessionRequest(ttl_ms=SESSION_TTL_MS))
    b, b_secret = opened.session_id, opened.session_secret
    print(f"session B opened: id={b}")
    granted = client.call(
        "Acquire", pb.AcquireRequest(session_id=b, name=lock_bytes, wait_ms=0, session_secret=b_secret)
    )
    expect(granted.acquired, f"B's try-lock of {lock!r} was not granted: {granted}")
    t2 = granted.token
    expect(t2 > t1, f"tokens increase: B's {t2} must exceed A's {t1}")
    print(f"B acquired {lock}: token={t2}")
    client.call(
        "Put",
        put_request(pb, key_bytes, b"written by B", lock_bytes, t2, b, b_secret),
    )
    print(f"B put {key} with token {t2}")

    refusal = refused(
        pb,
        lambda: client.call(
            "Put",
            put_request(pb, key_bytes, b"late write by A", lock_bytes, t1, a, a_secret),
        ),
    )
    expect(refusal is not None, f"A's put with stale token {t1} was accepted")
    code, message, detail = refusal
    expect(
        code == grpc.StatusCode.FAILED_PRECONDITION,
        f"A's stale put is refused with FAILED_PRECONDITION, got {code}: {message}",
    )
    expect(detail is not None, f"the refusal carries a typed ErrorDetail: {message!r}")
    expect(
        detail.reason == pb.ERROR_REASON_STALE_TOKEN
        and detail.presented_token == t1
        and detail.current_token == t2
        and detail.lock == lock_bytes,
        f"the refusal's detail names the lock, the presented token {t1} and the current {t2}: {detail}",
    )
    print(
        f"A's put with stale token {t1} refused: {code.name}: reason STALE_TOKEN, "
        f"presented {detail.presented_token}, current {detail.current_token}"
    )

    got = client.call("Get", pb.GetRequest(key=key_bytes))
    expect(
        got.value == b"written by B" and got.written_by.token == t2,
        f"B's value survives A's stale write: {got}",
    )
    print(f"get {key}: {got.value.decode()!r} written with token {got.written_by.token}")

    client.call("Release", pb.ReleaseRequest(session_id=b, name=lock_bytes, token=t2, session_secret=b_secret))
    print(f"B released token {t2}")
    described = client.call("Describe", pb.DescribeRequest(name=lock_bytes))
    expect(not described.held, f"{lock} is free after both releases: {described}")

    for name, session, secret in (("A", a, a_secret), ("B", b, b_secret)):
        client.call("CloseSession", pb.CloseSessionRequest(session_id=session, session_secret=secret))
        print(f"session {name} closed")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--endpoints",
        required=True,
        help="comma-separated host:port of any subset of the cluster's nodes",
    )
    parser.add_argument(
        "--proto-root",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "crates", "quorumlock-proto", "proto"),
        help="directory holding quorumlock/v1/lock.proto [default: the repository's crates/quorumlock-proto/proto/]",
    )
    parser.add_argument("--cacert", help="CA certificate (PEM) the nodes' certificates chain to; turns TLS on")
    parser.add_argument("--cert", help="client certificate (PEM), for clusters that require one")
    parser.add_argument("--key", dest="tls_key", help="private key (PEM) of --cert")
    parser.add_argument(
        "--token-env",
        metavar="VAR",
        help="environment variable holding a bearer token for clusters with an access policy",
    )
    parser.add_argument("--lock", default="python/lock", help="lock name to use")
    parser.add_argument("--fenced-key", "--kv-key", dest="key", default="python/key", help="fenced key to write")
    args = parser.parse_args()
    endpoints = [endpoint.strip() for endpoint in args.endpoints.split(",") if endpoint.strip()]
    if not endpoints:
        parser.error("--endpoints names no endpoint")
    credentials = None
    if args.cacert:
        def read(path):
            with open(path, "rb") as file:
                return file.read()

        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.cacert),
            private_key=read(args.tls_key) if args.tls_key else None,
            certificate_chain=read(args.cert) if args.cert else None,
        )
    elif args.cert or args.tls_key:
        parser.error("--cert and --key need --cacert")

    with tempfile.TemporaryDirectory(prefix="quorumlock-python-stubs-") as out_dir:
        client = None
        try:
            pb, rpc = generate_stubs(os.path.abspath(args.proto_root), out_dir)
            print(f"generated Python stubs from {os.path.normpath(args.proto_root)}/quorumlock/v1/lock.proto")
            token = os.environ[args.token_env] if args.token_env else None
            client = Client(rpc, endpoints, credentials, token)
            run(pb, client, args.lock, args.key)
        except Mismatch as mismatch:
            print(f"FAIL: {mismatch}", file=sys.stderr)
            return 1
        except grpc.RpcError as error:
            print(f"FAIL: unexpected gRPC error {error.code()}: {error.details()}", file=sys.stderr)
            return 1
        finally:
            if client is not None:
                client.close()
    print("OK: the Python client acquired, wrote with its token, was fenced off when stale, and released")
    return 0


if __name__ == "__main__":
    sys.exit(main())
