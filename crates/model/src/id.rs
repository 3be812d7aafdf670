//! Job ids.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A server-generated job id: the creation time then random bits, in lowercase
/// hex, so ids sort by creation time. Parsing is the only way to build one from
/// outside, which is what keeps a URL segment from ever reaching the
/// filesystem unchecked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

/// A string that is not a job id in its one valid spelling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job id {0:?}")]
pub struct InvalidJobId(pub String);

/// Hex digits of the creation time (microseconds since the epoch, 52 bits:
/// enough until 2112) that open an id.
const ID_TIME_DIGITS: usize = 13;
/// Hex digits of randomness after the time: 104 bits, so that an id cannot be
/// guessed even knowing when it was made (a v7 UUID has about 32 random bits
/// within one millisecond of one process).
const ID_RANDOM_DIGITS: usize = 26;

impl JobId {
    /// A fresh id: the creation time, then 104 random bits, in lowercase hex.
    /// Ids sort by creation time, which is what the claim queues rely on: within
    /// one process strictly (the time part never repeats nor goes back), so
    /// that only the time part, never the random one, orders them.
    pub fn generate() -> JobId {
        use std::sync::atomic::{AtomicU64, Ordering};
        static LAST_MICROS: AtomicU64 = AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut last = LAST_MICROS.load(Ordering::Relaxed);
        let micros = loop {
            let next = now.max(last + 1);
            match LAST_MICROS.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break next & 0xf_ffff_ffff_ffff,
                Err(seen) => last = seen,
            }
        };
        let mut random = [0u8; ID_RANDOM_DIGITS / 2];
        getrandom::fill(&mut random).expect("the operating system's random source is available");
        let mut s = format!("{micros:0width$x}", width = ID_TIME_DIGITS);
        for b in random {
            s.push_str(&format!("{b:02x}"));
        }
        JobId(s)
    }
    /// Validates an id taken from a URL, a file name or a message: the current
    /// form, or the canonical UUID of ids made before it (still on disk).
    pub fn parse(s: &str) -> Option<JobId> {
        // Exactly one spelling per id: no other spelling of the same id may name a
        // different file.
        let current = s.len() == ID_TIME_DIGITS + ID_RANDOM_DIGITS
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if current {
            return Some(JobId(s.to_string()));
        }
        let u = uuid::Uuid::try_parse(s).ok()?;
        let canon = u.hyphenated().to_string();
        (canon == s).then_some(JobId(canon))
    }
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for JobId {
    type Error = InvalidJobId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        JobId::parse(&s).ok_or(InvalidJobId(s))
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_reject_anything_but_the_canonical_form() {
        let id = JobId::generate();
        assert_eq!(JobId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(JobId::parse(&id.as_str().to_uppercase()), None);
        assert_eq!(JobId::parse(&id.as_str()[1..]), None);
        assert_eq!(JobId::parse(&format!("{id}0")), None);
        for bad in ["", "..", "../../etc/passwd", "a/b", "x\0y"] {
            assert_eq!(JobId::parse(bad), None, "{bad:?}");
        }
        // Ids made before the current form stay valid, in their one spelling.
        let legacy = "0193a5b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(JobId::parse(legacy).map(|i| i.0), Some(legacy.to_string()));
        assert_eq!(JobId::parse(&legacy.to_uppercase()), None);
        assert_eq!(JobId::parse(&legacy.replace('-', "")), None);
    }

    #[test]
    fn job_ids_carry_over_96_random_bits_and_sort_by_time() {
        let ids: Vec<JobId> = (0..2000).map(|_| JobId::generate()).collect();
        // Within one millisecond, ids of one process still differ in their random
        // part, and each random digit takes all 16 values across the sample.
        let random: std::collections::HashSet<&str> =
            ids.iter().map(|i| &i.as_str()[ID_TIME_DIGITS..]).collect();
        assert_eq!(random.len(), ids.len());
        const { assert!(ID_RANDOM_DIGITS * 4 >= 96) };
        for digit in ID_TIME_DIGITS..ID_TIME_DIGITS + ID_RANDOM_DIGITS {
            let seen: std::collections::HashSet<u8> =
                ids.iter().map(|i| i.as_str().as_bytes()[digit]).collect();
            assert_eq!(seen.len(), 16, "digit {digit} is not random");
        }
        assert!(
            ids.windows(2).all(|w| w[0].as_str() < w[1].as_str()),
            "ids of one process sort in the order they were made"
        );
    }

    #[test]
    fn a_bad_id_is_a_typed_error_in_serde_too() {
        let err = JobId::try_from("../x".to_string()).expect_err("not an id");
        assert_eq!(err, InvalidJobId("../x".into()));
        assert!(serde_json::from_str::<JobId>("\"../x\"").is_err());
        let id = JobId::generate();
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(serde_json::from_str::<JobId>(&json).expect("parse"), id);
    }
}
