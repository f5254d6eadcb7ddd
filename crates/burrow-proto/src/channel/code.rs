//! Transfer codes: `<channel>-<word>-<word>-<word>`.
//!
//! The part before the first `-` is the relay channel; the rest is the PAKE
//! password and never reaches the relay. Generated codes use three words from
//! the BIP-39 English list (2048 words, each identified by its first four
//! letters), so a generated secret carries 33 bits and a receiver can type
//! just the first four letters of each word.

use thiserror::Error;
use zeroize::Zeroizing;

/// Words in a generated code.
pub const WORDS_PER_CODE: usize = 3;
/// Longest channel name accepted anywhere (relay and peers).
pub const MAX_CHANNEL_LEN: usize = 32;
/// Longest secret part of a code.
pub const MAX_SECRET_LEN: usize = 256;

/// Why a code or channel name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CodeError {
    /// No `-` separates channel and secret.
    #[error("a code looks like 7-word-word-word: channel, then the secret words")]
    Shape,
    /// The channel part has characters other than letters, digits and `_`, or is too long.
    #[error("invalid channel name {0:?}: use 1-32 letters, digits or '_'")]
    Channel(String),
    /// The secret part is empty or too long.
    #[error("the secret part of the code must be 1-{MAX_SECRET_LEN} characters")]
    Secret,
}

/// Checks a channel name: 1–32 ASCII letters, digits or `_`.
pub fn validate_channel(name: &str) -> Result<(), CodeError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CodeError::Channel(name.chars().take(40).collect()))
    }
}

/// A parsed transfer code. `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Code {
    channel: String,
    secret: Zeroizing<String>,
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Code")
            .field("channel", &self.channel)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The word list generated codes draw from.
pub fn wordlist() -> &'static [&'static str; 2048] {
    bip39::Language::English.word_list()
}

/// Expands a word typed by a person: a full list word, or a unique prefix of at
/// least four letters. Returns `None` for anything else (it is then used as typed).
pub fn expand_word(word: &str) -> Option<&'static str> {
    let w = word.to_ascii_lowercase();
    let list = wordlist();
    if let Ok(i) = list.binary_search(&w.as_str()) {
        return Some(list[i]);
    }
    if w.len() < 4 {
        return None;
    }
    let mut hits = list.iter().filter(|c| c.starts_with(&w));
    match (hits.next(), hits.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

/// Candidate completions of a partially typed word (for shell-style completion).
pub fn complete_word(prefix: &str) -> Vec<&'static str> {
    let p = prefix.to_ascii_lowercase();
    wordlist().iter().copied().filter(|w| w.starts_with(&p)).collect()
}

/// `n` random list words joined by `-` (11 bits each); `fill` supplies
/// cryptographically secure random bytes.
pub fn random_words(n: usize, fill: &mut dyn FnMut(&mut [u8])) -> Zeroizing<String> {
    let list = wordlist();
    let mut words = Vec::with_capacity(n);
    for _ in 0..n {
        let mut b = [0u8; 2];
        fill(&mut b);
        words.push(list[usize::from(u16::from_be_bytes(b) & 0x07ff)]);
    }
    Zeroizing::new(words.join("-"))
}

impl Code {
    /// A fresh code on `channel` with [`WORDS_PER_CODE`] random words.
    /// `fill` supplies cryptographically secure random bytes.
    pub fn generate(channel: &str, fill: &mut dyn FnMut(&mut [u8])) -> Result<Self, CodeError> {
        validate_channel(channel)?;
        Ok(Self {
            channel: channel.to_owned(),
            secret: random_words(WORDS_PER_CODE, fill),
        })
    }

    /// Parses `channel-secret`. Surrounding white space is ignored, inner
    /// white space counts as `-`, and each word that is a unique prefix of a
    /// list word is expanded, so `7 Abso-zebr-CAPT` reads as `7-absorb-zebra-captain`.
    pub fn parse(s: &str) -> Result<Self, CodeError> {
        let joined = s.split_whitespace().collect::<Vec<_>>().join("-");
        let (channel, secret) = joined.split_once('-').ok_or(CodeError::Shape)?;
        validate_channel(channel)?;
        if secret.is_empty() || secret.len() > MAX_SECRET_LEN {
            return Err(CodeError::Secret);
        }
        let words: Vec<String> = secret
            .split('-')
            .map(|w| match expand_word(w) {
                Some(full) => full.to_owned(),
                None => w.to_owned(),
            })
            .collect();
        if words.iter().any(String::is_empty) {
            return Err(CodeError::Secret);
        }
        Ok(Self {
            channel: channel.to_owned(),
            secret: Zeroizing::new(words.join("-")),
        })
    }

    /// Replaces the channel (the relay may pick one after the secret was chosen).
    pub fn with_channel(mut self, channel: &str) -> Result<Self, CodeError> {
        validate_channel(channel)?;
        self.channel = channel.to_owned();
        Ok(self)
    }

    /// The relay channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The PAKE password bytes.
    pub fn secret(&self) -> &[u8] {
        self.secret.as_bytes()
    }

    /// The whole code as a person types it. This contains the secret: show it
    /// to the user, never log it.
    pub fn reveal(&self) -> String {
        format!("{}-{}", self.channel, self.secret.as_str())
    }

    /// Rough strength of the secret in bits, for warnings about weak custom codes.
    pub fn secret_bits(&self) -> f64 {
        let words: Vec<&str> = self.secret.split('-').collect();
        if words.iter().all(|w| wordlist().binary_search(w).is_ok()) {
            11.0 * words.len() as f64
        } else {
            // Unknown text: assume ~2 bits per character, a pessimistic estimate.
            2.0 * self.secret.len() as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_parse_round_trip() {
        let mut n = 0u8;
        let mut fill = |b: &mut [u8]| {
            for x in b.iter_mut() {
                n = n.wrapping_add(37);
                *x = n;
            }
        };
        let c = Code::generate("42", &mut fill).unwrap();
        let again = Code::parse(&c.reveal()).unwrap();
        assert_eq!(c, again);
        assert_eq!(c.secret_bits(), 33.0);
        assert!(!format!("{c:?}").contains(std::str::from_utf8(c.secret()).unwrap()));
    }

    #[test]
    fn parse_normalises_prefixes_case_and_spaces() {
        let c = Code::parse("  7 Abso-zebr-CAPT ").unwrap();
        assert_eq!(c.reveal(), "7-absorb-zebra-captain");
        // Not a list word: used as typed.
        assert_eq!(Code::parse("x-hunter2").unwrap().secret(), b"hunter2");
    }

    #[test]
    fn parse_rejects_bad_shapes() {
        assert_eq!(Code::parse("nodash"), Err(CodeError::Shape));
        assert_eq!(Code::parse("7-"), Err(CodeError::Secret));
        assert_eq!(Code::parse("7-a--b"), Err(CodeError::Secret));
        assert!(matches!(Code::parse("../x-a"), Err(CodeError::Channel(_))));
        assert!(matches!(
            Code::parse(&format!("{}-a", "9".repeat(33))),
            Err(CodeError::Channel(_))
        ));
    }

    #[test]
    fn completion_uses_the_list() {
        assert_eq!(complete_word("zebr"), vec!["zebra"]);
        assert!(complete_word("ab").len() > 3);
        assert_eq!(expand_word("aba"), None);
    }
}
