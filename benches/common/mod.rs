//! What the peer benches share: starting and stopping the programs they compare against (by
//! PID only, descendants included), finding them, free loopback ports, reading `/proc`, and a
//! reproducible random source for the data they generate.

#![allow(dead_code)] // each bench uses a part

use std::net::{IpAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// A started process, stopped on drop by PID: SIGTERM, then SIGKILL after 10 s, and SIGKILL to
/// any of its descendants (NSD's server and xfrd) still running. Its stdout and stderr go to
/// `log`.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `ready` holds, panicking with the log if the process exits or 20 s pass.
    pub fn wait_until(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.log_text());
            }
            if ready() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not {what} within 20 s:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit on its own; its exit status, or `None` after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 20 lines of the log.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let descendants: Vec<(u32, u64)> = (tree(self.pid()).into_iter().skip(1))
            .filter_map(|pid| Some((pid, start_time(pid)?)))
            .collect();
        signal(self.pid(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !exited {
            println!("{} did not stop on SIGTERM: killed", self.name);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Its children, if they outlived it, are ours now (subreaper): stop and reap those
        // whose PID still names the same process (same start time).
        for (pid, started) in descendants {
            if start_time(pid) == Some(started) {
                signal(pid, Signal::SIGKILL);
                let pid = Pid::from_raw(pid as i32);
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline {
                    match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(5)),
                        _ => break,
                    }
                }
            }
        }
    }
}

pub fn signal(pid: u32, signal: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal);
}

/// `name` on the PATH or in /usr/sbin, /sbin (where knotd, nsd, named and nginx live).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A port free for both TCP and UDP on `ip`, found by binding port 0 and letting go.
pub fn free_port(ip: IpAddr) -> u16 {
    assert!(ip.is_loopback(), "servers listen on loopback only");
    for _ in 0..32 {
        let tcp = TcpListener::bind((ip, 0)).expect("bind tcp on loopback");
        let port = tcp.local_addr().expect("local addr").port();
        if UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both tcp and udp on {ip}");
}

/// `pid` and its descendants, from `/proc/PID/task/*/children`.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", all[i])) {
            for task in tasks.flatten() {
                let list =
                    std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
                all.extend(
                    list.split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    all
}

/// The fields of `/proc/PID/stat` after the command name (state first).
pub fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    // State is a letter; the rest are numbers.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// When `pid` started, in clock ticks since boot: with the PID, names one process.
pub fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19).copied()
}

/// The median; the mean of the middle two for an even count, 0 for none.
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// 123456.0 → "123.5k".
pub fn si(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.1}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

/// xorshift64: cheap, reproducible.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
