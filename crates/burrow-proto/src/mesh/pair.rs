//! Pairing over a link (PAIR_REQ / PAIR_RES): two linked nodes whose users
//! share a short code pin each other's keys, as `burrow pair` does through
//! a relay. The link already authenticated both keys; the code proves that
//! the node at the other end of *this* link is the one the other person
//! controls: SPAKE2 ([`crate::channel::pake`]) runs inside the link with the
//! link's Noise handshake hash as its channel, so a node in the middle,
//! holding two links with two different hashes, fails the confirmation.
//!
//! ```text
//! joiner (typed the code)                         offerer (showed it)
//!   PAIR_REQ(1, X)                          ->
//!                                           <-    PAIR_RES(1, ok, Y | hh_k)
//!   PAIR_REQ(2, h_k | name)                 ->    (checks h_k: one guess per code)
//!                                           <-    PAIR_RES(2, ok, name)
//! ```
//!
//! Bodies: X and Y are SPAKE2 messages (33 bytes), `hh_k` and `h_k` 32
//! bytes, `name` the rest (a hint for the other side's peer book, checked
//! with [`crate::keys::pair::valid_name`]). Any status but [`Status::Ok`]
//! ends the pairing; the offerer forgets its code after one wrong guess.

use crate::channel::code::{Code, CodeError};
use crate::channel::pake::PAKE_MSG_LEN;
use crate::wire::{DecodeError, Reader};

/// PAIR_RES status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Go on (step 1) or done (step 2).
    Ok,
    /// This node is not expecting a pairing from the asker.
    NotExpected,
    /// The code did not match: the pairing is over.
    WrongCode,
    /// The request was malformed or out of order.
    Malformed,
    /// A code this version does not know.
    Unknown(u8),
}

impl Status {
    /// The wire byte.
    pub fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::NotExpected => 1,
            Status::WrongCode => 2,
            Status::Malformed => 3,
            Status::Unknown(c) => c,
        }
    }

    /// From the wire byte.
    pub fn from_code(c: u8) -> Self {
        match c {
            0 => Status::Ok,
            1 => Status::NotExpected,
            2 => Status::WrongCode,
            3 => Status::Malformed,
            c => Status::Unknown(c),
        }
    }

    /// What to tell the user.
    pub fn explain(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NotExpected => {
                "the other node is not expecting a pairing from this one (run `burrow pair --mesh` there first)"
            }
            Status::WrongCode => "wrong code: the other node's code is different (start again there)",
            Status::Malformed => "the other node found the pairing request malformed",
            Status::Unknown(_) => "the other node refused the pairing",
        }
    }
}

/// The PAKE code for a pairing on the link whose handshake hash is `hash`:
/// the words the user typed, on a channel named by the hash.
pub fn code_for_link(words: &str, hash: &[u8; 32]) -> Result<Code, CodeError> {
    Code::parse(&format!("m{}-{}", hex::encode(&hash[..15]), words.trim()))
}

/// Step 1's answer body: Y and `hh_k`.
pub fn split_y(body: &[u8]) -> Result<(&[u8], [u8; 32]), DecodeError> {
    let mut r = Reader::new(body);
    let y = r.bytes(PAKE_MSG_LEN)?;
    let hh = r.array::<32>()?;
    r.finish()?;
    Ok((y, hh))
}

/// Step 2's request body (`h_k`, name) and step 2's answer (name).
pub fn split_confirm(body: &[u8]) -> Result<([u8; 32], &str), DecodeError> {
    let mut r = Reader::new(body);
    let h = r.array::<32>()?;
    let name = std::str::from_utf8(r.rest()).map_err(|_| DecodeError::Invalid {
        what: "pairing name",
        reason: "not UTF-8",
    })?;
    Ok((h, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::pake::{RecipientStart, SenderStart};
    use crate::random::seeded;

    #[test]
    fn the_code_is_bound_to_the_link() {
        let h1 = [1u8; 32];
        let h2 = [2u8; 32];
        let joiner = code_for_link("absorb-zebra-captain", &h1).unwrap();
        let same = code_for_link("abso zebr capt", &h1).unwrap();
        assert_eq!(joiner, same, "typed words expand as in `burrow receive`");
        // The same words over another link (a node in the middle) fail.
        let other = code_for_link("absorb-zebra-captain", &h2).unwrap();
        let (s, x) = SenderStart::new(&joiner, &mut seeded(1));
        let (_, y, hh) = RecipientStart::respond(&other, &x, &mut seeded(2)).unwrap();
        assert!(s.finish(&y, &hh).is_err());
        // The same link: both agree.
        let (s, x) = SenderStart::new(&joiner, &mut seeded(3));
        let (wait, y, hh) = RecipientStart::respond(&same, &x, &mut seeded(4)).unwrap();
        let (k1, h_k) = s.finish(&y, &hh).unwrap();
        assert_eq!(wait.verify(&h_k).unwrap(), k1);
    }

    #[test]
    fn bodies_are_checked() {
        assert!(split_y(&[0; 64]).is_err());
        assert!(split_y(&[0; 65]).is_ok());
        assert!(split_y(&[0; 66]).is_err());
        assert_eq!(split_confirm(&[7; 35]).unwrap().1, "\u{7}\u{7}\u{7}");
        assert!(split_confirm(&[0; 31]).is_err());
        for c in 0..=255u8 {
            assert_eq!(Status::from_code(c).code(), c);
        }
    }
}
