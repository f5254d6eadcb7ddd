//! The relay's channel table (seed 001), as a sans-IO state machine.
//!
//! It owns every rule of the channel API: who may join, which step may follow
//! which, the two-IP limit, one PAKE attempt per channel, expiry. The relay's
//! tokio layer only parses HTTP, calls these methods with the caller's IP and
//! the current time, and wakes long-polls when [`ChannelState::version`] moves.
//!
//! Rules:
//! - A channel never admits more than [`MAX_IPS_PER_CHANNEL`] distinct IPs; any
//!   request from a further IP gets [`ApiError::Full`].
//! - A sender may create a channel (named or relay-picked); a recipient may only
//!   join an existing one. Each role is taken once.
//! - `x` (sender), then `y` + `hh_k` (recipient), then `h_k` (sender): each is
//!   set once; setting it again to a different value is refused, so a channel
//!   carries exactly one PAKE attempt.
//! - Stapling is allowed only after `h_k`, i.e. after key confirmation.
//! - A closed channel keeps answering with its reason for a short grace period,
//!   then is removed; idle channels expire.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::channel::api::{
    CURVE_ED25519, ChannelRequest, ChannelState, ErrorBody, JoinRequest, JoinResponse, MAX_HEX_FIELD, Role,
};
use crate::channel::code::validate_channel;

/// Never more than this many distinct IPs use one channel.
pub const MAX_IPS_PER_CHANNEL: usize = 2;
/// How long a closed channel keeps answering with its reason.
pub const CLOSED_GRACE: Duration = Duration::from_secs(60);
/// Longest close reason stored.
pub const MAX_REASON: usize = 200;

/// The default idle expiry: a live client long-polls for at most
/// [`MAX_WAIT_MS`](super::api::MAX_WAIT_MS) and asks again at once, so a
/// channel nobody asked about for two of those (and five seconds) has
/// nobody waiting on it.
pub const UNATTENDED: Duration = Duration::from_millis(2 * super::api::MAX_WAIT_MS + 5_000);

/// What one address counts as for the per-address channel limit: an IPv4
/// address (an IPv4-mapped IPv6 one too), or the /64 an IPv6 address is in
/// (a host usually has the whole /64 to pick from).
pub fn share_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// Limits of a [`ChannelTable`].
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// A channel nobody touched for this long is removed (a stapled one,
    /// a live transfer, only once its pipe ends).
    pub idle_ttl: Duration,
    /// Most channels one address (see [`share_key`]) may be a member of at once.
    pub max_channels_per_ip: usize,
    /// Most channels in the table.
    pub max_channels: usize,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            idle_ttl: UNATTENDED,
            max_channels_per_ip: 64,
            max_channels: 100_000,
        }
    }
}

