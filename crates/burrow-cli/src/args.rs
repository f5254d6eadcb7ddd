//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other error
  2  bad arguments or configuration
  3  wrong code: the two sides typed different codes
  4  the relay was unreachable or refused the request, or (no relay
     configured) no sender was found on the local network
  5  the offer was declined
  6  integrity failure: data was altered in transit or did not match its hash
  7  local file problem (exists, no space, permissions)
  8  the other side went away or broke the protocol
  130 interrupted (Ctrl-C)";

/// Move files, folders and text between machines with a short code, through
/// a relay that only ever sees ciphertext.
#[derive(Debug, Parser)]
#[command(name = "burrow", version, after_help = EXIT_CODES, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v: info, -vv: debug). Never logs secrets.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Config file (default: $XDG_CONFIG_HOME/burrow/config.toml).
    #[arg(long, global = true, env = "BURROW_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send files, folders, text or standard input; prints the code to give the receiver.
    #[command(
        after_help = "Examples:\n  burrow send photos/ notes.txt\n  burrow send --text 'the wifi password is ...'\n  tar c dir | burrow send -\n  burrow send --code 7-purple-sausage-river report.pdf"
    )]
    Send(SendArgs),
    /// Receive with the code the sender printed.
    #[command(
        after_help = "Examples:\n  burrow receive 7-purple-sausage-river\n  burrow receive --out ~/Downloads --yes 7-purple-sausage-river\n  burrow receive --out - 7-purple-sausage-river | tar x"
    )]
    Receive(ReceiveArgs),
    /// Run a relay: the meeting point both sides connect to. It sees only ciphertext.
    Relay(RelayArgs),
    /// Pair with another installation: without CODE, print a code; with the
    /// code, on the other machine, complete it. Each side stores the other's
    /// key under a name (see `burrow peers`).
    #[command(
        after_help = "Examples:\n  burrow pair --relay relay.example            # machine A: prints a code\n  burrow pair --relay relay.example CODE --name home   # machine B\n  burrow pair --mesh NODE_B                    # on mesh node A: prints a code\n  burrow pair --mesh NODE_A CODE --name laptop # on mesh node B"
    )]
    Pair(PairArgs),
    /// List paired peers.
    Peers {
        /// One JSON object per peer.
        #[arg(long)]
        json: bool,
    },
    /// Forget a paired peer.
    Unpair {
        /// Its name or fingerprint.
        name: String,
    },
    /// Offer this machine's internet connection to paired peers, through the
    /// relay (no port to open here). Reconnects by itself.
    #[command(
        after_help = "Examples:\n  burrow exit --relay relay.example\n  burrow exit --relay relay.example#k3vq-7zpa-... --allow 192.168.1.0/24:80,443"
    )]
    Exit(ExitArgs),
    /// A local SOCKS5 (socks5h) and HTTP CONNECT proxy whose connections leave
    /// through a paired exit.
    #[command(
        after_help = "Examples:\n  burrow proxy home --relay relay.example\n  burrow proxy home --mesh\n  curl --socks5-hostname 127.0.0.1:1080 https://example.com/\n  burrow proxy home --forward 127.0.0.1:2222=10.0.0.5:22"
    )]
    Proxy(ProxyArgs),
    /// Run a mesh node (seed 002) in the foreground, or ask the running one
    /// (`status`, `nodes`, `ping`). Nodes link to each other, keep the links
    /// alive and tell each other about the nodes they know.
    #[command(
        after_help = "Examples:\n  burrow node --listen 0.0.0.0:9010\n  burrow node --bootstrap home.example:9010\n  burrow node status\n  burrow node nodes --json\n  burrow node ping k3vq-7zpa-...",
        args_conflicts_with_subcommands = true
    )]
    Node(NodeArgs),
    /// Run one directory authority (seed 004's "main controller"): nodes
    /// register with it, it checks they are reachable, and with the other
    /// authorities it signs the node list clients use.
    #[command(
        after_help = "Example (three authorities, each naming the other two):\n  burrow directory --listen 0.0.0.0:9030 --peer FP2@10.0.0.2:9030 --peer FP3@10.0.0.3:9030"
    )]
    Directory(DirectoryArgs),
    /// Fetch a web page through an onion circuit of --hops nodes (seed 004).
    #[command(
        after_help = "Example:\n  burrow fetch http://example.org/ --hops 3 --directory FP@10.0.0.1:9030 -o page.html"
    )]
    Fetch(FetchArgs),
    /// Print this installation's identity fingerprint (creating the identity on first use).
    Id {
        /// Print JSON: fingerprint and key file.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: `burrow completions bash > /etc/bash_completion.d/burrow`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Where the relay is.
#[derive(Debug, Args)]
pub struct RelayOpt {
    /// The relay, HOST[:PORT] (default port 9009). Falls back to BURROW_RELAY, then the config
    /// file. With none, the sender serves a relay itself and announces it on the local network
    /// (UDP multicast), and the receiver finds it there.
    #[arg(long, env = "BURROW_RELAY", value_name = "ADDR")]
    pub relay: Option<String>,
}

/// `--compress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressArg {
    /// Compress files whose first chunk shrinks by at least a tenth.
    Auto,
    /// Try every chunk.
    Always,
    /// Never compress.
    Never,
}

