//! Test support shared by every crate's tests (feature `test-util`, never in a release build):
//! one certificate authority made in memory for a test, and one framed reader over a quinn
//! receive stream.
//!
//! - [`Pki`]: a fresh CA with a server certificate (localhost, 127.0.0.1, ::1) and any client
//!   certificates a test asks for, including expired ones and ones named only by a URI SAN.
//! - [`FrameReader`] (and [`read_frame`] beneath it): the frames of one receive stream, decoded
//!   as they arrive, with the end of the stream told apart from a stream cut mid-frame.
//!
//! The CA and its certificates are made from nothing a test does not control, so making them
//! fails only on a defect: those helpers fail the test loudly instead of returning errors.

#![allow(clippy::expect_used, clippy::panic)] // test support: a defect fails the test loudly

use bytes::BytesMut;
use cassini_protocol::{DecodeError, Frame, FrameDecoder};
use rcgen::string::Ia5String;
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::certs::{
    CertificateAuthority, IssuedCert, Validity, CLOCK_SKEW_ALLOWANCE, LEAF_VALIDITY,
};

/// A certificate authority and a server certificate, made fresh for one test.
pub struct Pki {
    /// The CA that signs the server and the clients.
    pub ca: CertificateAuthority,
    /// The server's certificate (localhost, 127.0.0.1, ::1).
    pub server: IssuedCert,
}

impl Pki {
    /// A new CA and server certificate.
    pub fn new() -> Self {
        let ca = CertificateAuthority::generate("Cassini Test CA").expect("CA");
        let server = ca.issue_server(&[]).expect("server certificate");
        Self { ca, server }
    }

    /// The CA certificate as a trust root.
    pub fn ca_certs(&self) -> Vec<CertificateDer<'static>> {
        vec![self.ca.cert_der().clone()]
    }

    /// A client certificate for `name`.
    pub fn client(&self, name: &str) -> IssuedCert {
        self.ca.issue_client(name).expect("client certificate")
    }

    /// A cluster node certificate for `name`.
    pub fn node(&self, name: &str) -> IssuedCert {
        self.ca.issue_node(name).expect("node certificate")
    }

    /// A client certificate for `name` with the given validity.
    pub fn client_with(&self, name: &str, validity: Validity) -> IssuedCert {
        self.ca
            .issue_client_with(name, validity)
            .expect("client certificate")
    }

    /// A client certificate for `name` that expired a day ago (well past the clock skew
    /// allowance).
    pub fn expired_client(&self, name: &str) -> IssuedCert {
        let now = Validity::starting_now(LEAF_VALIDITY).expect("validity");
        let expired = Validity {
            not_before: now.not_before - CLOCK_SKEW_ALLOWANCE * 48,
            not_after: now.not_before - CLOCK_SKEW_ALLOWANCE * 24,
        };
        self.client_with(name, expired)
    }

    /// The chain and key of a client certificate named only by the URI SAN `uri` (as SPIFFE
    /// identities are), with no common name.
    pub fn client_with_uri(
        &self,
        uri: &str,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let ca_key = KeyPair::from_pem(self.ca.key_pem()).expect("CA key");
        let issuer = Issuer::from_ca_cert_der(self.ca.cert_der(), ca_key).expect("CA");
        let mut params = CertificateParams::default();
        params.subject_alt_names =
            vec![SanType::URI(Ia5String::try_from(uri).expect("an IA5 URI"))];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("signed");
        (
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// The chain and key of an issued certificate, as rustls wants them.
pub fn identity_of(cert: &IssuedCert) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    (
        vec![cert.cert_der().expect("cert DER")],
        cert.key_der().expect("key DER"),
    )
}

/// Why [`FrameReader::next`] has no frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameReadError {
    /// The stream could not be read (reset, connection lost, ...).
    #[error("reading the stream: {0}")]
    Read(#[from] quinn::ReadError),
    /// The bytes are not a frame.
    #[error("decoding a frame: {0}")]
    Decode(#[from] DecodeError),
    /// The stream ended in the middle of a frame.
    #[error("the stream ended {0} byte(s) into a frame")]
    Truncated(usize),
}

/// Reads `stream` into `buf` until `buf` starts with a whole frame, and returns it decoded by
/// `decoder`; `Ok(None)` when the stream ended cleanly between frames. Bytes after the frame
/// stay in `buf` for the next call: keep one `buf` per stream. [`FrameReader`] does that for
/// you.
pub async fn read_frame(
    stream: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    decoder: &FrameDecoder,
) -> Result<Option<Frame>, FrameReadError> {
    loop {
        if let Some(frame) = decoder.decode(buf)? {
            return Ok(Some(frame));
        }
        match stream.read_chunk(64 * 1024, true).await? {
            Some(chunk) => buf.extend_from_slice(&chunk.bytes),
            None if buf.is_empty() => return Ok(None),
            None => return Err(FrameReadError::Truncated(buf.len())),
        }
    }
}

/// The frames of one quinn receive stream, decoded as they arrive.
pub struct FrameReader {
    stream: quinn::RecvStream,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl FrameReader {
    /// Reads `stream` with the default maximum frame size.
    pub fn new(stream: quinn::RecvStream) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::default(),
        }
    }

    /// The next frame; `Ok(None)` when the stream ended cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, FrameReadError> {
        read_frame(&mut self.stream, &mut self.buf, &self.decoder).await
    }

    /// The stream, e.g. to stop it.
    pub fn stream_mut(&mut self) -> &mut quinn::RecvStream {
        &mut self.stream
    }
}
