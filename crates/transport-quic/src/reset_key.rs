//! The broker's stateless reset key, kept in a file so that it survives restarts.
//!
//! A QUIC endpoint that receives a packet for a connection it does not know answers with a
//! *stateless reset* (RFC 9000 §10.3), which the peer accepts only if it carries the token the
//! endpoint announced for that connection. The tokens are derived from this key. With a key
//! drawn at random on every start (quinn's default), a restarted broker cannot reset the
//! connections of its previous life: their clients keep retransmitting into silence until
//! their idle timeout. With the same key as before, the first packet such a client sends after
//! the restart is answered with a reset, and the client reconnects at once.

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

/// Bytes of key material.
const KEY_BYTES: usize = 32;

/// The secret behind stateless reset tokens. Its `Debug` form does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct StatelessResetKey([u8; KEY_BYTES]);

impl std::fmt::Debug for StatelessResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatelessResetKey(..)")
    }
}

/// Whether [`StatelessResetKey::load_or_create`] read the file or wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// The file existed and was read.
    Loaded,
    /// The file did not exist; a new key was written to it (mode 0600).
    Created,
}

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResetKeyError {
    /// Reading or writing the file failed.
    #[error("stateless reset key {path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The failure.
        error: io::Error,
    },
    /// The file does not hold 64 hexadecimal digits.
    #[error("stateless reset key {path}: expected {} hexadecimal digits", KEY_BYTES * 2)]
    Malformed {
        /// The file.
        path: String,
    },
}

impl StatelessResetKey {
    /// A key drawn at random, as quinn does by default: it does not survive a restart.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The key `bytes`.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// Reads the key from `path` (64 hexadecimal digits), or, if the file does not exist,
    /// draws a new key and writes it there, readable by its owner only.
    pub fn load_or_create(path: &Path) -> Result<(Self, KeySource), ResetKeyError> {
        let io_error = |error| ResetKeyError::Io {
            path: path.display().to_string(),
            error,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(text.trim())
                .map(|key| (key, KeySource::Loaded))
                .ok_or_else(|| ResetKeyError::Malformed {
                    path: path.display().to_string(),
                }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let key = Self::random();
                write_private(path, &key.to_hex()).map_err(io_error)?;
                Ok((key, KeySource::Created))
            }
            Err(error) => Err(io_error(error)),
        }
    }

    /// The endpoint configuration for a server with this key: reset tokens from one subkey,
    /// and connection ids that a restarted endpoint recognises as its own from another (quinn
    /// drops a packet whose connection id its generator does not validate, without a reset).
    pub(crate) fn endpoint_config(&self) -> quinn::EndpointConfig {
        let master = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let derive = |label: &[u8]| ring::hmac::sign(&master, label);
        let reset = derive(b"cassini stateless reset");
        let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            reset.as_ref(),
        )));
        let mut cid_key = [0u8; 8];
        cid_key.copy_from_slice(&derive(b"cassini connection ids").as_ref()[..8]);
        let cid_key = u64::from_le_bytes(cid_key);
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        config
    }

    fn parse(hex: &str) -> Option<Self> {
        if hex.len() != KEY_BYTES * 2 || !hex.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; KEY_BYTES];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Self(bytes))
    }

    fn to_hex(&self) -> String {
        let mut hex: String = self.0.iter().map(|byte| format!("{byte:02x}")).collect();
        hex.push('\n');
        hex
    }
}

/// Writes `text` to a new file at `path`, mode 0600 on Unix; fails if it exists.
fn write_private(path: &Path, text: &str) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn a_created_key_is_read_back_the_same_and_is_private() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("stateless-reset.key");
        let (created, source) = StatelessResetKey::load_or_create(&path)?;
        assert_eq!(source, KeySource::Created);
        let (loaded, source) = StatelessResetKey::load_or_create(&path)?;
        assert_eq!(source, KeySource::Loaded);
        assert_eq!(created, loaded);
        assert_ne!(created, StatelessResetKey::random());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path)?.permissions().mode() & 0o777,
                0o600
            );
        }
        Ok(())
    }

    #[test]
    fn a_malformed_key_file_is_a_clear_error() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("stateless-reset.key");
        std::fs::write(&path, "not hex")?;
        let error = StatelessResetKey::load_or_create(&path)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            error,
            Some(format!(
                "stateless reset key {}: expected 64 hexadecimal digits",
                path.display()
            ))
        );
        Ok(())
    }
}