/// Liveness.
#[derive(Debug, Args)]
pub struct TimeoutOpt {
    /// Report the other side as gone after this many seconds without data or keepalive.
    #[arg(long, default_value_t = 15.0, value_name = "SECS")]
    pub timeout: f64,
}

impl TimeoutOpt {
    /// As a duration (at least 0.3 s).
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.timeout.clamp(0.3, 86_400.0))
    }
}

/// How the two sides connect.
#[derive(Debug, Args)]
pub struct PathOpt {
    /// Send every byte through the relay: never connect straight to the other
    /// side, and don't tell it this machine's addresses (default: race a direct
    /// connection against the relay and use whichever wins). Also BURROW_RELAY_ONLY=1
    /// or `relay_only = true` in the config file.
    #[arg(long, env = "BURROW_RELAY_ONLY", value_parser = clap::builder::BoolishValueParser::new())]
    pub relay_only: bool,

    /// After a dropped connection, keep reconnecting for this many seconds
    /// before giving up (0: give up at once).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub reconnect: u64,
}

/// `burrow send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub relay: RelayOpt,

    /// Send to a paired mesh node's inbox instead (its name in `burrow
    /// peers`, or fingerprint): straight over a link, no code, no prompt
    /// there. The local node (`burrow node`) must be running and know it.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["code", "lobby"])]
    pub to: Option<String>,

    /// Use this code instead of a generated one (CHANNEL-WORDS; the part before the first '-' is the channel).
    #[arg(long, value_name = "CODE")]
    pub code: Option<String>,

    /// Leave out files and folders matching this shell pattern (e.g. '*.o',
    /// 'node_modules', 'build/*'); matched against names and relative paths. Repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,

    /// Send this text message instead of files.
    #[arg(long, value_name = "TEXT", conflicts_with = "paths")]
    pub text: Option<String>,

    /// Give up if nobody enters the code within this many seconds (default: wait until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    pub wait: Option<u64>,

    #[command(flatten)]
    pub timeout: TimeoutOpt,

    #[command(flatten)]
    pub path: PathOpt,

    /// Print one JSON object per event on stdout instead of human output.
    #[arg(long)]
    pub json: bool,

    /// Compress with zstd: 'auto' compresses a file when a sample of it shrinks.
    #[arg(long, value_enum, default_value_t = CompressArg::Auto, value_name = "WHEN")]
    pub compress: CompressArg,

    /// Lobby mode (seed 003): no channel; wait in the relay's lobby under a
    /// password (printed, or --password) until a receiver with it accepts.
    #[arg(long, conflicts_with = "code")]
    pub lobby: bool,

    /// Lobby mode: use this password instead of four generated words.
    #[arg(long, requires = "lobby", value_name = "PASSWORD")]
    pub password: Option<String>,

    /// Also show the receive command as a QR code (for a phone's camera).
    #[arg(long)]
    pub qr: bool,

    /// Files and folders to send; '-' sends standard input.
    #[arg(value_name = "PATH", required_unless_present = "text")]
    pub paths: Vec<PathBuf>,
}

