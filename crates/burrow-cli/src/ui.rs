//! What the user sees: progress bars on a terminal, plain lines otherwise,
//! JSON lines with `--json`, and the accept prompt.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use burrow_node::{Decision, Event, Observer, OfferInfo, OfferKind, PathKind, escape_display};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

/// How events are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// For people; `tty` says whether stderr is a terminal.
    Human {
        /// Progress bars instead of lines.
        tty: bool,
    },
    /// One JSON object per line on stdout.
    Json,
}

impl Mode {
    /// Picks the mode from `--json` and whether stderr is a terminal.
    pub fn detect(json: bool) -> Self {
        if json {
            Mode::Json
        } else {
            Mode::Human {
                tty: std::io::stderr().is_terminal(),
            }
        }
    }
}

/// Prints one JSON event line on stdout.
pub fn emit(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// The observer behind `send` and `receive`.
pub struct Ui {
    mode: Mode,
    /// How the receiver should name the relay in the printed command.
    relay_hint: Option<String>,
    yes: bool,
    overwrite: bool,
    bar: Option<ProgressBar>,
    last_line: Instant,
    /// Show the receive command as a QR code too.
    pub qr: bool,
}

impl Ui {
    /// A new UI.
    pub fn new(mode: Mode, relay_hint: Option<String>, yes: bool, overwrite: bool) -> Self {
        Self {
            mode,
            relay_hint,
            yes,
            overwrite,
            bar: None,
            last_line: Instant::now(),
            qr: false,
        }
    }

    fn start_bar(&mut self, total: Option<u64>) {
        let bar = match total {
            Some(t) => {
                let b = ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr());
                b.set_style(
                    ProgressStyle::with_template(
                        "{bar:30.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b
            }
            None => {
                let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
                b.set_style(
                    ProgressStyle::with_template("{spinner} {bytes} {binary_bytes_per_sec}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                b
            }
        };
        self.bar = Some(bar);
    }
}

fn pct(done: u64, total: Option<u64>) -> String {
    match total {
        Some(t) if t > 0 => format!(" ({}%)", done * 100 / t),
        _ => String::new(),
    }
}

fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-6);
    format!("{}/s", HumanBytes((bytes as f64 / secs) as u64))
}

impl Observer for Ui {
    fn event(&mut self, e: Event) {
        match self.mode {
            Mode::Json => match e {
                Event::Code(code) => emit(json!({"event": "code", "code": code})),
                Event::Skipped(items) => emit(json!({"event": "skipped", "items": items})),
                Event::Connected { relay, path } => {
                    emit(json!({"event": "connected", "path": path.as_str(), "relay": relay}))
                }
                Event::LocalRelay { port } => emit(json!({"event": "local_relay", "port": port})),
                Event::InLobby { identity } => emit(json!({"event": "lobby", "identity": identity})),
                Event::Paired { peer } => emit(json!({"event": "paired", "peer": peer})),
                Event::LobbyMiss { receiver, declined } => emit(json!({
                    "event": "lobby_miss", "receiver": receiver, "declined": declined
                })),
                Event::LobbyNoMatch { tried, wait } => emit(json!({
                    "event": "lobby_no_match", "tried": tried, "wait_seconds": wait.map(|w| w.as_secs())
                })),
                Event::FoundOnLan { relay } => emit(json!({"event": "found", "relay": relay})),
                Event::Reconnecting { reason, for_up_to } => emit(json!({
                    "event": "reconnecting", "reason": reason, "for_up_to_seconds": for_up_to.as_secs()
                })),
                Event::WaitingForAccept => emit(json!({"event": "offered"})),
                Event::Started { files, total } => {
                    emit(json!({"event": "started", "files": files, "total": total}))
                }
                Event::Progress { done, total } => {
                    emit(json!({"event": "progress", "done": done, "total": total}))
                }
                Event::Finished {
                    files,
                    bytes,
                    elapsed,
                } => emit(json!({
                    "event": "done", "files": files, "bytes": bytes, "seconds": elapsed.as_secs_f64()
                })),
                _ => {}
            },
            Mode::Human { tty } => match e {
                Event::Code(code) => {
                    eprintln!("code: {code}");
                    let relay = self
                        .relay_hint
                        .as_deref()
                        .map(|r| format!("--relay {r} "))
                        .unwrap_or_default();
                    let command = format!("burrow receive {relay}{code}");
                    eprintln!("On the other machine, run:\n\n    {command}\n");
                    if self.qr {
                        eprintln!("{}", qr_text(&command));
                    }
                }
                Event::Skipped(items) => {
                    for i in items {
                        eprintln!("skipped: {i}");
                    }
                }
                Event::Connected { relay, path } => match path {
                    PathKind::Direct => eprintln!("connected directly (relay {relay} not used for data)"),
                    PathKind::Mesh => eprintln!("connected to the node over the mesh ({relay})"),
                    _ => eprintln!("connected through relay {relay}"),
                },
                Event::LocalRelay { port } => eprintln!(
                    "no relay configured: serving one on port {port} and announcing it on the local network"
                ),
                Event::FoundOnLan { relay } => eprintln!("found the sender on the local network ({relay})"),
                Event::InLobby { identity } => {
                    eprintln!(
                        "waiting in the relay's lobby as {identity} for a receiver with the password..."
                    )
                }
                Event::Paired { peer } => eprintln!("the password matched: paired with {peer}"),
                Event::LobbyMiss { receiver, declined } => {
                    let what = if declined {
                        "had the password and declined"
                    } else {
                        "tried another password"
                    };
                    eprintln!("a receiver ({receiver}) {what}; still waiting in the lobby...");
                }
                Event::LobbyNoMatch { tried, wait } => {
                    let tried = match tried {
                        0 => "no sender is waiting in the relay's lobby yet".to_owned(),
                        1 => "tried the 1 sender waiting in the lobby: it has another password".to_owned(),
                        n => format!("tried the {n} senders waiting in the lobby: none has this password"),
                    };
                    let until = match wait {
                        Some(w) => format!("for up to {}s more (--wait)", w.as_secs()),
                        None => "until the relay ends the lobby wait (10 minutes unless the relay sets \
                                 another; --wait SECS limits it)"
                            .to_owned(),
                    };
                    eprintln!("{tried}; still waiting for one with this password, {until}...");
                }
                Event::Reconnecting { reason, for_up_to } => {
                    if let Some(b) = &self.bar {
                        b.suspend(|| {
                            eprintln!("{reason}: reconnecting (for up to {}s)...", for_up_to.as_secs())
                        });
                    } else {
                        eprintln!("{reason}: reconnecting (for up to {}s)...", for_up_to.as_secs());
                    }
                }
                Event::WaitingForAccept => eprintln!("waiting for the other side to accept..."),
                Event::Started { total, .. } if tty => self.start_bar(total),
                Event::Progress { done, total } => {
                    if let Some(b) = &self.bar {
                        b.set_position(done);
                    } else if self.last_line.elapsed() >= Duration::from_secs(1) {
                        self.last_line = Instant::now();
                        let of = total
                            .map(|t| format!(" of {}", HumanBytes(t)))
                            .unwrap_or_default();
                        eprintln!("progress: {}{of}{}", HumanBytes(done), pct(done, total));
                    }
                }
                Event::Finished {
                    files,
                    bytes,
                    elapsed,
                } => {
                    if let Some(b) = self.bar.take() {
                        b.finish_and_clear();
                    }
                    eprintln!(
                        "done: {files} file{} verified, {} in {:.1}s ({})",
                        if files == 1 { "" } else { "s" },
                        HumanBytes(bytes),
                        elapsed.as_secs_f64(),
                        rate(bytes, elapsed)
                    );
                }
                _ => {}
            },
        }
    }

    fn decide(&mut self, offer: &OfferInfo) -> Decision {
        let what = match offer.kind {
            OfferKind::Text => format!("a text message ({})", HumanBytes(offer.total)),
            OfferKind::Stream => match &offer.save_as {
                Some(name) => format!("a stream of data (size unknown), to be saved as {name}"),
                None => "a stream of data (size unknown)".to_owned(),
            },
            OfferKind::Files => format!(
                "{} file{}{} ({})",
                offer.files,
                if offer.files == 1 { "" } else { "s" },
                match offer.dirs {
                    0 => String::new(),
                    1 => " in 1 folder".to_owned(),
                    n => format!(" in {n} folders"),
                },
                HumanBytes(offer.total)
            ),
        };
        if self.mode == Mode::Json {
            emit(
                json!({"event": "offer", "kind": format!("{:?}", offer.kind).to_lowercase(), "files": offer.files, "dirs": offer.dirs, "total": offer.total, "from": offer.from, "save_as": offer.save_as}),
            );
        } else {
            match &offer.from {
                Some(from) => eprintln!("The sender at {} offers {what}:", escape_display(from)),
                None => eprintln!("The other side offers {what}:"),
            }
            if offer.kind == OfferKind::Files {
                const SHOW: usize = 10;
                for e in offer
                    .entries
                    .iter()
                    .filter(|e| e.kind == burrow_node::EntryKind::File)
                    .take(SHOW)
                {
                    eprintln!("  {} ({})", escape_display(&e.path), HumanBytes(e.size));
                }
                if offer.files > SHOW {
                    eprintln!("  ... and {} more", offer.files - SHOW);
                }
            }
        }
        let replace = !offer.existing.is_empty() && !self.overwrite;
        if self.yes {
            return if self.overwrite {
                Decision::AcceptOverwrite
            } else {
                Decision::Accept
            };
        }
        if !std::io::stdin().is_terminal() {
            eprintln!("Not accepting: there is no terminal to ask on. Run with --yes to accept.");
            return Decision::Reject("the receiver did not confirm (no terminal; --yes not given)".into());
        }
        if !ask("Accept?") {
            return Decision::Reject("the receiver declined".into());
        }
        if replace {
            eprintln!("These already exist and would be replaced:");
            for name in offer.existing.iter().take(10) {
                eprintln!("  {name}");
            }
            if !ask("Replace them?") {
                return Decision::Reject("the receiver declined to replace existing files".into());
            }
            return Decision::AcceptOverwrite;
        }
        if self.overwrite {
            Decision::AcceptOverwrite
        } else {
            Decision::Accept
        }
    }
}

fn ask(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return false;
    }
    matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// A QR code of `text` drawn with Unicode half blocks (two rows per line).
pub fn qr_text(text: &str) -> String {
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .build(),
        Err(e) => format!("(no QR code: {e})"),
    }
}

/// Tab completion of code words for the code prompt: completes the word
/// being typed to the list word it starts (then adds `-`), or as far as
/// the candidates agree.
pub struct CodeCompletion;

impl dialoguer::Completion for CodeCompletion {
    fn get(&self, input: &str) -> Option<String> {
        let cut = input.rfind(['-', ' '])? + 1;
        let (head, last) = input.split_at(cut);
        if last.is_empty() {
            return None;
        }
        let cands = burrow_proto::channel::code::complete_word(last);
        match cands.as_slice() {
            [] => None,
            [one] => Some(format!("{head}{one}-")),
            many => {
                let first = many[0];
                let common = (last.len()..=first.len())
                    .rev()
                    .find(|&n| many.iter().all(|w| w.get(..n) == first.get(..n)))?;
                (common > last.len()).then(|| format!("{head}{}", &first[..common]))
            }
        }
    }
}

/// Asks for the code on the terminal, with Tab completion.
pub fn prompt_code() -> Option<String> {
    dialoguer::Input::<String>::new()
        .with_prompt("Code (Tab completes words)")
        .completion_with(&CodeCompletion)
        .interact_text()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialoguer::Completion;

    #[test]
    fn completes_words_of_the_code() {
        let c = CodeCompletion;
        assert_eq!(c.get("7-abso").as_deref(), Some("7-absorb-"));
        assert_eq!(c.get("7-absorb-zeb").as_deref(), Some("7-absorb-zebra-"));
        assert_eq!(c.get("7-acti").as_deref(), Some("7-action-"));
        // Several candidates that share nothing more: no change.
        assert_eq!(c.get("7-ab"), None);
        assert_eq!(c.get("7"), None);
        assert_eq!(c.get("7-qqq"), None);
        // Several candidates sharing more than was typed: extend to what they
        // share (equal, equip).
        assert_eq!(c.get("7-eq").as_deref(), Some("7-equ"));
        assert_eq!(c.get("7-abov").as_deref(), Some("7-above-"));
    }

    #[test]
    fn qr_codes_render() {
        let q = qr_text("burrow receive 7-absorb-zebra-captain");
        assert!(q.lines().count() > 10);
        assert!(q.contains('█') || q.contains('▀') || q.contains('▄'));
    }
}
