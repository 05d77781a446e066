//! Encryption of secret settings at rest: ChaCha20-Poly1305 with a 256-bit key the operator
//! provides (`WARREN_SECRET_KEY`, 64 hex characters) to management, which seals, and to
//! workers, which open. Sealed values read `enc:v1:<hex of nonce ‖ ciphertext ‖ tag>`.

use std::sync::Arc;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use secrecy::{ExposeSecret, SecretBox};

const PREFIX: &str = "enc:v1:";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("WARREN_SECRET_KEY must be 64 hex characters (32 bytes), e.g. from `openssl rand -hex 32`")]
    BadKey,
    #[error("a secret setting cannot be decrypted: wrong WARREN_SECRET_KEY, or the value was altered")]
    Undecryptable,
    #[error("this function has secret settings, but no WARREN_SECRET_KEY was given to decrypt them")]
    NoKey,
}

/// The key, held where no `Debug` prints it and zeroed when dropped.
#[derive(Clone, Debug)]
pub struct SecretKey(Arc<SecretBox<[u8; 32]>>);

impl SecretKey {
    pub fn from_hex(text: &str) -> Result<Self, SecretError> {
        let mut key = Box::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), &mut key[..]).map_err(|_| SecretError::BadKey)?;
        Ok(SecretKey(Arc::new(SecretBox::new(key))))
    }

    /// Reads `WARREN_SECRET_KEY` if set.
    pub fn from_env() -> Result<Option<Self>, SecretError> {
        match std::env::var("WARREN_SECRET_KEY") {
            Ok(v) if !v.trim().is_empty() => Self::from_hex(&v).map(Some),
            _ => Ok(None),
        }
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(self.0.expose_secret()))
    }

    pub fn seal(&self, plain: &str) -> String {
        let nonce: [u8; 12] = rand::random();
        let sealed =
            self.cipher().encrypt(Nonce::from_slice(&nonce), plain.as_bytes()).expect("encryption of a string");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        format!("{PREFIX}{}", hex::encode(out))
    }

    pub fn open(&self, sealed: &str) -> Result<String, SecretError> {
        let bytes = sealed.strip_prefix(PREFIX).and_then(|h| hex::decode(h).ok()).ok_or(SecretError::Undecryptable)?;
        if bytes.len() < 12 + 16 {
            return Err(SecretError::Undecryptable);
        }
        let (nonce, ct) = bytes.split_at(12);
        let plain = self.cipher().decrypt(Nonce::from_slice(nonce), ct).map_err(|_| SecretError::Undecryptable)?;
        String::from_utf8(plain).map_err(|_| SecretError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_detects_tampering() {
        let k = SecretKey::from_hex(&"ab".repeat(32)).unwrap();
        let sealed = k.seal("hunter2");
        assert!(sealed.starts_with("enc:v1:") && !sealed.contains("hunter2"));
        assert_ne!(k.seal("hunter2"), sealed, "fresh nonce each time");
        assert_eq!(k.open(&sealed).unwrap(), "hunter2");
        let mut tampered = sealed.into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
        assert!(k.open(std::str::from_utf8(&tampered).unwrap()).is_err());
        let other = SecretKey::from_hex(&"cd".repeat(32)).unwrap();
        assert!(other.open(&k.seal("x")).is_err());
        assert!(SecretKey::from_hex("short").is_err());
        assert!(!format!("{k:?}").contains("ab"), "Debug never shows the key: {k:?}");
    }
}
