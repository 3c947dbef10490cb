//! Sender incarnations (DESIGN §4): which life of a sender's numbering a
//! message belongs to.
//!
//! An agent numbers its batches 1, 2, 3, … in its database. When that
//! database is lost or replaced (a new disk, a re-provisioned gateway under
//! the same agent id), the agent starts again at 1. Its batch identity is
//! therefore (agent, incarnation, seq): the incarnation is a random id made
//! when the database is created and stored in it, so the new batches of a
//! re-provisioned agent are never mistaken for replays of the old ones.
//!
//! An [`Incarnation`] is 64 random bits. JSON (and every other
//! human-readable format) writes it as exactly 16 lowercase hexadecimal
//! digits, `"9f3a0c1d2e4b5a67"`; binary formats (postcard) as its 8 bytes,
//! most significant first. Anything else — another length, upper case, a
//! number — is refused when it is read ([`IncarnationError`]).

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One life of a sender's sequence numbers (see the module documentation).
///
/// The default, `0000000000000000`, is the incarnation of tools and tests
/// that build batches by hand ([`crate::batch::Batch::new`]); an agent draws
/// its own at random when it creates its database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Incarnation(u64);

/// The digits of an incarnation's text form.
const DIGITS: usize = 16;

/// Why a text is not an incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncarnationError {
    /// The text refused (its first 64 characters).
    text: heapless::String<64>,
}

impl fmt::Display for IncarnationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid incarnation {:?}: expected {DIGITS} lowercase hexadecimal digits",
            self.text.as_str()
        )
    }
}

impl core::error::Error for IncarnationError {}

impl Incarnation {
    /// The incarnation with id `id`.
    pub const fn new(id: u64) -> Self {
        Incarnation(id)
    }

    /// Its 64-bit id.
    pub const fn id(self) -> u64 {
        self.0
    }

    /// Parses the text form: exactly 16 lowercase hexadecimal digits.
    pub fn parse(text: &str) -> Result<Self, IncarnationError> {
        let refuse = || {
            let mut shown = heapless::String::new();
            for c in text.chars() {
                if shown.push(c).is_err() {
                    break;
                }
            }
            IncarnationError { text: shown }
        };
        if text.len() != DIGITS {
            return Err(refuse());
        }
        let mut id = 0u64;
        for b in text.bytes() {
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return Err(refuse()),
            };
            id = (id << 4) | u64::from(digit);
        }
        Ok(Incarnation(id))
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for Incarnation {
    type Err = IncarnationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Incarnation::parse(s)
    }
}

impl Serialize for Incarnation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.to_be_bytes().serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Incarnation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            struct Text;
            impl serde::de::Visitor<'_> for Text {
                type Value = Incarnation;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    write!(f, "{DIGITS} lowercase hexadecimal digits")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Incarnation, E> {
                    Incarnation::parse(v).map_err(E::custom)
                }
            }
            d.deserialize_str(Text)
        } else {
            <[u8; 8]>::deserialize(d).map(|b| Incarnation(u64::from_be_bytes(b)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_is_sixteen_lowercase_hex_digits() {
        let i = Incarnation::new(0x9f3a_0c1d_2e4b_5a67);
        assert_eq!(format!("{i}"), "9f3a0c1d2e4b5a67");
        assert_eq!(Incarnation::parse("9f3a0c1d2e4b5a67"), Ok(i));
        assert_eq!(format!("{}", Incarnation::default()), "0000000000000000");
        assert_eq!(
            "ffffffffffffffff".parse::<Incarnation>(),
            Ok(Incarnation::new(u64::MAX))
        );
        for bad in [
            "",
            "9f3a0c1d2e4b5a6",
            "9f3a0c1d2e4b5a670",
            "9F3A0C1D2E4B5A67",
            "9f3a0c1d2e4b5a6g",
            "+f3a0c1d2e4b5a67",
            " 9f3a0c1d2e4b5a6",
            "9f3a0c1d2e4b5aé",
        ] {
            let err = Incarnation::parse(bad).unwrap_err();
            assert!(format!("{err}").contains("16 lowercase"), "{bad:?}: {err}");
        }
    }
}
