//! Child processes of a benchmark: pinned to a CPU with taskset, stopped on
//! drop, and their CPU time read from /proc.

use anyhow::{anyhow, bail, Context};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// `taskset -c CPU program`: taskset execs the program, so the child's pid is
/// the program's.
pub fn pinned_command(cpu: usize, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(cpu.to_string()).arg(program);
    c
}

/// A running contender or backend. Stopped (SIGTERM, then SIGKILL) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> anyhow::Result<Proc> {
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fail if the process already exited (bad config, port in use...).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let mut err = String::new();
            if let Some(e) = self.child.stderr.as_mut() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("{} exited with {status}: {}", self.name, err.trim());
        }
        Ok(())
    }

    /// Read the first stdout line (the backend prints its address there).
    pub fn first_stdout_line(&mut self) -> anyhow::Result<String> {
        let out = self
            .child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{}: stdout not captured", self.name))?;
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        // Keep draining in the background so the child never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        Ok(line.trim().to_string())
    }

    /// CPU seconds used so far by the process and all its descendants.
    pub fn cpu_seconds(&self) -> f64 {
        process_tree_cpu_seconds(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SIGTERM lets nginx's master stop its workers.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.pid().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant; no memory is shared.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (ppid, utime + stime in ticks) from the text of /proc/PID/stat.
pub fn parse_proc_stat(text: &str) -> Option<(u32, u64)> {
    // The command name may contain spaces and parentheses; fields resume after
    // the last ')'. Field 4 is ppid, 14 utime, 15 stime (1-based).
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

fn process_tree_cpu_seconds(root: u32) -> f64 {
    let mut procs = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, ticks)) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .as_deref()
                .and_then(parse_proc_stat)
            {
                procs.push((pid, ppid, ticks));
            }
        }
    }
    let mut in_tree = vec![root];
    let mut total = 0u64;
    let mut i = 0;
    while i < in_tree.len() {
        let p = in_tree[i];
        for (pid, ppid, ticks) in &procs {
            if *pid == p {
                total += ticks;
            }
            if *ppid == p && !in_tree.contains(pid) {
                in_tree.push(*pid);
            }
        }
        i += 1;
    }
    total as f64 / clock_ticks_per_second()
}

/// CPU seconds (user + system) of this process's children that have been
/// waited for: around a `Command::output()` of a pinned tool, the delta is
/// that tool's own CPU time (taskset execs it, so it is the child).
pub fn waited_children_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage only writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN with a pointer to our own struct.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// GET `path` on `addr`; the status code, if an HTTP response came back.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// GET `path` on `addr` (Connection: close); the whole response, if any.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

/// Wait until `addr` answers `path` with 200, or fail after `timeout`.
pub fn wait_ready(
    p: &mut Proc,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        p.check_alive()?;
        last = http_status(addr, path);
        if last == Some(200) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{} did not answer 200 on http://{addr}{path} within {timeout:?} (last: {last:?})",
        p.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_odd_names() {
        let line = "1234 (nginx: worker (x) 1) S 1200 1234 1234 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 1 0 5 1000 10";
        assert_eq!(parse_proc_stat(line), Some((1200, 320)));
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn a_waited_child_cpu_time_is_counted() {
        let before = waited_children_cpu_seconds();
        // A child that burns ~0.3 s of CPU, then is waited for.
        let status = Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        let after = waited_children_cpu_seconds();
        assert!(after > before, "{before} -> {after}");
    }

    #[test]
    fn own_cpu_time_is_visible() {
        // Burn a little CPU and see it in /proc/self (our own pid).
        let before = process_tree_cpu_seconds(std::process::id());
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(200) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = process_tree_cpu_seconds(std::process::id());
        assert!(after - before >= 0.05, "{before} -> {after}");
    }
}
