"""Test certificates for the TLS tests, made with `cryptography` (Debian's
python3-cryptography): one CA, leaves with chosen DNS SANs, serial numbers,
key types and validity windows (expired and near-expiry ones included, which
trustme 0.9 cannot make). Files are PEM: chain = leaf then CA, key = PKCS#8.
"""

import datetime
import os
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = datetime.timezone.utc


def _now():
    return datetime.datetime.now(UTC).replace(microsecond=0)


def _new_key(kind):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Leaf:
    """A leaf certificate written to disk: .chain (leaf + CA), .key, plus
    .serial, .names and .der for comparing with what a server presented."""

    def __init__(self, chain, key, cert, names):
        self.chain = chain
        self.key = key
        self.cert = cert
        self.names = list(names)
        self.serial = cert.serial_number
        self.der = cert.public_bytes(serialization.Encoding.DER)

    def __repr__(self):
        return "<Leaf serial=%x names=%r>" % (self.serial, self.names)


class ScratchCA:
    """A throw-away CA; issue() writes leaf files under `directory`."""

    def __init__(self, directory, name="sandgate test CA"):
        self.dir = str(directory)
        os.makedirs(self.dir, exist_ok=True)
        self.key = _new_key("ec")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self.ca_path = os.path.join(self.dir, "ca.pem")
        with open(self.ca_path, "wb") as f:
            f.write(self.pem)
        self._n = 0

    def issue(self, names, stem=None, key_type="ec", not_before=None, not_after=None,
              days=90, serial=None):
        """Leaf for DNS `names`; validity [not_before, not_after] (datetimes)
        defaults to [now - 1 day, now + days]. Returns a Leaf."""
        self._n += 1
        stem = stem or "leaf%d" % self._n
        key = _new_key(key_type)
        now = _now()
        nb = not_before or now - datetime.timedelta(days=1)
        na = not_after or now + datetime.timedelta(days=days)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(nb)
            .not_valid_after(na)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        chain = os.path.join(self.dir, stem + ".chain.pem")
        keyp = os.path.join(self.dir, stem + ".key.pem")
        with open(chain, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM) + self.pem)
        with open(keyp, "wb") as f:
            f.write(_key_pem(key))
        return Leaf(chain, keyp, cert, names)

    def expired(self, names, stem=None):
        now = _now()
        return self.issue(names, stem, not_before=now - datetime.timedelta(days=30),
                          not_after=now - datetime.timedelta(days=1))

    def client_context(self, minimum=None, maximum=None, alpn=("http/1.1",)):
        """Client SSLContext trusting this CA (hostname checked)."""
        ctx = ssl.create_default_context(cafile=self.ca_path)
        if minimum is not None:
            ctx.minimum_version = minimum
        if maximum is not None:
            ctx.maximum_version = maximum
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx


def write_other_key(path, key_type="ec"):
    """A private key that matches no certificate."""
    with open(path, "wb") as f:
        f.write(_key_pem(_new_key(key_type)))
    return str(path)


def served_cert(sslsock):
    """The leaf the server presented, parsed: (serial, [DNS SANs])."""
    der = sslsock.getpeercert(binary_form=True)
    c = x509.load_der_x509_certificate(der)
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return c.serial_number, san.get_values_for_type(x509.DNSName)