/// A refused API call. Each maps to an HTTP status and a stable `kind`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// A third IP tried to use the channel.
    #[error("channel {0} is full: two other addresses already use it")]
    Full(String),
    /// The role is already taken on this channel.
    #[error("channel {channel} already has a {role}", role = .role.as_str())]
    RoleTaken {
        /// The channel.
        channel: String,
        /// The role.
        role: Role,
    },
    /// No such channel (or it expired).
    #[error("no channel {0}: check the code, or the sender may have stopped")]
    UnknownChannel(String),
    /// The curve is not supported.
    #[error("unknown curve {0:?}: this relay supports \"ed25519\"")]
    UnknownCurve(String),
    /// The UUID is not a member of this channel.
    #[error("this uuid is not a member of channel {0}")]
    BadUuid(String),
    /// The channel name is invalid.
    #[error("invalid channel name: use 1-32 letters, digits or '_'")]
    BadChannelName,
    /// A step came before the one it needs.
    #[error("out of order: {0}")]
    OutOfOrder(&'static str),
    /// A field was already set to another value (one PAKE attempt per channel).
    #[error("{0} is already set on this channel (one attempt per channel)")]
    AlreadySet(&'static str),
    /// A field's value is malformed.
    #[error("invalid field {field}: {reason}")]
    BadField {
        /// The field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// This role may not set this field.
    #[error("the {role} may not set {field}", role = .role.as_str())]
    WrongRole {
        /// The caller's role.
        role: Role,
        /// The field.
        field: &'static str,
    },
    /// The channel was closed.
    #[error("channel {channel} is closed: {reason}")]
    Closed {
        /// The channel.
        channel: String,
        /// Why.
        reason: String,
    },
    /// The caller's IP is in too many channels.
    #[error("too many open channels from your address (max {0})")]
    TooManyChannels(usize),
    /// The relay is at capacity.
    #[error("the relay is at capacity, try again later")]
    Capacity,
}

impl ApiError {
    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Full(_) => 403,
            ApiError::BadUuid(_) | ApiError::WrongRole { .. } => 403,
            ApiError::RoleTaken { .. } | ApiError::OutOfOrder(_) | ApiError::AlreadySet(_) => 409,
            ApiError::UnknownChannel(_) => 404,
            ApiError::Closed { .. } => 410,
            ApiError::UnknownCurve(_) | ApiError::BadChannelName | ApiError::BadField { .. } => 400,
            ApiError::TooManyChannels(_) => 429,
            ApiError::Capacity => 503,
        }
    }

    /// Stable machine-readable kind.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Full(_) => "full",
            ApiError::RoleTaken { .. } => "role_taken",
            ApiError::UnknownChannel(_) => "unknown_channel",
            ApiError::UnknownCurve(_) => "unknown_curve",
            ApiError::BadUuid(_) => "bad_uuid",
            ApiError::BadChannelName => "bad_channel",
            ApiError::OutOfOrder(_) => "out_of_order",
            ApiError::AlreadySet(_) => "already_set",
            ApiError::BadField { .. } => "bad_field",
            ApiError::WrongRole { .. } => "wrong_role",
            ApiError::Closed { .. } => "closed",
            ApiError::TooManyChannels(_) => "too_many_channels",
            ApiError::Capacity => "capacity",
        }
    }

    /// The JSON body for this error.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.to_string(),
            kind: self.kind().to_owned(),
        }
    }
}

#[derive(Debug)]
struct Channel {
    curve: String,
    sender: Option<[u8; 16]>,
    recipient: Option<[u8; 16]>,
    ips: Vec<IpAddr>,
    x: Option<String>,
    y: Option<String>,
    hh_k: Option<String>,
    h_k: Option<String>,
    stapled: bool,
    closed: Option<(String, Instant)>,
    last_active: Instant,
    version: u64,
}

impl Channel {
    fn state(&self, name: &str) -> ChannelState {
        ChannelState {
            channel: name.to_owned(),
            curve: self.curve.clone(),
            sender: self.sender.is_some(),
            recipient: self.recipient.is_some(),
            x: self.x.clone(),
            y: self.y.clone(),
            hh_k: self.hh_k.clone(),
            h_k: self.h_k.clone(),
            stapled: self.stapled,
            closed: self.closed.is_some(),
            reason: self.closed.as_ref().map(|c| c.0.clone()),
            version: self.version,
        }
    }

    /// Admits `ip` as a member; `Ok(true)` if its address (see
    /// [`share_key`]) is new to the channel and so counts one more channel.
    fn admit_ip(&mut self, name: &str, ip: IpAddr) -> Result<bool, ApiError> {
        if self.ips.contains(&ip) {
            Ok(false)
        } else if self.ips.len() >= MAX_IPS_PER_CHANNEL {
            Err(ApiError::Full(name.to_owned()))
        } else {
            let new_key = !self.has_key(share_key(ip));
            self.ips.push(ip);
            Ok(new_key)
        }
    }

    /// Whether a member's address counts as `key`.
    fn has_key(&self, key: IpAddr) -> bool {
        self.ips.iter().any(|i| share_key(*i) == key)
    }