/// `burrow receive`.
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    #[command(flatten)]
    pub relay: RelayOpt,

    /// Where to put received files ('-' writes a single file or stream to stdout).
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Accept the offer without asking.
    #[arg(long, short)]
    pub yes: bool,

    #[command(flatten)]
    pub timeout: TimeoutOpt,

    #[command(flatten)]
    pub path: PathOpt,

    /// With no relay configured: how many seconds to look for the sender on the local network.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub lan_wait: u64,

    /// Replace existing files with the same names without asking.
    #[arg(long)]
    pub overwrite: bool,

    /// Hash every received file again and check it against the sender's
    /// BLAKE3 (costs CPU). Without it, files are checked by the session's
    /// authenticated encryption, which rejects any altered, missing or
    /// reordered byte, and resumed files are also hashed. Also
    /// BURROW_VERIFY=1 or `verify = true` in the config file.
    #[arg(long, env = "BURROW_VERIFY", value_parser = clap::builder::BoolishValueParser::new())]
    pub verify: bool,

    /// Print one JSON object per event on stdout instead of human output (needs --yes).
    #[arg(long, requires = "yes")]
    pub json: bool,

    /// Lobby mode (seed 003): CODE is the sender's password; every sender
    /// waiting in the relay's lobby is tried, and only the one with the same
    /// password can agree.
    #[arg(long)]
    pub lobby: bool,

    /// With --lobby: give up if no sender with this password comes within
    /// this many seconds (default: until the relay ends the wait).
    #[arg(long, value_name = "SECS", requires = "lobby")]
    pub wait: Option<u64>,

    /// The code the sender printed, e.g. 7-purple-sausage-river (with --lobby:
    /// its password). Without it, burrow asks for it (Tab completes the words).
    #[arg(value_name = "CODE")]
    pub code: Option<String>,
}

/// `burrow pair`.
#[derive(Debug, Args)]
pub struct PairArgs {
    #[command(flatten)]
    pub relay: RelayOpt,

    /// Pair with a linked mesh node instead (its id or name; see `burrow
    /// node nodes`), over the link, no relay: without CODE this prints a code,
    /// with it (on the other node) completes the pairing. The local node
    /// (`burrow node`) must be running.
    #[arg(long, value_name = "NODE")]
    pub mesh: Option<String>,

    /// The name to store the other side under (default: the name it suggests).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// The code the other side printed.
    #[arg(value_name = "CODE")]
    pub code: Option<String>,
}

/// `burrow exit`.
#[derive(Debug, Args)]
pub struct ExitArgs {
    /// The relay, HOST[:PORT][#FINGERPRINT] (the fingerprint pins its key;
    /// without one, the key seen first is remembered and a change is refused).
    #[arg(long, env = "BURROW_RELAY", value_name = "ADDR")]
    pub relay: Option<String>,

    /// Also allow this destination range, CIDR[:PORTS] (e.g. 192.168.1.0/24:80,443);
    /// by default loopback, private, link-local, multicast and this machine's
    /// own addresses are refused. Repeatable.
    #[arg(long, value_name = "CIDR[:PORTS]")]
    pub allow: Vec<String>,

    /// Refuse this destination range, CIDR[:PORTS]; beats --allow. Repeatable.
    #[arg(long, value_name = "CIDR[:PORTS]")]
    pub deny: Vec<String>,

    /// Seconds of silence after which a tunnel counts as lost (keepalives
    /// go every third of it); the proxy then opens a new one.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub idle_timeout: u64,
}

