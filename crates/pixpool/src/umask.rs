//! The file-creation mask of the whole process tree. The supervisor sets it
//! before it creates anything; children inherit it across fork and exec, so
//! every directory and file under the uploads directory gets it: by default
//! directories 0750 and files 0640, not readable by other local users.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Owner everything, group read, others nothing.
pub const DEFAULT_UMASK: Umask = Umask(0o027);

/// A umask (the permission bits new files and directories do NOT get).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Umask(u32);

/// Why a umask was refused.
#[derive(Debug, thiserror::Error)]
pub enum UmaskError {
    /// Not an octal number up to 0777.
    #[error("umask must be an octal number from 0000 to 0777 (got {0:?})")]
    Syntax(String),
    /// It would take the service's own access away.
    #[error("umask {0} takes permissions from the owner; the server could not use its own files")]
    LocksOutOwner(Umask),
}

impl Umask {
    /// The bits.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Checks what the type alone cannot: the owner keeps every permission.
    pub fn validate(self) -> Result<(), UmaskError> {
        if self.0 & 0o700 != 0 {
            return Err(UmaskError::LocksOutOwner(self));
        }
        Ok(())
    }

    fn from_bits(bits: u32) -> Result<Umask, UmaskError> {
        if bits > 0o777 {
            return Err(UmaskError::Syntax(format!("{bits:o}")));
        }
        Ok(Umask(bits))
    }
}

impl FromStr for Umask {
    type Err = UmaskError;

    /// `027`, `0027` or `0o027`: always octal, as the `umask` command writes it.
    fn from_str(s: &str) -> Result<Umask, UmaskError> {
        let digits = s.trim().strip_prefix("0o").unwrap_or(s.trim());
        if digits.is_empty() || digits.len() > 4 {
            return Err(UmaskError::Syntax(s.to_string()));
        }
        let bits = u32::from_str_radix(digits, 8).map_err(|_| UmaskError::Syntax(s.to_string()))?;
        Umask::from_bits(bits)
    }
}

impl fmt::Display for Umask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for Umask {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A string: TOML would print an integer in decimal (`23`).
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Umask {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Umask, D::Error> {
        /// `umask = "027"`, or TOML's own octal integer `umask = 0o027`.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(bits) => Umask::from_bits(bits),
            Raw::Text(s) => s.parse(),
        }
        .map_err(serde::de::Error::custom)
    }
}

/// Sets this process's umask, which every child inherits: `configured` if
/// set, else [`DEFAULT_UMASK`] combined with the inherited one, so that the
/// default never loosens a stricter mask the environment chose (systemd's
/// `UMask=0077`). Returns the mask in force. Called while the supervisor is
/// the only thread, before it creates anything.
pub fn apply(configured: Option<Umask>) -> Umask {
    // SAFETY: umask only swaps this process's mask; no memory is shared.
    let inherited = unsafe { libc::umask(0o077) } as u32;
    let mask = configured.unwrap_or(Umask(inherited | DEFAULT_UMASK.0));
    // SAFETY: as above; mode_t holds any value up to 0777.
    unsafe { libc::umask(mask.0 as libc::mode_t) };
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_in_every_spelling_and_nothing_else() {
        for ok in ["027", "0027", "0o027", " 27 "] {
            assert_eq!(ok.parse::<Umask>().expect(ok), Umask(0o027), "{ok}");
        }
        for bad in ["", "0o", "8", "1000", "0x17", "-1", "rw"] {
            assert!(bad.parse::<Umask>().is_err(), "{bad}");
        }
        assert!(Umask(0o027).validate().is_ok());
        assert!(Umask(0o277).validate().is_err());
        assert_eq!(Umask(0o7).to_string(), "0007");
    }

    #[test]
    fn toml_takes_a_string_or_an_octal_integer() {
        #[derive(Deserialize, Serialize)]
        struct T {
            umask: Umask,
        }
        let t: T = toml::from_str("umask = 0o077").expect("integer");
        assert_eq!(t.umask, Umask(0o077));
        let t: T = toml::from_str("umask = \"007\"").expect("string");
        assert_eq!(t.umask, Umask(0o007));
        let back: T = toml::from_str(&toml::to_string(&t).expect("render")).expect("round trip");
        assert_eq!(back.umask, Umask(0o007));
        assert!(toml::from_str::<T>("umask = 0o1000").is_err());
    }
}