    /// The addresses this channel counts against, each once.
    fn keys(&self) -> Vec<IpAddr> {
        let mut keys: Vec<IpAddr> = self.ips.iter().map(|i| share_key(*i)).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    fn role_of(&self, uuid: &[u8; 16]) -> Option<Role> {
        if self.sender.as_ref() == Some(uuid) {
            Some(Role::Sender)
        } else if self.recipient.as_ref() == Some(uuid) {
            Some(Role::Recipient)
        } else {
            None
        }
    }
}

/// What a successful staple check tells the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StapleTicket {
    /// The role of the connection.
    pub role: Role,
}

/// All channels of one relay.
#[derive(Debug, Default)]
pub struct ChannelTable {
    cfg: TableConfig,
    channels: HashMap<String, Channel>,
    /// How many channels each address (see [`share_key`]) is a member of,
    /// kept with every change, so a join costs the same at 100,000
    /// channels as at none.
    ip_channels: HashMap<IpAddr, usize>,
}

/// One more channel for `ip`'s address.
fn count_in(counts: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    *counts.entry(share_key(ip)).or_insert(0) += 1;
}

/// One channel fewer for each of `keys` (addresses, each once).
fn count_out(counts: &mut HashMap<IpAddr, usize>, keys: &[IpAddr]) {
    for key in keys {
        if let Some(n) = counts.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(key);
            }
        }
    }
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let mut out = [0u8; 16];
    if s.len() != 32 {
        return None;
    }
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn check_hex(field: &'static str, v: &str, exact: Option<usize>) -> Result<(), ApiError> {
    if v.len() > MAX_HEX_FIELD
        || v.is_empty()
        || !v.len().is_multiple_of(2)
        || !v.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(ApiError::BadField {
            field,
            reason: "expected hex",
        });
    }
    if let Some(n) = exact
        && v.len() != 2 * n
    {
        return Err(ApiError::BadField {
            field,
            reason: "wrong length",
        });
    }
    Ok(())
}

/// Sets `slot` once; the same value again is accepted (idempotent retries).
fn set_once(slot: &mut Option<String>, field: &'static str, v: &str) -> Result<bool, ApiError> {
    match slot {
        Some(old) if old.eq_ignore_ascii_case(v) => Ok(false),
        Some(_) => Err(ApiError::AlreadySet(field)),
        None => {
            *slot = Some(v.to_ascii_lowercase());
            Ok(true)
        }
    }
}

impl ChannelTable {
    /// An empty table with these limits.
    pub fn new(cfg: TableConfig) -> Self {
        Self {
            cfg,
            channels: HashMap::new(),
            ip_channels: HashMap::new(),
        }
    }

