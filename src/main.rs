//! The `spaceroute` binary: `serve` and `check`.
//!
//! Thin by design: parse the command line, load the config, bind sockets, start the servers,
//! wait for a signal. Everything it calls lives in the library.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// jemalloc hands freed memory back to the system on its own (glibc keeps it): a reload of a
/// million apps frees several times the snapshot's size, and with glibc the process kept the
/// peak of its last load for good.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use spaceroute::admission::Capacity;
use spaceroute::config;
use spaceroute::dns::rrl::RateLimits;
use spaceroute::dns::server::{self, Limits};
use spaceroute::metrics::Metrics;
use spaceroute::reload::{self, FileWatch, Reloader, Trigger};
use spaceroute::router::logger::{Batched, RequestLog};
use spaceroute::router::{self, Listener, Router, Timeouts};
use spaceroute::snapshot;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// `tracing`'s text lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A split-horizon authoritative DNS server and HTTP router for the apps of private spaces.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log lines as text or as JSON objects (one per line), the router's request log included.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve DNS and the router for the spaces in the zones directory.
    Serve(Serve),
    /// Validate the zones directory; print every error as file:line:column and exit 1.
    Check {
        /// Directory of space files (*.yaml) and their zone files.
        #[arg(long, default_value = "zones")]
        zones: PathBuf,
    },
    /// Explain why a source gets the answer it gets for a name: who trusts it and through what,
    /// what owns the name, which rule applied, and the exact answer.
    Explain {
        /// Directory of space files (*.yaml) and their zone files.
        #[arg(long, default_value = "zones")]
        zones: PathBuf,
        /// The source address asking.
        #[arg(long)]
        from: IpAddr,
        /// List every name the source may resolve instead.
        #[arg(long, conflicts_with = "name")]
        all: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The name asked.
        #[arg(required_unless_present = "all")]
        name: Option<String>,
        /// The type asked.
        #[arg(default_value = "A")]
        qtype: String,
    },
    /// Ask a running server one DNS question over UDP; exit 0 if it answers (any rcode), 1 if
    /// not within the timeout. For readiness probes: a server answers only once it has loaded.
    Probe {
        /// The server's DNS address.
        #[arg(long, default_value = "127.0.0.1:5353")]
        dns: SocketAddr,
        /// The name asked (its SOA).
        #[arg(default_value = ".")]
        name: String,
        /// Milliseconds to wait for the answer.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
}

