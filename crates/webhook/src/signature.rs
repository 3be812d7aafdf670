//! Standard Webhooks signatures (standardwebhooks.com): `v1,` and the base64
//! HMAC-SHA256, keyed by the secret, of `"<webhook-id>.<webhook-timestamp>.<body>"`.

use base64::Engine;

/// The signing secret, `whsec_<base64 key>` as the scheme writes it. Its `Debug`
/// never shows the key.
pub struct Secret {
    key: ring::hmac::Key,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a secret was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// Not `whsec_` followed by base64.
    #[error("a webhook secret is `whsec_` followed by a base64 key")]
    Format,
    /// A key shorter than [`MIN_KEY_BYTES`].
    #[error("the webhook secret's key is {0} bytes; at least {MIN_KEY_BYTES} are needed")]
    Short(usize),
}

/// The shortest key accepted (the scheme's own libraries make 24 to 64 bytes).
pub const MIN_KEY_BYTES: usize = 16;

impl Secret {
    /// Parses `whsec_<base64>` (surrounding whitespace ignored: a secret read from a
    /// file often ends in a newline).
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix("whsec_")
            .ok_or(SecretError::Format)?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::Format)?;
        if key.len() < MIN_KEY_BYTES {
            return Err(SecretError::Short(key.len()));
        }
        Ok(Secret {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key),
        })
    }

    /// The `webhook-signature` header's value for message `id` sent at `timestamp`
    /// (Unix seconds) with `body`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        let tag = ctx.sign();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference libraries.
    #[test]
    fn signs_as_the_reference_implementation() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn malformed_and_short_secrets_are_refused_and_never_shown() {
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjU").expect_err("refused"),
            SecretError::Format
        );
        assert_eq!(
            Secret::parse("whsec_!!!").expect_err("refused"),
            SecretError::Format
        );
        assert_eq!(
            Secret::parse("whsec_c2hvcnQ=").expect_err("refused"),
            SecretError::Short(5)
        );
        let secret = Secret::parse(" whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").expect("trimmed");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }
}