    /// Channels currently held (open or in their closed grace period).
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// True if no channel is held.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    fn channels_of(&self, ip: IpAddr) -> usize {
        self.ip_channels.get(&share_key(ip)).copied().unwrap_or(0)
    }

    fn pick_channel(&self, fill: &mut dyn FnMut(&mut [u8])) -> Option<String> {
        // Short numbers first; widen when the short space is crowded.
        for digits in [4u32, 4, 4, 4, 5, 5, 6, 6, 8, 8] {
            let mut b = [0u8; 8];
            fill(&mut b);
            let space = 10u64.pow(digits) - 1;
            let n = 1 + u64::from_be_bytes(b) % space;
            let name = n.to_string();
            if !self.channels.contains_key(&name) {
                return Some(name);
            }
        }
        None
    }

    /// `POST /join`.
    pub fn join(
        &mut self,
        now: Instant,
        ip: IpAddr,
        req: &JoinRequest,
        fill: &mut dyn FnMut(&mut [u8]),
    ) -> Result<JoinResponse, ApiError> {
        let curve = req.curve.as_deref().unwrap_or(CURVE_ED25519);
        if curve != CURVE_ED25519 {
            return Err(ApiError::UnknownCurve(curve.chars().take(32).collect()));
        }
        let mut uuid = [0u8; 16];
        fill(&mut uuid);
        let name = match &req.channel {
            Some(n) => {
                validate_channel(n).map_err(|_| ApiError::BadChannelName)?;
                n.clone()
            }
            None if req.role == Role::Sender => {
                if self.channels.len() >= self.cfg.max_channels {
                    return Err(ApiError::Capacity);
                }
                self.pick_channel(fill).ok_or(ApiError::Capacity)?
            }
            None => return Err(ApiError::OutOfOrder("a recipient must name the channel")),
        };
        if let Some(ch) = self.channels.get_mut(&name) {
            if let Some((reason, _)) = &ch.closed {
                return Err(ApiError::Closed {
                    channel: name,
                    reason: reason.clone(),
                });
            }
            if !ch.ips.contains(&ip) && ch.ips.len() >= MAX_IPS_PER_CHANNEL {
                return Err(ApiError::Full(name));
            }
            let (slot, other) = match req.role {
                Role::Sender => (&mut ch.sender, ch.recipient),
                Role::Recipient => (&mut ch.recipient, ch.sender),
            };
            // Two members never share a handle, whatever the random source did.
            while Some(uuid) == other {
                fill(&mut uuid);
            }
            if slot.is_some() {
                return Err(ApiError::RoleTaken {
                    channel: name,
                    role: req.role,
                });
            }
            if ch.curve != curve {
                return Err(ApiError::UnknownCurve(curve.to_owned()));
            }
            // (A new member's address may not be in this channel's counts yet.)
            if !ch.has_key(share_key(ip)) && self.channels_of(ip) >= self.cfg.max_channels_per_ip {
                return Err(ApiError::TooManyChannels(self.cfg.max_channels_per_ip));
            }
            let ch = self.channels.get_mut(&name).ok_or(ApiError::Capacity)?;
            if ch.admit_ip(&name, ip)? {
                count_in(&mut self.ip_channels, ip);
            }
            match req.role {
                Role::Sender => ch.sender = Some(uuid),
                Role::Recipient => ch.recipient = Some(uuid),
            }
            ch.last_active = now;
            ch.version += 1;
        } else {
            if req.role == Role::Recipient {
                return Err(ApiError::UnknownChannel(name));
            }
            if self.channels.len() >= self.cfg.max_channels {
                return Err(ApiError::Capacity);
            }
            if self.channels_of(ip) >= self.cfg.max_channels_per_ip {
                return Err(ApiError::TooManyChannels(self.cfg.max_channels_per_ip));
            }
            count_in(&mut self.ip_channels, ip);
            self.channels.insert(
                name.clone(),
                Channel {
                    curve: curve.to_owned(),
                    sender: Some(uuid),
                    recipient: None,
                    ips: vec![ip],
                    x: None,
                    y: None,
                    hh_k: None,
                    h_k: None,
                    stapled: false,
                    closed: None,
                    last_active: now,
                    version: 1,
                },
            );
        }
        Ok(JoinResponse {
            channel: name,
            uuid: hex::encode(uuid),
        })
    }

    /// Finds the channel and checks IP and UUID; returns the caller's role.
    fn member(&mut self, ip: IpAddr, channel: &str, uuid: &str) -> Result<(&mut Channel, Role), ApiError> {
        let ch = self
            .channels
            .get_mut(channel)
            .ok_or_else(|| ApiError::UnknownChannel(channel.chars().take(40).collect()))?;
        if ch.admit_ip(channel, ip)? {
            count_in(&mut self.ip_channels, ip);
        }
        let role = parse_uuid(uuid)
            .and_then(|u| ch.role_of(&u))
            .ok_or_else(|| ApiError::BadUuid(channel.to_owned()))?;
        Ok((ch, role))
    }

    /// `POST /channel`: applies the request's step (if any) and returns the state.
    /// A request that only reads (or only closes) succeeds on a closed channel,
    /// so the other peer learns the reason.
    pub fn post(&mut self, now: Instant, ip: IpAddr, req: &ChannelRequest) -> Result<ChannelState, ApiError> {
        let (ch, role) = self.member(ip, &req.channel, &req.uuid)?;
        let mut changed = false;
        let writes = req.x.is_some() || req.y.is_some() || req.hh_k.is_some() || req.h_k.is_some();
        if writes && let Some((reason, _)) = &ch.closed {
            return Err(ApiError::Closed {
                channel: req.channel.clone(),
                reason: reason.clone(),
            });
        }
        if let Some(x) = &req.x {
            if role != Role::Sender {
                return Err(ApiError::WrongRole { role, field: "x" });
            }
            check_hex("x", x, None)?;
            changed |= set_once(&mut ch.x, "x", x)?;
        }
        match (&req.y, &req.hh_k) {
            (None, None) => {}
            (Some(y), Some(hh)) => {
                if role != Role::Recipient {
                    return Err(ApiError::WrongRole { role, field: "y" });
                }
                if ch.x.is_none() {
                    return Err(ApiError::OutOfOrder("y before the sender posted x"));
                }
                check_hex("y", y, None)?;
                check_hex("hh_k", hh, Some(32))?;
                let fresh_y = set_once(&mut ch.y, "y", y)?;
                let fresh_hh = set_once(&mut ch.hh_k, "hh_k", hh)?;
                changed |= fresh_y | fresh_hh;
            }
            _ => {
                return Err(ApiError::BadField {
                    field: "y",
                    reason: "y and hh_k are posted together",
                });
            }
        }
        if let Some(h) = &req.h_k {
            if role != Role::Sender {
                return Err(ApiError::WrongRole { role, field: "h_k" });
            }
            if ch.hh_k.is_none() {
                return Err(ApiError::OutOfOrder("h_k before the recipient posted y and hh_k"));
            }
            check_hex("h_k", h, Some(32))?;
            changed |= set_once(&mut ch.h_k, "h_k", h)?;
        }
        if req.close == Some(true) && ch.closed.is_none() {
            let mut reason: String = req
                .reason
                .as_deref()
                .unwrap_or("closed")
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_REASON)
                .collect();
            if reason.is_empty() {
                reason = "closed".into();
            }
            ch.closed = Some((format!("{} by the {}", reason, role.as_str()), now));
            changed = true;
        }
        ch.last_active = now;
        if changed {
            ch.version += 1;
        }
        Ok(ch.state(&req.channel))
    }

    /// Current state of a channel, for long-polls (no membership check: the
    /// caller already passed [`ChannelTable::post`]).
    pub fn state(&self, channel: &str) -> Option<ChannelState> {
        self.channels.get(channel).map(|c| c.state(channel))
    }

    /// A stapling connection names `channel` + `uuid`: may it be stapled?
    pub fn staple_check(
        &mut self,
        now: Instant,
        ip: IpAddr,
        channel: &str,
        uuid: &str,
    ) -> Result<StapleTicket, ApiError> {
        let (ch, role) = self.member(ip, channel, uuid)?;
        if let Some((reason, _)) = &ch.closed {
            return Err(ApiError::Closed {
                channel: channel.to_owned(),
                reason: reason.clone(),
            });
        }
        if ch.h_k.is_none() {
            return Err(ApiError::OutOfOrder("stapling before key confirmation finished"));
        }
        if ch.stapled {
            return Err(ApiError::AlreadySet("stapled"));
        }
        ch.last_active = now;
        Ok(StapleTicket { role })
    }

    /// Records that both stapling connections are joined (step 14).
    pub fn set_stapled(&mut self, now: Instant, channel: &str) {
        if let Some(ch) = self.channels.get_mut(channel) {
            ch.stapled = true;
            ch.last_active = now;
            ch.version += 1;
        }
    }

    /// Marks activity (e.g. bytes flowing on a stapled pair) so it does not expire.
    pub fn touch(&mut self, now: Instant, channel: &str) {
        if let Some(ch) = self.channels.get_mut(channel) {
            ch.last_active = now;
        }
    }

    /// Closes a channel from the relay's side (e.g. the stapled pair ended).
    pub fn close(&mut self, now: Instant, channel: &str, reason: &str) {
        if let Some(ch) = self.channels.get_mut(channel)
            && ch.closed.is_none()
        {
            ch.closed = Some((reason.to_owned(), now));
            ch.version += 1;
        }
    }

    /// Removes idle channels and closed ones past their grace period; returns their names.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let ttl = self.cfg.idle_ttl;
        let mut gone = Vec::new();
        self.channels.retain(|name, ch| {
            // A stapled, open channel is a live transfer: the relay closes it when the pipe ends.
            let live = ch.stapled && ch.closed.is_none();
            let idle = !live && now.saturating_duration_since(ch.last_active) >= ttl;
            let closed_done = ch
                .closed
                .as_ref()
                .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= CLOSED_GRACE.min(ttl));
            let keep = !(idle || closed_done);
            if !keep {
                gone.push(name.clone());
                count_out(&mut self.ip_channels, &ch.keys());
            }
            keep
        });
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    fn fill() -> impl FnMut(&mut [u8]) {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(1);
        move |b: &mut [u8]| {
            for x in b {
                *x = (N
                    .fetch_add(1, Ordering::Relaxed)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    >> 56) as u8;
            }
        }
    }

    fn join(
        t: &mut ChannelTable,
        ip: IpAddr,
        ch: Option<&str>,
        role: Role,
    ) -> Result<JoinResponse, ApiError> {
        t.join(
            Instant::now(),
            ip,
            &JoinRequest {
                channel: ch.map(str::to_owned),
                curve: None,
                role,
            },
            &mut fill(),
        )
    }

    fn post(
        t: &mut ChannelTable,
        ip: IpAddr,
        j: &JoinResponse,
        f: impl FnOnce(&mut ChannelRequest),
    ) -> Result<ChannelState, ApiError> {
        let mut r = ChannelRequest {
            channel: j.channel.clone(),
            uuid: j.uuid.clone(),
            ..Default::default()
        };
        f(&mut r);
        t.post(Instant::now(), ip, &r)
    }

    #[test]
    fn full_flow_in_seed_order() {
        let mut t = ChannelTable::default();
        let s = join(&mut t, ip(1), None, Role::Sender).unwrap();
        assert!(s.channel.chars().all(|c| c.is_ascii_digit()));
        post(&mut t, ip(1), &s, |r| r.x = Some("aa".repeat(33))).unwrap();
        let r = join(&mut t, ip(2), Some(&s.channel), Role::Recipient).unwrap();
        let st = post(&mut t, ip(2), &r, |_| {}).unwrap();
        assert!(st.x.is_some());
        post(&mut t, ip(2), &r, |q| {
            q.y = Some("bb".repeat(33));
            q.hh_k = Some("cc".repeat(32));
        })
        .unwrap();
        assert_eq!(
            t.staple_check(Instant::now(), ip(1), &s.channel, &s.uuid),
            Err(ApiError::OutOfOrder("stapling before key confirmation finished"))
        );
        post(&mut t, ip(1), &s, |q| q.h_k = Some("dd".repeat(32))).unwrap();
        assert_eq!(
            t.staple_check(Instant::now(), ip(1), &s.channel, &s.uuid)
                .unwrap()
                .role,
            Role::Sender
        );
        t.set_stapled(Instant::now(), &s.channel);
        let st = post(&mut t, ip(2), &r, |q| q.close = Some(true)).unwrap();
        assert!(st.stapled && st.closed);
        assert_eq!(st.reason.as_deref(), Some("closed by the recipient"));
    }

    #[test]
    fn third_ip_is_refused_everywhere() {
        let mut t = ChannelTable::default();
        let s = join(&mut t, ip(2), Some("9"), Role::Sender).unwrap();
        assert_eq!(
            join(&mut t, ip(4), Some("9"), Role::Sender).unwrap_err().kind(),
            "role_taken"
        );
        let r = join(&mut t, ip(3), Some("9"), Role::Recipient).unwrap();
        assert_eq!(
            join(&mut t, ip(4), Some("9"), Role::Recipient).unwrap_err(),
            ApiError::Full("9".into())
        );
        // Even with a stolen uuid, a third IP cannot act on the channel.
        assert_eq!(post(&mut t, ip(4), &s, |_| {}).unwrap_err().kind(), "full");
        assert_eq!(post(&mut t, ip(4), &r, |_| {}).unwrap_err().kind(), "full");
        assert_eq!(
            t.staple_check(Instant::now(), ip(4), "9", &s.uuid)
                .unwrap_err()
                .kind(),
            "full"
        );
    }

    #[test]
    fn one_attempt_per_channel() {
        let mut t = ChannelTable::default();
        let s = join(&mut t, ip(1), Some("5"), Role::Sender).unwrap();
        post(&mut t, ip(1), &s, |r| r.x = Some("aa".repeat(33))).unwrap();
        // Retrying the same value is fine, a different one is not.
        post(&mut t, ip(1), &s, |r| r.x = Some("AA".repeat(33))).unwrap();
        assert_eq!(
            post(&mut t, ip(1), &s, |r| r.x = Some("ab".repeat(33))).unwrap_err(),
            ApiError::AlreadySet("x")
        );
        let r = join(&mut t, ip(1), Some("5"), Role::Recipient).unwrap();
        post(&mut t, ip(1), &r, |q| {
            q.y = Some("bb".repeat(33));
            q.hh_k = Some("cc".repeat(32));
        })
        .unwrap();
        let e = post(&mut t, ip(1), &r, |q| {
            q.y = Some("be".repeat(33));
            q.hh_k = Some("cc".repeat(32));
        })
        .unwrap_err();
        assert_eq!(e, ApiError::AlreadySet("y"));
    }

    #[test]
    fn wrong_role_order_uuid_and_fields() {
        let mut t = ChannelTable::default();
        assert_eq!(
            join(&mut t, ip(1), Some("1"), Role::Recipient)
                .unwrap_err()
                .kind(),
            "unknown_channel"
        );
        assert_eq!(
            join(&mut t, ip(1), Some("a/b"), Role::Sender).unwrap_err().kind(),
            "bad_channel"
        );
        let e = t
            .join(
                Instant::now(),
                ip(1),
                &JoinRequest {
                    channel: None,
                    curve: Some("p256".into()),
                    role: Role::Sender,
                },
                &mut fill(),
            )
            .unwrap_err();
        assert_eq!(e.status(), 400);
        let s = join(&mut t, ip(1), Some("1"), Role::Sender).unwrap();
        let r = join(&mut t, ip(1), Some("1"), Role::Recipient).unwrap();
        assert_eq!(
            post(&mut t, ip(1), &r, |q| {
                q.y = Some("bb".into());
                q.hh_k = Some("cc".repeat(32));
            })
            .unwrap_err()
            .kind(),
            "out_of_order"
        );
        assert_eq!(
            post(&mut t, ip(1), &r, |q| q.x = Some("aa".into()))
                .unwrap_err()
                .kind(),
            "wrong_role"
        );
        assert_eq!(
            post(&mut t, ip(1), &s, |q| q.x = Some("zz".into()))
                .unwrap_err()
                .kind(),
            "bad_field"
        );
        let mut bad = s.clone();
        bad.uuid = "00".repeat(16);
        assert_eq!(post(&mut t, ip(1), &bad, |_| {}).unwrap_err().kind(), "bad_uuid");
        bad.uuid = "nonsense".into();
        assert_eq!(post(&mut t, ip(1), &bad, |_| {}).unwrap_err().kind(), "bad_uuid");
    }

    #[test]
    fn expiry_and_per_ip_cap() {
        let mut t = ChannelTable::new(TableConfig {
            idle_ttl: Duration::from_secs(10),
            max_channels_per_ip: 2,
            max_channels: 10,
        });
        join(&mut t, ip(1), Some("a"), Role::Sender).unwrap();
        join(&mut t, ip(1), Some("b"), Role::Sender).unwrap();
        assert_eq!(
            join(&mut t, ip(1), Some("c"), Role::Sender).unwrap_err().status(),
            429
        );
        assert!(t.expire(Instant::now()).is_empty());
        let later = Instant::now() + Duration::from_secs(11);
        assert_eq!(t.expire(later).len(), 2);
        assert!(t.is_empty());
    }

    /// The per-IP counts follow joins, new members and expiry exactly (a
    /// join no longer scans the table to count an IP's channels).
    #[test]
    fn per_ip_counts_follow_every_change() {
        let mut t = ChannelTable::new(TableConfig {
            max_channels_per_ip: 1000,
            ..TableConfig::default()
        });
        let brute =
            |t: &ChannelTable, ip: IpAddr| t.channels.values().filter(|c| c.ips.contains(&ip)).count();
        let mut names = Vec::new();
        for i in 0..300u32 {
            let r = join(&mut t, ip((i % 3) as u8 + 1), None, Role::Sender).unwrap();
            if i % 2 == 0 {
                // A recipient from another IP joins every other channel.
                join(&mut t, ip(9), Some(&r.channel), Role::Recipient).unwrap();
            }
            names.push(r.channel);
        }
        for n in 1..=9 {
            assert_eq!(t.channels_of(ip(n)), brute(&t, ip(n)), "ip {n}");
        }
        assert_eq!(t.channels_of(ip(9)), 150);
        // Everything idles out: every count returns to zero.
        let gone = t.expire(Instant::now() + Duration::from_secs(3600));
        assert_eq!(gone.len(), 300);
        assert!(t.ip_channels.is_empty(), "{:?}", t.ip_channels);
    }

    /// Issue 14, 8: two addresses of one IPv6 /64 share one per-address
    /// limit (before, each had its own 64 channels), and a sender and
    /// recipient from the same /64 count one channel, not two.
    #[test]
    fn ipv6_addresses_count_per_64() {
        let mut t = ChannelTable::new(TableConfig {
            max_channels_per_ip: 2,
            ..TableConfig::default()
        });
        let a: IpAddr = "2001:db8:5:6::1".parse().unwrap();
        let b: IpAddr = "2001:db8:5:6:abcd::2".parse().unwrap();
        let other: IpAddr = "2001:db8:5:7::1".parse().unwrap();
        let first = join(&mut t, a, None, Role::Sender).unwrap();
        join(&mut t, b, Some(&first.channel), Role::Recipient).unwrap();
        assert_eq!(t.channels_of(a), 1, "one channel for the /64, whoever joined it");
        join(&mut t, b, None, Role::Sender).unwrap();
        assert_eq!(
            join(&mut t, a, None, Role::Sender).unwrap_err().kind(),
            "too_many_channels"
        );
        assert!(
            join(&mut t, other, None, Role::Sender).is_ok(),
            "another /64 has its own"
        );
        // Mapped IPv4 is the IPv4 address.
        let v4: IpAddr = "192.0.2.9".parse().unwrap();
        join(&mut t, v4, None, Role::Sender).unwrap();
        assert_eq!(t.channels_of("::ffff:192.0.2.9".parse().unwrap()), 1);
        let gone = t.expire(Instant::now() + Duration::from_secs(3600));
        assert_eq!(gone.len(), 4);
        assert!(t.ip_channels.is_empty(), "{:?}", t.ip_channels);
    }

    /// Issue 14, 8: a channel nobody asks about goes after [`UNATTENDED`]
    /// (65 s; before, 10 minutes), while one whose sender keeps polling
    /// stays.
    #[test]
    fn unattended_channels_go_after_a_minute() {
        let mut t = ChannelTable::new(TableConfig::default());
        let t0 = Instant::now();
        let left = join(&mut t, ip(1), None, Role::Sender).unwrap();
        let polled = join(&mut t, ip(2), None, Role::Sender).unwrap();
        for k in 1..=3u64 {
            let at = t0 + Duration::from_secs(30 * k);
            let r = ChannelRequest {
                channel: polled.channel.clone(),
                uuid: polled.uuid.clone(),
                ..Default::default()
            };
            t.post(at, ip(2), &r).unwrap();
            t.expire(at);
        }
        assert!(t.state(&left.channel).is_none(), "unattended for 90 s");
        assert!(t.state(&polled.channel).is_some(), "polled every 30 s");
        assert!(UNATTENDED < Duration::from_secs(600));
    }
}
