"""TLS contexts with certificates made at test time (trustme)."""

from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing
import trustme

from trio_asr.serving.tls import TlsError, client_context, server_context


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def cert_files(ca, tmp_path):
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    with open(chain, "wb") as f:
        for blob in cert.cert_chain_pems:
            f.write(blob.bytes())
    combined = tmp_path / "combined.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(combined))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return chain, key, combined, ca_file


async def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str) -> bytes:
    """Run a TLS handshake over an in-memory pipe; the client sends 'ping'."""
    a, b = trio.testing.memory_stream_pair()
    server = trio.SSLStream(a, server_ctx, server_side=True)
    client = trio.SSLStream(b, client_ctx, server_hostname=hostname)
    received = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send_all, b"ping")

        async def serve():
            received.append(await server.receive_some(4))

        nursery.start_soon(serve)
    assert client.selected_alpn_protocol() in (None, "http/1.1")
    return received[0]


@pytest.mark.parametrize("combined", [False, True])
async def test_a_client_trusting_the_ca_connects(cert_files, combined):
    chain, key, both, ca_file = cert_files
    ctx = server_context(both) if combined else server_context(chain, key)
    assert await handshake(ctx, client_context(ca_file), "127.0.0.1") == b"ping"


async def test_a_client_not_trusting_the_certificate_fails(cert_files):
    chain, key, _, _ = cert_files
    with pytest.raises(BaseExceptionGroup) as info:
        await handshake(server_context(chain, key), client_context(), "127.0.0.1")
    causes = [type(e.__cause__) for e in info.value.exceptions if isinstance(e, trio.BrokenResourceError)]
    assert ssl.SSLCertVerificationError in causes


def test_old_tls_versions_are_refused(cert_files):
    chain, key, _, _ = cert_files
    assert server_context(chain, key).minimum_version >= ssl.TLSVersion.TLSv1_2


def test_missing_files_and_mismatched_keys_are_one_line_errors(ca, cert_files, tmp_path):
    chain, key, _, _ = cert_files
    with pytest.raises(TlsError, match="certificate file .*nope.pem does not exist"):
        server_context(tmp_path / "nope.pem", key)
    with pytest.raises(TlsError, match="key file .*nokey.pem does not exist"):
        server_context(chain, tmp_path / "nokey.pem")
    other_key = tmp_path / "other.pem"
    ca.issue_cert("localhost").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(TlsError, match="does not match the certificate"):
        server_context(chain, other_key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsError, match="PEM files expected"):
        server_context(garbage, key)
    with pytest.raises(TlsError, match="CA file .* does not exist"):
        client_context(tmp_path / "noca.pem")


def test_an_encrypted_key_is_an_error_not_a_password_prompt(ca, tmp_path):
    from cryptography.hazmat.primitives import serialization

    cert = ca.issue_cert("localhost")
    chain = tmp_path / "cert.pem"
    cert.cert_chain_pems[0].write_to_path(str(chain))
    private = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    encrypted = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    key = tmp_path / "key.pem"
    key.write_bytes(encrypted)
    with pytest.raises(TlsError, match="encrypted"):
        server_context(chain, key)
