//! The `spaceroute` binary: `serve` and `check`.
//!
//! Thin by design: parse the command line, load the config, bind sockets, start the servers,
//! wait for a signal. Everything it calls lives in the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use spaceroute::config::{self, Config};
use spaceroute::dns::server::{self, Limits};
use spaceroute::reload::{self, FileWatch, Reloader, Trigger};

/// A split-horizon authoritative DNS server for the apps of private spaces.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve DNS for the spaces in the zones directory.
    Serve {
        /// Directory of space files (*.yaml) and their zone files.
        #[arg(long, default_value = "zones")]
        zones: PathBuf,
        /// Address for DNS over UDP and TCP; repeat to listen on several.
        #[arg(long, default_value = "127.0.0.1:5353")]
        dns: Vec<SocketAddr>,
        /// Seconds a TCP connection may idle between queries.
        #[arg(long, default_value_t = 10)]
        tcp_idle: u64,
        /// Most TCP connections open at once.
        #[arg(long, default_value_t = 512)]
        tcp_max_connections: usize,
    },
    /// Validate the zones directory; print every error as file:line:column and exit 1.
    Check {
        /// Directory of space files (*.yaml) and their zone files.
        #[arg(long, default_value = "zones")]
        zones: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SPACEROUTE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Check { zones } => check(&zones),
        Command::Serve {
            zones,
            dns,
            tcp_idle,
            tcp_max_connections,
        } => {
            let limits = Limits {
                tcp_idle: Duration::from_secs(tcp_idle),
                tcp_max_connections,
                ..Limits::default()
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!("cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve(&zones, &dns, limits))
        }
    }
}

fn check(zones: &Path) -> ExitCode {
    match config::load_dir(zones) {
        Ok(config) => {
            println!("{}: ok: {}", zones.display(), summary(&config));
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

/// "2 spaces, 5 apps, 9 names": what a config holds, for `check` and the startup log.
fn summary(config: &Config) -> String {
    let spaces = config.spaces.len();
    let apps: usize = config.spaces.iter().map(|s| s.apps.len()).sum();
    let names: usize = (config.spaces.iter())
        .map(|s| {
            let app_names: usize = s.apps.iter().map(|a| 1 + a.domains.len()).sum();
            let zone_names: usize = (s.zones.iter())
                .map(|z| {
                    z.records
                        .keys()
                        .map(|k| &k.name)
                        .collect::<std::collections::HashSet<_>>()
                        .len()
                })
                .sum();
            app_names + zone_names
        })
        .sum();
    format!("{spaces} spaces, {apps} apps, {names} names")
}

async fn serve(zones: &Path, dns: &[SocketAddr], limits: Limits) -> ExitCode {
    let reloader = match Reloader::load(zones) {
        Ok(reloader) => Arc::new(reloader),
        Err(diagnostics) => {
            for d in &diagnostics {
                error!("{d}");
            }
            error!(
                "{}: {} error(s), not starting",
                zones.display(),
                diagnostics.len()
            );
            return ExitCode::FAILURE;
        }
    };
    info!(zones = %zones.display(), "loaded {}", reloader.with_config(summary));
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
    for addr in dns {
        match server::bind(*addr).await {
            Ok((u, t)) => {
                let (Ok(ua), Ok(ta)) = (u.local_addr(), t.local_addr()) else {
                    return ExitCode::FAILURE;
                };
                info!("listening dns udp={ua} tcp={ta}");
                udp.push(u);
                tcp.push(t);
            }
            Err(e) => {
                error!("cannot listen for dns on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }

    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = signals else {
        error!("cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let shutdown = CancellationToken::new();
    let reloads = tokio::spawn(reload::run(
        reloader.clone(),
        watch,
        receiver,
        Duration::from_millis(200),
        shutdown.clone(),
    ));
    let dns_server = tokio::spawn(server::run(
        udp,
        tcp,
        reloader.snapshot(),
        limits,
        shutdown.clone(),
    ));
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP, reloading");
                let _ = triggers.send(Trigger::Signal);
            }
            _ = term.recv() => { info!("SIGTERM, shutting down"); break }
            _ = int.recv() => { info!("SIGINT, shutting down"); break }
        }
    }
    shutdown.cancel();
    // In-flight queries take microseconds; a stuck TCP client must not hold the exit.
    let _ = tokio::time::timeout(Duration::from_secs(5), dns_server).await;
    reloads.abort();
    ExitCode::SUCCESS
}
