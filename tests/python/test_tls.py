"""The Python client over TLS and mutual TLS: the daemon started with --tls-cert, --tls-key and
--tls-client-ca (certificates made by the openssl CLI for this test), the client with the CA,
and its own certificate and key given as paths or PEM bytes."""
import asyncio
import os
import subprocess

import pytest

import knowd
from conftest import ADMIN, Daemon


def make_certificates(d):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate it signed."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=knowd-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "localhost"), ("client", "knowd-test-client")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        extra = ["-extfile", "san.ext"] if name == "server" else []
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", *extra, "-out", f"{name}.pem")
    return {n: os.path.join(d, n) for n in ("ca.pem", "server.pem", "server.key", "client.pem",
                                            "client.key")}


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tls"))
    certs = make_certificates(d)
    daemon = Daemon(d, ["--tls-cert", certs["server.pem"], "--tls-key", certs["server.key"],
                        "--tls-client-ca", certs["ca.pem"]])
    yield daemon, certs
    code = daemon.stop()
    assert code == 0, f"knowd exited {code}:\n{daemon.log()}"


def test_mutual_tls(tls_daemon):
    daemon, certs = tls_daemon
    with knowd.Client(daemon.grpc, token=ADMIN, namespace="tls", timeout=60,
                      root_certificates=certs["ca.pem"], private_key=certs["client.key"],
                      certificate_chain=certs["client.pem"]) as client:
        result = client.ingest_one("t-1", "Sigma Quorin guards the gate of Lorvale.")
        assert result.ok and result.passages == 1
        assert client.get("t-1").text == "Sigma Quorin guards the gate of Lorvale."
        assert client.stats("tls").documents == 1

    # PEM bytes work as well as paths, and so does the asyncio client.
    def read(name):
        with open(certs[name], "rb") as f:
            return f.read()

    async def run():
        async with knowd.AsyncClient(daemon.grpc, token=ADMIN, namespace="tls", timeout=60,
                                     root_certificates=read("ca.pem"),
                                     private_key=read("client.key"),
                                     certificate_chain=read("client.pem")) as client:
            return (await client.search("Sigma Quorin", top_k=1)).passages

    [hit] = asyncio.run(run())
    assert hit.document_id == "t-1"


def test_refused_without_client_certificate_or_tls(tls_daemon):
    daemon, certs = tls_daemon
    # The server asks for a client certificate: without one the handshake fails.
    with knowd.Client(daemon.grpc, token=ADMIN, timeout=30,
                      root_certificates=certs["ca.pem"]) as client:
        with pytest.raises(knowd.Unavailable) as e:
            client.stats()
        assert e.value.code.name == "UNAVAILABLE"
    # Plaintext against a TLS port.
    with knowd.Client(daemon.grpc, token=ADMIN, timeout=30) as client:
        with pytest.raises(knowd.Unavailable):
            client.stats()