/// `burrow proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The paired exit: its name (see `burrow peers`) or fingerprint. Not
    /// with --hops (the circuit's exit is chosen from the node list).
    #[arg(required_unless_present = "hops")]
    pub exit: Option<String>,

    /// Send every connection through an onion circuit of N hops (3 or
    /// more) instead of a paired exit (seed 004).
    #[arg(long, value_name = "N", conflicts_with_all = ["mesh", "relay"])]
    pub hops: Option<usize>,

    /// With --hops: the directory authorities (all of them; repeatable or
    /// comma-separated). Default: `directories` in the config file, or
    /// BURROW_DIRECTORIES.
    #[arg(
        long = "directory",
        value_name = "FP@HOST:PORT",
        value_delimiter = ',',
        requires = "hops"
    )]
    pub directories: Vec<String>,

    /// Reach the exit over the mesh instead of a relay: a direct link to the
    /// paired node at the addresses the local node (`burrow node`) knows for it.
    #[arg(long)]
    pub mesh: bool,

    /// The relay, HOST[:PORT][#FINGERPRINT].
    #[arg(long, env = "BURROW_RELAY", value_name = "ADDR")]
    pub relay: Option<String>,

    /// Where to serve SOCKS5 and HTTP CONNECT.
    #[arg(long, default_value = "127.0.0.1:1080", value_name = "HOST:PORT")]
    pub listen: String,

    /// Also forward LOCAL to HOST:PORT through the exit (e.g. 127.0.0.1:2222=10.0.0.5:22). Repeatable.
    #[arg(long, value_name = "LOCAL=HOST:PORT")]
    pub forward: Vec<String>,

    /// Seconds of silence after which the tunnel counts as lost (keepalives
    /// go every third of it); the next request opens a new one.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub idle_timeout: u64,

    /// Seconds a request waits for the exit to reach its destination (the
    /// exit itself gives a connect 10 s); then the client gets a failure
    /// reply and the stream is freed at both ends.
    #[arg(long, default_value_t = 15, value_name = "SECS")]
    pub open_timeout: u64,
}

/// `burrow directory`.
#[derive(Debug, Args)]
pub struct DirectoryArgs {
    /// Where to listen.
    #[arg(long, default_value = "0.0.0.0:9030", value_name = "HOST:PORT")]
    pub listen: String,

    /// Another authority (repeatable or comma-separated): every authority
    /// lists all the others, and a node list needs more than half of them.
    #[arg(long = "peer", value_name = "FP@HOST:PORT", value_delimiter = ',')]
    pub peers: Vec<String>,

    /// Seconds a node list is valid (a new one is due after a third of it).
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub lifetime: u64,

    /// Nodes listed per registering address.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_per_ip: usize,
}

/// `burrow fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The page, http://HOST[:PORT]/PATH.
    pub url: String,

    /// Hops of the circuit (3 or more).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub hops: usize,

    /// The directory authorities (all of them; repeatable or
    /// comma-separated). Default: `directories` in the config file, or
    /// BURROW_DIRECTORIES.
    #[arg(long = "directory", value_name = "FP@HOST:PORT", value_delimiter = ',')]
    pub directories: Vec<String>,

    /// Write the body here instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Print a JSON report (status, bytes, time to first byte, path) on
    /// standard error when done.
    #[arg(long)]
    pub json: bool,
}

/// `burrow relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The relay's key file (created on first use): its fingerprint is what
    /// exits and proxies pin. Default: $XDG_DATA_HOME/burrow/relay.key.
    #[arg(long, value_name = "FILE")]
    pub key: Option<std::path::PathBuf>,

    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:9009", value_name = "HOST:PORT")]
    pub listen: String,

    /// Remove channels nobody touched for this many seconds (clients
    /// waiting for their peer ask at least every 30 s; a stapled channel,
    /// a running transfer, stays until its pipe ends).
    #[arg(long, default_value_t = 65, value_name = "SECS")]
    pub idle_timeout: u64,

    /// Most channels one IP address may hold at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_channels_per_ip: usize,

    /// Most channels in the relay's table at once (each costs a few hundred bytes).
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_channels: usize,

    /// Seconds a new connection has to send its request or stapling hello.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub handshake_timeout: u64,

    /// Seconds a stapling connection waits for the other peer.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub staple_timeout: u64,

    /// Most connections open at once.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_connections: usize,

    /// Most connections open at once from one address (IPv4, or an IPv6
    /// /64). Default: a sixteenth of --max-connections (at least 8).
    #[arg(long, value_name = "N")]
    pub max_per_ip: Option<usize>,

    /// Seconds a peer may wait in the lobby (`send --lobby` / `receive --lobby`)
    /// before it gets Timeout.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    pub lobby_timeout: u64,
}

