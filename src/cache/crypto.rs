//! The cache's encryption: AES-256-GCM ([`ring::aead`]) with a random
//! 96-bit nonce per value and the entry's key as associated data, so a
//! value copied under another key does not open. Each sealed value names
//! the key that sealed it (a key id: the first 8 hex digits of the key's
//! SHA-256), so that keys can rotate: `encryption_key` lists one or more
//! keys, the first seals, every one opens.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Why `encryption_key` is not usable. Never contains the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A part is not base64.
    #[error("key {index} is not base64")]
    NotBase64 {
        /// 1-based position in the list.
        index: usize,
    },
    /// A part does not decode to 32 bytes.
    #[error("key {index} is {len} bytes long; AES-256 needs 32 (e.g. `openssl rand -base64 32`)")]
    Length {
        /// 1-based position in the list.
        index: usize,
        /// Its decoded length.
        len: usize,
    },
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No configured key has the value's key id.
    #[error("it was encrypted with another key (id {0})")]
    UnknownKey(KeyId),
    /// The key matched but the value did not authenticate (corrupt, or
    /// moved to another entry).
    #[error("it does not decrypt (corrupt or tampered with)")]
    Corrupt,
}

/// The first 4 bytes of a key's SHA-256, written as 8 hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyId([u8; 4]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A value as stored: the sealing key's id and base64 of nonce ‖ ciphertext ‖ tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// [`KeyId`] of the key that sealed it.
    pub kid: String,
    /// Base64 of nonce ‖ ciphertext ‖ tag.
    pub data: String,
}

/// The configured keys; `Debug` shows only their ids.
pub struct Keys {
    keys: Vec<(KeyId, LessSafeKey)>,
    rng: SystemRandom,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

impl Keys {
    /// Read `encryption_key`: base64 keys of 32 bytes separated by commas
    /// (or white space); the first seals.
    pub fn parse(secret: &Secret) -> Result<Keys, KeyError> {
        let parts = secret.expose().split([',', ' ', '\n', '\t']);
        let parts = parts.filter(|part| !part.is_empty()).enumerate();
        let mut keys = Vec::new();
        for (index, part) in parts.map(|(i, part)| (i + 1, part)) {
            let bytes = STANDARD
                .decode(part)
                .or_else(|_| STANDARD_NO_PAD.decode(part))
                .map_err(|_| KeyError::NotBase64 { index })?;
            let len = bytes.len();
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| KeyError::Length { index, len })?;
            let hash = digest(&SHA256, &bytes);
            let mut id = [0; 4];
            id.copy_from_slice(&hash.as_ref()[..4]);
            keys.push((KeyId(id), LessSafeKey::new(unbound)));
        }
        if keys.is_empty() {
            return Err(KeyError::Length { index: 1, len: 0 });
        }
        Ok(Keys {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// Seal `plain` for entry `aad` with the first key; `None` only when the
    /// system's random source fails.
    pub fn seal(&self, aad: &str, plain: &[u8]) -> Option<Sealed> {
        let (id, key) = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut buffer = plain.to_vec();
        let aad = Aad::from(aad.as_bytes());
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad, &mut buffer)
            .ok()?;
        let mut data = nonce.to_vec();
        data.append(&mut buffer);
        Some(Sealed {
            kid: id.to_string(),
            data: STANDARD.encode(data),
        })
    }

    /// Open `sealed`, stored for entry `aad`.
    pub fn open(&self, aad: &str, sealed: &Sealed) -> Result<Vec<u8>, OpenError> {
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| id.to_string() == sealed.kid)
            .ok_or_else(|| OpenError::UnknownKey(parse_id(&sealed.kid)))?;
        let mut data = STANDARD
            .decode(&sealed.data)
            .map_err(|_| OpenError::Corrupt)?;
        if data.len() < NONCE_LEN {
            return Err(OpenError::Corrupt);
        }
        let mut ciphertext = data.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&data).map_err(|_| OpenError::Corrupt)?;
        let plain = key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut ciphertext)
            .map_err(|_| OpenError::Corrupt)?;
        Ok(plain.to_vec())
    }
}

/// A key id as written (an unreadable one shows as `00000000`).
fn parse_id(text: &str) -> KeyId {
    let mut id = [0; 4];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = text
            .get(i * 2..i * 2 + 2)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .unwrap_or(0);
    }
    KeyId(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const KEY_B: &str = "HxgdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

    fn keys(text: &str) -> Keys {
        Keys::parse(&Secret::new(text)).unwrap()
    }

    #[test]
    fn seals_and_opens_with_fresh_nonces() {
        let keys = keys(KEY_A);
        let one = keys.seal("entry", b"token").unwrap();
        let two = keys.seal("entry", b"token").unwrap();
        assert_ne!(one.data, two.data, "a random nonce per value");
        assert_eq!(keys.open("entry", &one).unwrap(), b"token");
        assert!(!one.data.contains("token"));
    }

    #[test]
    fn another_entry_or_a_flipped_bit_does_not_open() {
        let keys = keys(KEY_A);
        let sealed = keys.seal("entry", b"token").unwrap();
        assert_eq!(keys.open("other", &sealed), Err(OpenError::Corrupt));
        let mut bytes = STANDARD.decode(&sealed.data).unwrap();
        bytes[NONCE_LEN] ^= 1;
        let flipped = Sealed {
            data: STANDARD.encode(bytes),
            ..sealed
        };
        assert_eq!(keys.open("entry", &flipped), Err(OpenError::Corrupt));
    }

    #[test]
    fn keys_rotate_the_first_seals_every_one_opens() {
        let old = keys(KEY_A).seal("entry", b"token").unwrap();
        let rotated = keys(&format!("{KEY_B}, {KEY_A}"));
        assert_eq!(rotated.open("entry", &old).unwrap(), b"token");
        let new = rotated.seal("entry", b"token").unwrap();
        assert_ne!(new.kid, old.kid);
        let error = keys(KEY_A).open("entry", &new).unwrap_err();
        assert_eq!(error, OpenError::UnknownKey(parse_id(&new.kid)));
        assert!(error.to_string().contains(&new.kid));
    }

    #[test]
    fn keys_must_be_base64_of_32_bytes() {
        let short = Keys::parse(&Secret::new("AAEC")).unwrap_err();
        assert!(short.to_string().contains("3 bytes"), "{short}");
        let bad = Keys::parse(&Secret::new(format!("{KEY_A},not base64!"))).unwrap_err();
        assert!(matches!(bad, KeyError::NotBase64 { index: 2 }), "{bad}");
        assert!(Keys::parse(&Secret::new(" , ")).is_err());
        let debug = format!("{:?}", keys(KEY_A));
        assert!(!debug.contains(KEY_A) && debug.len() == 10, "{debug}");
    }
}