#[derive(Args)]
struct Serve {
    /// Directory of space files (*.yaml) and their zone files.
    #[arg(long, default_value = "zones")]
    zones: PathBuf,
    /// Address for DNS over UDP and TCP; repeat to listen on several.
    #[arg(long, default_value = "127.0.0.1:5353")]
    dns: Vec<SocketAddr>,
    /// Address for the HTTP router; repeat to listen on several.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: Vec<SocketAddr>,
    /// Address for the HTTPS router (needs --tls-cert and --tls-key); repeat for several.
    #[arg(long, requires_all = ["tls_cert", "tls_key"])]
    https: Vec<SocketAddr>,
    /// Default certificate chain (PEM) for HTTPS: `*.<domain>` and names without their own.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Address for Prometheus metrics at /metrics (off unless given); repeat for several.
    #[arg(long)]
    metrics: Vec<SocketAddr>,
    /// Seconds a DNS TCP connection may idle between queries.
    #[arg(long, default_value_t = 10)]
    tcp_idle: u64,
    /// Most DNS TCP connections open at once.
    #[arg(long, default_value_t = 512)]
    tcp_max_connections: usize,
    /// DNS UDP worker threads per --dns address, each on its own SO_REUSEPORT socket; default
    /// one per core.
    #[arg(long)]
    dns_workers: Option<usize>,
    /// UDP replies per second to one source /24 (or /56) in one class of response (answers
    /// per name, empty answers per name, NXDOMAIN, errors), for sources no space trusts; past
    /// it replies are dropped or slipped (response rate limiting). 0: no limit.
    #[arg(long, default_value_t = RateLimits::default().public)]
    rrl_public: u32,
    /// The same for sources a space trusts.
    #[arg(long, default_value_t = RateLimits::default().trusted)]
    rrl_trusted: u32,
    /// Every Nth reply past the rate limit goes out truncated (TC=1), so real resolvers retry
    /// over TCP; 0 drops them all.
    #[arg(long, default_value_t = RateLimits::default().slip)]
    rrl_slip: u32,
    /// Log one DNS query in N at info (0: none). SIGUSR1 switches the query log off, and on
    /// again (one in N, or every query when N is 0).
    #[arg(long, default_value_t = 0)]
    query_log: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPACEROUTE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    match cli.command {
        Command::Check { zones } => check(&zones),
        Command::Explain {
            zones,
            from,
            all,
            json,
            name,
            qtype,
        } => explain(&zones, from, name.as_deref().filter(|_| !all), &qtype, json),
        Command::Probe {
            dns,
            name,
            timeout_ms,
        } => probe(dns, &name, Duration::from_millis(timeout_ms)),
        Command::Serve(args) => match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => {
                let code = runtime.block_on(serve(args, cli.log_format));
                // Not waiting for a first load that a signal interrupted.
                runtime.shutdown_timeout(Duration::from_millis(200));
                code
            }
            Err(e) => {
                error!("cannot start the runtime: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check(zones: &Path) -> ExitCode {
    match config::load_dir(zones) {
        Ok(config) => {
            // Compiled as the server compiles it: what the server would only warn about and
            // work around (a certificate it cannot use) is an error here.
            let compiled = snapshot::compile(&config, |_| 1);
            if !compiled.warnings.is_empty() {
                for w in &compiled.warnings {
                    eprintln!("{w}");
                }
                eprintln!("{}: {} error(s)", zones.display(), compiled.warnings.len());
                return ExitCode::FAILURE;
            }
            println!("{}: ok: {}", zones.display(), config.summary());
            ExitCode::SUCCESS
        }
        Err(diagnostics) => {
            for d in &diagnostics {
                eprintln!("{d}");
            }
            eprintln!("{}: {} error(s)", zones.display(), diagnostics.len());
            ExitCode::FAILURE
        }
    }
}

/// `spaceroute explain`: loads and compiles `zones` as the server does, then explains `name`
/// (or, without one, lists every name `from` may resolve).
fn explain(zones: &Path, from: IpAddr, name: Option<&str>, qtype: &str, json: bool) -> ExitCode {
    let reloader = match Reloader::load(zones) {
        Ok(reloader) => reloader,
        Err(diagnostics) => {
            for d in &diagnostics {
                eprintln!("{d}");
            }
            eprintln!("{}: {} error(s)", zones.display(), diagnostics.len());
            return ExitCode::FAILURE;
        }
    };
    let snapshot = reloader.snapshot().load_full();
    let Some(name) = name else {
        let names = spaceroute::explain::visible_names(&snapshot, from);
        if json {
            println!("{}", serde_json::json!({ "source": from, "names": names }));
        } else {
            for name in names {
                println!("{name}");
            }
        }
        return ExitCode::SUCCESS;
    };
    let Ok(qtype) = qtype
        .to_ascii_uppercase()
        .parse::<hickory_proto::rr::RecordType>()
    else {
        eprintln!("{qtype:?} is not a record type");
        return ExitCode::FAILURE;
    };
    match spaceroute::explain::explain(&snapshot, from, name, qtype) {
        Ok(e) if json => match serde_json::to_string_pretty(&e) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Ok(e) => {
            print!("{e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs every problem and says why serve did not start.
fn fatal(what: impl std::fmt::Display) -> ExitCode {
    error!("{what}");
    ExitCode::FAILURE
}

/// Raises the soft limit on open files to the hard limit (the common service default of 1024
/// would let ~1,000 idle connections stop DNS over TCP and the router for everyone) and returns
/// the soft limit now in force.
fn raise_open_files() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The router's connection capacity under `open_files`: what DNS over TCP may hold and a
/// margin for files and the reloader come off first, and each client connection may need a
/// second descriptor for its dyno.
fn router_capacity(open_files: u64, dns_tcp: usize) -> Capacity {
    let spare = open_files.saturating_sub(dns_tcp as u64 + 256);
    let total = usize::try_from(spare / 2).unwrap_or(usize::MAX);
    Capacity::for_total(total.clamp(16, Capacity::default().total))
}

async fn serve(args: Serve, log_format: LogFormat) -> ExitCode {
    // Signals first: a SIGHUP during a long first load must not kill the process (the default
    // action), and a SIGTERM then stops it.
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    );
    let (Ok(mut term), Ok(mut int), Ok(mut hup), Ok(mut usr1)) = signals else {
        return fatal("cannot install signal handlers");
    };
    server::QUERY_LOG.set(args.query_log);
    let open_files = raise_open_files();
    let zones = &args.zones;
    info!(zones = %zones.display(), "loading");
    let dir = zones.clone();
    // One set of metrics for the process: the reloader, the DNS server and the router count
    // into it.
    let metrics = Arc::new(Metrics::new());
    let counted = metrics.clone();
    let loaded = tokio::select! {
        loaded = tokio::task::spawn_blocking(move || Reloader::load_with(&dir, counted)) => loaded,
        _ = term.recv() => return stopped_while_loading("SIGTERM"),
        _ = int.recv() => return stopped_while_loading("SIGINT"),
    };
    let reloader = match loaded {
        Ok(Ok(reloader)) => Arc::new(reloader),
        Ok(Err(diagnostics)) => {
            for d in &diagnostics {
                error!("{d}");
            }
            return fatal(format_args!(
                "{}: {} error(s), not starting",
                zones.display(),
                diagnostics.len()
            ));
        }
        Err(e) => return fatal(format_args!("loading {} failed: {e}", zones.display())),
    };
    info!(zones = %zones.display(), "loaded {}", reloader.summary());
    let (triggers, receiver) = mpsc::unbounded_channel();
    let watch = match FileWatch::start(&reloader, triggers.clone()) {
        Ok(watch) => Some(watch),
        Err(e) => {
            warn!(
                "cannot watch {} for changes ({e}); reload with SIGHUP",
                zones.display()
            );
            None
        }
    };

    let mut udp = Vec::new();
    let mut tcp = Vec::new();
    for addr in &args.dns {
        match server::bind(*addr).await {
            Ok((u, t)) => {
                let (Ok(ua), Ok(ta)) = (u.local_addr(), t.local_addr()) else {
                    return fatal("cannot read the dns address");
                };
                info!("listening dns udp={ua} tcp={ta}");
                udp.push(u);
                tcp.push(t);
            }
            Err(e) => return fatal(format_args!("cannot listen for dns on {addr}: {e}")),
        }
    }
    let acceptor = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let pems = std::fs::read(cert).and_then(|c| Ok((c, std::fs::read(key)?)));
            let default = match pems
                .map_err(|e| e.to_string())
                .and_then(|(c, k)| snapshot::certified_key(&c, &k))
            {
                Ok(key) => Arc::new(key),
                Err(e) => {
                    return fatal(format_args!(
                        "{}: cannot load the default certificate: {e}",
                        cert.display()
                    ));
                }
            };
            Some(router::tls::Tls::new(reloader.snapshot(), Some(default)))
        }
        _ => None,
    };
    let mut listeners = Vec::new();
    let http = args.http.iter().map(|a| (a, None));
    let https = args.https.iter().map(|a| (a, acceptor.clone()));
    for (addr, tls) in http.chain(https) {
        match TcpListener::bind(addr).await {
            Ok(tcp) => {
                let listener = Listener { tcp, tls };
                router::log_listening(&listener);
                listeners.push(listener);
            }
            Err(e) => return fatal(format_args!("cannot listen for http on {addr}: {e}")),
        }
    }

    let mut metrics_listeners = Vec::new();
    for addr in &args.metrics {
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                if let Ok(at) = listener.local_addr() {
                    info!("listening metrics={at}");
                }
                metrics_listeners.push(listener);
            }
            Err(e) => return fatal(format_args!("cannot listen for metrics on {addr}: {e}")),
        }
    }

    let shutdown = CancellationToken::new();
    let reloads = tokio::spawn(reload::run(
        reloader.clone(),
        watch,
        receiver,
        Duration::from_millis(200),
        shutdown.clone(),
    ));
    let limits = Limits {
        tcp_idle: Duration::from_secs(args.tcp_idle),
        tcp_max_connections: args.tcp_max_connections,
        udp_workers: args.dns_workers.unwrap_or(Limits::default().udp_workers),
        rate: RateLimits {
            public: args.rrl_public,
            trusted: args.rrl_trusted,
            slip: args.rrl_slip,
        },
        ..Limits::default()
    };
    let dns = tokio::spawn(server::run(
        udp,
        tcp,
        reloader.snapshot(),
        metrics.clone(),
        limits,
        shutdown.clone(),
    ));
    let capacity = router_capacity(open_files, limits.tcp_max_connections);
    info!(
        open_files,
        dns_tcp = limits.tcp_max_connections,
        router = capacity.total,
        router_public = capacity.public,
        "connection caps"
    );
    let router = Router::new(reloader.snapshot(), Timeouts::default(), metrics.clone());
    let log = request_log(log_format);
    let router = router.with_capacity(capacity).with_log(log.clone());
    let router = Arc::new(router);
    let http = tokio::spawn(router::run(router, listeners, shutdown.clone()));
    for listener in metrics_listeners {
        tokio::spawn(spaceroute::metrics::serve(
            listener,
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP, reloading");
                let _ = triggers.send(Trigger::Signal);
            }
            _ = usr1.recv() => {
                let every = match server::QUERY_LOG.every() {
                    0 => args.query_log.max(1),
                    _ => 0,
                };
                server::QUERY_LOG.set(every);
                match every {
                    0 => info!("SIGUSR1, query log off"),
                    n => info!("SIGUSR1, query log on: one query in {n}"),
                }
            }
            _ = term.recv() => { info!("SIGTERM, shutting down"); break }
            _ = int.recv() => { info!("SIGINT, shutting down"); break }
        }
    }
    shutdown.cancel();
    // DNS queries take microseconds (a TCP connection finishes the query it is answering); the
    // router drains its requests for a bounded time. A second signal stops at once.
    let drain = async {
        let _ = tokio::time::timeout(Duration::from_secs(5), dns).await;
        let _ = http.await;
    };
    tokio::select! {
        () = drain => {}
        _ = term.recv() => {
            warn!("SIGTERM again, stopping without waiting for requests in flight");
            log.flush();
            return ExitCode::SUCCESS;
        }
        _ = int.recv() => {
            warn!("SIGINT again, stopping without waiting for requests in flight");
            log.flush();
            return ExitCode::SUCCESS;
        }
    }
    reloads.abort();
    info!("stopped");
    ExitCode::SUCCESS
}

/// `spaceroute probe`: one SOA question to `dns`, answered or not.
fn probe(dns: SocketAddr, name: &str, timeout: Duration) -> ExitCode {
    let asked = (|| -> Result<u16, String> {
        let name = hickory_proto::rr::Name::from_ascii(name).map_err(|e| e.to_string())?;
        let mut query = hickory_proto::op::Message::query();
        query.metadata.id = rand::random();
        query.add_query(hickory_proto::op::Query::query(
            name,
            hickory_proto::rr::RecordType::SOA,
        ));
        let bytes = query.to_vec().map_err(|e| e.to_string())?;
        let local: SocketAddr = match dns {
            SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = std::net::UdpSocket::bind(local).map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        socket.send_to(&bytes, dns).map_err(|e| e.to_string())?;
        let mut reply = [0u8; 4096];
        loop {
            let (n, from) = socket.recv_from(&mut reply).map_err(|e| e.to_string())?;
            // The reply to our question: from the server, with our ID and QR set.
            if from == dns && n >= 12 && reply[..2] == bytes[..2] && reply[2] & 0x80 != 0 {
                return Ok(u16::from(reply[3] & 0x0f));
            }
        }
    })();
    match asked {
        Ok(rcode) => {
            info!(rcode, "{dns} answered");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("{dns} did not answer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A stop signal before the first load finished: nothing serves yet, so nothing drains.
fn stopped_while_loading(signal: &str) -> ExitCode {
    info!("{signal} while loading, stopped");
    ExitCode::SUCCESS
}

/// The router's request log: batched to stderr off the workers while its level is on (see
/// `router::logger`), else through `tracing`, which then filters it out.
fn request_log(format: LogFormat) -> RequestLog {
    if !tracing::enabled!(target: "spaceroute::router", tracing::Level::INFO) {
        return RequestLog::Tracing;
    }
    match Batched::start(format == LogFormat::Json) {
        Ok(batched) => RequestLog::Batched(batched),
        Err(e) => {
            warn!("router: cannot start the request log writer ({e}); logging through tracing");
            RequestLog::Tracing
        }
    }
}