/// `burrow node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Ask the running node instead of starting one.
    #[command(subcommand)]
    pub ask: Option<NodeAsk>,

    /// Where to listen for links from other nodes.
    #[arg(long, default_value = "0.0.0.0:9010", value_name = "HOST:PORT")]
    pub listen: String,

    /// A node to link to first (repeatable); the rest are learned from it.
    #[arg(long, value_name = "HOST:PORT")]
    pub bootstrap: Vec<String>,

    /// Seconds of silence after which a link is probed (the seed's
    /// KEEPALIVE_INTERVAL); no answer within as long again closes it.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub keepalive: u64,

    /// What this node calls itself in its record (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// An address to advertise in this node's record instead of the
    /// listening one (repeatable; e.g. a public address behind port forwarding).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Vec<String>,

    /// Links kept up to learned nodes.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub links: usize,

    /// Let paired nodes' tunnels (`burrow proxy NAME --mesh`) also reach this
    /// range, CIDR[:PORTS]; by default loopback, private, link-local,
    /// multicast and this machine's own addresses are refused, as for
    /// `burrow exit`. Repeatable.
    #[arg(long, value_name = "CIDR[:PORTS]")]
    pub allow: Vec<String>,

    /// Refuse this destination range, CIDR[:PORTS]; beats --allow. Repeatable.
    #[arg(long, value_name = "CIDR[:PORTS]")]
    pub deny: Vec<String>,

    /// Where paired nodes' `burrow send --to` files go (default: ~/burrow-inbox).
    #[arg(long, value_name = "DIR")]
    pub inbox: Option<PathBuf>,

    /// Serve Prometheus metrics (links, handshakes, authentication
    /// failures, keepalive timeouts, gossip records) on HOST:PORT/metrics.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// For a node others cannot dial (behind NAT): keep a mailbox on this
    /// relay and say so in the node's record; nodes that cannot reach its
    /// addresses link through the relay, end to end encrypted as a direct
    /// link (the relay sees ciphertext only). `#FINGERPRINT` pins the relay.
    #[arg(long, value_name = "HOST:PORT[#FINGERPRINT]")]
    pub relay: Option<String>,

    /// Relay onion circuits (seed 004): register with these directory
    /// authorities (all of them; repeatable or comma-separated). Default:
    /// `directories` in the config file, or BURROW_DIRECTORIES.
    #[arg(long = "directory", value_name = "FP@HOST:PORT", value_delimiter = ',')]
    pub directories: Vec<String>,

    /// Let circuits leave through this node to the internet, under the
    /// egress policy (loopback, private and this machine's addresses
    /// refused after DNS unless --allow; port 25 refused unless
    /// --exit-ports names it).
    #[arg(long)]
    pub exit: bool,

    /// Destination ports an exit accepts, e.g. 80,443,8000-9000 (default:
    /// every port but 25).
    #[arg(long, value_name = "PORTS", requires = "exit")]
    pub exit_ports: Option<String>,
}

/// What to ask a running node.
#[derive(Debug, Subcommand)]
pub enum NodeAsk {
    /// This node: id, addresses, links (direction, state, RTT), why peers went offline, counters.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The node list: every node this node knows, with its addresses and whether it is online.
    Nodes {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Round-trip time to a node over the mesh.
    Ping {
        /// Its id (as `burrow id` prints it, or a unique prefix) or its name.
        node: String,
        /// Pings to send, one a second.
        #[arg(long, short = 'c', default_value_t = 3, value_name = "N")]
        count: u32,
        /// Print JSON (one object per ping).
        #[arg(long)]
        json: bool,
    },
}
