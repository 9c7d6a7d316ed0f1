//! NOTIFY (RFC 1996): after each reload, every secondary hears of each zone it follows whose
//! serial changed (every zone, after the first load), signed with its key, retried with
//! back-off until it answers.
//!
//! Decoupled from the reloader: a task looks at the snapshot a few times a second and works out
//! what changed from the zones' serials, so a secondary added by an edit hears of all its
//! zones and one removed hears of nothing more. Holding the snapshot before and after, it is
//! also what writes the IXFR [`Journal`](xfr::Journal), before it sends the NOTIFYs that make
//! secondaries ask.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::server::unix_now;
use super::{tsig, xfr};
use crate::snapshot::{Snapshot, TsigKey};

/// How often the snapshot is looked at.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// How long the first try waits for an answer; each retry waits twice as long.
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// How many times a NOTIFY is sent before giving up (1 + 2 + 4 + 8 + 16 s).
const TRIES: u32 = 5;
/// How many NOTIFYs are in flight at once: a first load with a hundred thousand member zones
/// (custom-domain apexes) must not open a hundred thousand sockets.
const IN_FLIGHT: usize = 64;

/// One NOTIFY to send.
#[derive(Debug, Clone)]
struct Notice {
    /// The source that plays the secondary's audience.
    source: std::net::IpAddr,
    secondary: String,
    to: Vec<SocketAddr>,
    key: TsigKey,
    zone: Name,
    serial: u32,
}

/// Sends NOTIFYs for the zones whose serial changed in each new snapshot, until `shutdown`.
pub async fn run(
    snapshot: Arc<ArcSwap<Snapshot>>,
    journal: Arc<xfr::Journal>,
    shutdown: CancellationToken,
) {
    let tasks = TaskTracker::new();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut last: Option<Arc<Snapshot>> = None;
    // (space, secondary, zone) → the serial it was last told of.
    let mut told: HashMap<(String, String, Name), u32> = HashMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(LOOK_EVERY) => {}
            () = shutdown.cancelled() => break,
        }
        let current = snapshot.load_full();
        if last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &current)) {
            continue;
        }
        let old = last.replace(current.clone());
        let journal = journal.clone();
        let planned = tokio::task::spawn_blocking(move || {
            let followed = plan(&current);
            if let Some(old) = old {
                keep_changes(&old, &current, &followed, &journal);
            }
            followed
        });
        let Ok(followed) = planned.await else {
            continue;
        };
        let mut now_told = HashMap::new();
        for (space, notice) in followed {
            let id = (space, notice.secondary.clone(), notice.zone.clone());
            if told.get(&id) != Some(&notice.serial) {
                let (notice, shutdown, in_flight) =
                    (notice.clone(), shutdown.clone(), in_flight.clone());
                tasks.spawn(async move {
                    let Ok(_permit) = in_flight.acquire_owned().await else {
                        return;
                    };
                    send(notice, shutdown).await;
                });
            }
            now_told.insert(id, notice.serial);
        }
        told = now_told;
    }
    tasks.close();
    tasks.wait().await;
}

/// Writes to the journal how each followed zone changed from `old` to `new`, once per audience.
fn keep_changes(
    old: &Snapshot,
    new: &Snapshot,
    followed: &[(String, Notice)],
    journal: &xfr::Journal,
) {
    let mut done = std::collections::HashSet::new();
    for (_, notice) in followed {
        if done.insert((notice.source, notice.zone.clone())) {
            journal.record(old, new, notice.source, &notice.zone);
        }
    }
}

/// Every zone that every secondary follows, with its serial.
fn plan(snapshot: &Snapshot) -> Vec<(String, Notice)> {
    let mut out = Vec::new();
    for (who, secondary, source) in xfr::secondaries(snapshot) {
        let space = &snapshot.spaces[who.space].name;
        for (zone, serial) in xfr::followed(snapshot, &who, secondary) {
            let notice = Notice {
                source,
                secondary: secondary.name.clone(),
                to: secondary.notify.clone(),
                key: secondary.key.clone(),
                zone,
                serial,
            };
            out.push((space.clone(), notice));
        }
    }
    out
}

/// Sends one NOTIFY to each of the secondary's addresses, retrying each until it answers.
async fn send(notice: Notice, shutdown: CancellationToken) {
    for &to in &notice.to {
        let mut wait = FIRST_WAIT;
        let mut acknowledged = false;
        for _ in 0..TRIES {
            let outcome = tokio::select! {
                r = exchange(&notice, to, wait) => r,
                () = shutdown.cancelled() => return,
            };
            match outcome {
                Ok(()) => {
                    acknowledged = true;
                    break;
                }
                Err(why) => {
                    debug!(secondary = %notice.secondary, %to, zone = %notice.zone, "NOTIFY: {why}")
                }
            }
            wait *= 2;
        }
        if acknowledged {
            info!(secondary = %notice.secondary, %to, zone = %notice.zone, serial = notice.serial, "NOTIFY acknowledged");
        } else {
            warn!(secondary = %notice.secondary, %to, zone = %notice.zone, serial = notice.serial, "NOTIFY not acknowledged after {TRIES} tries");
        }
    }
}

/// One try: the signed NOTIFY out, and a signed NOERROR answer to it back within `wait`.
async fn exchange(notice: &Notice, to: SocketAddr, wait: Duration) -> Result<(), String> {
    let id: u16 = rand_id();
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.op_code = OpCode::Notify;
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = false;
    let mut q = Query::query(notice.zone.clone(), RecordType::SOA);
    q.set_query_class(DNSClass::IN);
    m.add_query(q);
    let mut bytes = m.to_vec().map_err(|e| e.to_string())?;
    let mac = tsig::sign_request(&mut bytes, &notice.key, unix_now());
    let bind: SocketAddr = match to {
        SocketAddr::V4(_) => ([0, 0, 0, 0], 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
    socket
        .send_to(&bytes, to)
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (n, from) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
            .await
            .map_err(|_| "no answer".to_string())?
            .map_err(|e| e.to_string())?;
        if from != to {
            continue;
        }
        let reply = &buf[..n];
        let Ok(parsed) = Message::from_vec(reply) else {
            continue;
        };
        if parsed.metadata.id != id
            || parsed.metadata.message_type != MessageType::Response
            || parsed.metadata.op_code != OpCode::Notify
        {
            continue;
        }
        if parsed.metadata.response_code != ResponseCode::NoError {
            return Err(format!("answered {}", parsed.metadata.response_code));
        }
        let signed = match tsig::find(reply) {
            Some(Ok(signed)) => signed,
            _ => return Err("the answer is not signed".into()),
        };
        return tsig::verify_response(reply, &signed, &notice.key, &mac, unix_now())
            .map_err(|e| format!("the answer's signature: {e:?}"));
    }
}

/// A message ID nobody can guess from the last one.
fn rand_id() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now()) as u16
}
